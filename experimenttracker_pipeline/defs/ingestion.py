"""Ingestion stage: experiment declarations and raw report ingestion (unpartitioned)."""


import dagster as dg

from experimenttracker_pipeline import pipeline
from experimenttracker_pipeline.defs.partitions import experiment_partitions
from experimenttracker_pipeline.defs.resources import ExperimentStoreResource, PipelineSettingsResource


@dg.asset(group_name="ingestion", kinds={"python", "sql"}, owners=["team:data-eng"])
def experiments(context: dg.AssetExecutionContext, store: ExperimentStoreResource,
                settings: PipelineSettingsResource) -> dg.MaterializeResult:
    """Experiment declarations (YAML) recorded in the `experiments` table; each experiment gets its own
    dynamic partition and one EXPERIMENT_STARTED report. Invalid files are rejected with file and field named."""
    db = store.get_store()
    sync = pipeline.sync_declarations(db, settings.experiments_path, default_caliper_seconds=settings.caliper_seconds)
    known = set(context.instance.get_dynamic_partitions(experiment_partitions.name))
    stored = [row["experiment_id"] for row in db.experiment_rows()]
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


@dg.asset(group_name="ingestion", kinds={"python", "sql"}, owners=["team:data-eng"])
def raw_reports(context: dg.AssetExecutionContext, store: ExperimentStoreResource,
                settings: PipelineSettingsResource) -> dg.MaterializeResult:
    """Fill reports from the report bus archive (`*.jsonl` in the landing folder), each new line read once.
    Invalid lines go to `quarantined_reports` with a reason code; lines read = accepted + duplicates + quarantined."""
    result = pipeline.ingest_landing(store.get_store(), settings.landing_path, run_id=context.run.run_id)
    if not result.balanced:
        raise dg.Failure(f"ingestion accounting does not balance: {result}")
    reasons = dict(sorted(result.quarantine_reasons.items()))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": result.accepted,
        "files_seen": result.files_seen,
        "files_read": result.files_read,
        "lines_read": result.lines_read,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "quarantined": result.quarantined,
        "quarantine_reasons": dg.MetadataValue.json(reasons),
        "accounting": dg.MetadataValue.md(
            f"lines read **{result.lines_read}** = accepted **{result.accepted}** + duplicates **{result.duplicates}**"
            f" + quarantined **{result.quarantined}**"),
    })
