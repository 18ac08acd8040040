"""raw_reports: the landing folder and (when configured) the report bus ingested, every line and message
accounted for (the ingestion stage)."""

import time

import dagster as dg

from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
    ReportBusResource,
)
from experimenttracker_pipeline.defs.partitions import stop_run
from experimenttracker_pipeline.orchestration import stopping
from experimenttracker_pipeline.orchestration.due_work import files_behind, folder_signature
from experimenttracker_pipeline.stages.ingestion.bus import ReportBusUnavailable, ingest_bus
from experimenttracker_pipeline.stages.ingestion.landing import IngestionResult, ingest_landing
from experimenttracker_pipeline.stages.ingestion.queries import landing_state


class RawReportsConfig(dg.Config):
    """``bus_drain``: take every message outstanding when the run starts (CLI `run`); otherwise at most
    EXPERIMENTTRACKER_BUS_MAX_PER_RUN messages (sensor-launched runs)."""

    bus_drain: bool = False


@dg.asset(group_name="ingestion", kinds={"python", "sql"}, owners=["team:data-eng"])
def raw_reports(context: dg.AssetExecutionContext, config: RawReportsConfig, store: ExperimentStoreResource,
                settings: PipelineSettingsResource, report_bus: ReportBusResource) -> dg.MaterializeResult:
    """Fill reports from the report bus archive (`*.jsonl` in the landing folder), each new line read once, and
    from the report bus itself (NATS JetStream) when EXPERIMENTTRACKER_BUS_URL is set.
    Invalid lines go to `quarantined_reports` with a reason code; lines read = accepted + duplicates + quarantined."""
    started = time.perf_counter()
    db = store.get_store()
    bus_config = report_bus.config()
    if bus_config is not None and not settings.landing_path.exists():
        result = IngestionResult()  # with a live bus the landing folder is only the backfill path: it may not exist
    else:
        with stopping.deferred_signals():
            result = ingest_landing(db, settings.landing_path, run_id=context.run.run_id, should_stop=stopping.requested)
    if result.stopped:
        behind = sorted(files_behind(folder_signature(settings.landing_path, (".jsonl",), recursive=True), landing_state(db)))
        stop_run(context, f"{result.lines_read} lines stored; {len(behind)} landing file(s) not read to the end: "
                          + ", ".join(behind[:20]))
    if not result.balanced:
        raise dg.Failure(f"ingestion accounting does not balance: {result}")
    reasons = dict(sorted(result.quarantine_reasons.items()))
    metadata = {
        "dagster/row_count": result.accepted,
        "files_seen": result.files_seen,
        "files_read": result.files_read,
        "lines_read": result.lines_read,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "quarantined": result.quarantined,
        "quarantine_reasons": dg.MetadataValue.json(reasons),
        "refused_sources": dg.MetadataValue.json(result.refused_sources),  # links, never followed
        "accounting": dg.MetadataValue.md(
            f"lines read **{result.lines_read}** = accepted **{result.accepted}** + duplicates **{result.duplicates}**"
            f" + quarantined **{result.quarantined}**"),
    }
    if bus_config is not None:
        try:
            bus = ingest_bus(db, bus_config, run_id=context.run.run_id,
                             max_messages=None if config.bus_drain else bus_config.max_per_run)
        except ReportBusUnavailable as exc:
            # Not a failure of this run: what the landing folder had is stored, and the stall sensor (or `run`)
            # marks the experiments stalled until the bus answers again.
            context.log.warning(f"report bus unavailable: {exc}")
            metadata["bus_error"] = str(exc)
        else:
            if not bus.balanced:
                raise dg.Failure(f"report bus accounting does not balance: {bus}")
            metadata.update({
                "bus_messages": bus.messages, "bus_accepted": bus.accepted, "bus_duplicates": bus.duplicates,
                "bus_redelivered": bus.redelivered, "bus_quarantined": bus.quarantined, "bus_ignored": bus.ignored,
                "bus_quarantine_reasons": dg.MetadataValue.json(dict(sorted(bus.quarantine_reasons.items()))),
                "bus_accounting": dg.MetadataValue.md(
                    f"messages **{bus.messages}** = accepted **{bus.accepted}** + duplicates **{bus.duplicates}** + "
                    f"quarantined **{bus.quarantined}** + ignored (not fills) **{bus.ignored}**"),
            })
            metadata["dagster/row_count"] = result.accepted + bus.accepted
    db.record_stage_duration("ingestion", time.perf_counter() - started)
    return dg.MaterializeResult(metadata=metadata)
