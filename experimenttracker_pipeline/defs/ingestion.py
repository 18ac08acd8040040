"""raw_reports: the landing folder ingested, every line accounted for (the ingestion stage)."""

import dagster as dg

from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
)
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing



@dg.asset(group_name="ingestion", kinds={"python", "sql"}, owners=["team:data-eng"])
def raw_reports(context: dg.AssetExecutionContext, store: ExperimentStoreResource,
                settings: PipelineSettingsResource) -> dg.MaterializeResult:
    """Fill reports from the report bus archive (`*.jsonl` in the landing folder), each new line read once.
    Invalid lines go to `quarantined_reports` with a reason code; lines read = accepted + duplicates + quarantined."""
    result = ingest_landing(store.get_store(), settings.landing_path, run_id=context.run.run_id)
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

