"""experiments: declarations registered, one dynamic partition per experiment (the declarations stage)."""

import dagster as dg

from experimenttracker_pipeline.defs.partitions import experiment_partitions
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
)
from experimenttracker_pipeline.stages.declarations.registration import (
    sync_declarations,
)
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows



@dg.asset(group_name="ingestion", kinds={"python", "sql"}, owners=["team:data-eng"])
def experiments(context: dg.AssetExecutionContext, store: ExperimentStoreResource,
                settings: PipelineSettingsResource) -> dg.MaterializeResult:
    """Experiment declarations (YAML) recorded in the `experiments` table; each experiment gets its own
    dynamic partition and one EXPERIMENT_STARTED report. Invalid files are rejected with file and field named."""
    db = store.get_store()
    sync = sync_declarations(db, settings.experiments_path, default_caliper_seconds=settings.caliper_seconds)
    known = set(context.instance.get_dynamic_partitions(experiment_partitions.name))
    # One partition per unit of evaluation: an experiment, or each treatment comparison of an A/B/n experiment.
    stored = [row["experiment_id"] for row in experiment_rows(db, units=True)]
    missing = [e for e in stored if e not in known]
    if missing:
        context.instance.add_dynamic_partitions(experiment_partitions.name, missing)
    for error in sync.rejected:
        context.log.warning(f"declaration rejected: {error}")
    rejected_md = "\n".join(f"- `{e.source}` **{e.field}**: {e.message}" for e in sync.rejected) or "none"
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(stored),
        "new_experiments": dg.MetadataValue.json(sync.new),
        "partitions_added": len(missing),
        "rejected_declarations": len(sync.rejected),
        "rejections": dg.MetadataValue.md(rejected_md),
        "reports_emitted": len(sync.emitted),
    })


