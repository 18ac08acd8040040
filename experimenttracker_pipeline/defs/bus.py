"""Report bus wiring: the sensor that launches bus ingestion runs, and the outbox relay's job and sensor.

Ticks only ask cheap questions (the consumer's pending counts, the number of unpublished outbox rows); messages
are handled by the runs they launch, never inside a tick."""

import time

import dagster as dg

from experimenttracker_pipeline.defs.jobs import reports_job
from experimenttracker_pipeline.defs.resources import ExperimentStoreResource, ReportBusResource
from experimenttracker_pipeline.defs.sensors import DEFAULT_STATUS, INTERVAL, RETRY_AFTER_MS
from experimenttracker_pipeline.stages.ingestion.bus import ReportBusUnavailable, consumer_backlog, report_bus_error
from experimenttracker_pipeline.stages.publishing.relay import publish_outbox
from experimenttracker_pipeline.store import StoreUnavailable
from experimenttracker_pipeline.stages.publishing.queries import unpublished_count

SOURCE_TAG = "experimenttracker/source"
_IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _in_flight(instance: dg.DagsterInstance, job_name: str, tags: dict[str, str]) -> bool:
    return bool(instance.get_run_ids(filters=dg.RunsFilter(job_name=job_name, statuses=_IN_FLIGHT, tags=tags), limit=1))


def _bucket(seconds: float) -> int:
    """A time bucket in run keys: the same state is re-requested at most once per bucket (after a failed run)."""
    return int(time.time() // max(seconds, 1.0))


@dg.sensor(job=reports_job, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="While the report bus consumer has messages waiting, launches an ingestion run that pulls up to "
                       "EXPERIMENTTRACKER_BUS_MAX_PER_RUN of them (one run at a time).")
def report_bus_sensor(context: dg.SensorEvaluationContext, report_bus: ReportBusResource):
    config = report_bus.config()
    if config is None:
        return dg.SkipReason("no report bus configured (EXPERIMENTTRACKER_BUS_URL is unset)")
    try:
        backlog = consumer_backlog(config)
    except ReportBusUnavailable as exc:
        return dg.SkipReason(f"{exc} (the stall sensor reports it; ingestion resumes when the bus answers)")
    if backlog.outstanding == 0:
        return dg.SkipReason(f"consumer {config.consumer} is caught up (stream sequence {backlog.stream_last_seq})")
    if _in_flight(context.instance, reports_job.name, {SOURCE_TAG: "bus"}):
        return dg.SkipReason(f"{backlog.outstanding} messages waiting; an ingestion run is in flight")
    key = (f"bus:{config.stream}:{config.consumer}:{backlog.delivered_seq}:{backlog.ack_floor_seq}:{backlog.pending}:"
           f"{_bucket(RETRY_AFTER_MS / 1000)}")
    return dg.RunRequest(run_key=key, tags={SOURCE_TAG: "bus", "experimenttracker/bus_outstanding": str(backlog.outstanding)})


@dg.op(description="Publish unpublished outbox rows (operations_reports) to the report bus, oldest first.")
def publish_reports(context: dg.OpExecutionContext, store: ExperimentStoreResource, report_bus: ReportBusResource) -> None:
    config = report_bus.config()
    if config is None:
        context.log.info("no report bus configured: reports stay in the operations_reports outbox")
        return
    try:
        result = publish_outbox(store.get_store(), config)
    except ReportBusUnavailable as exc:
        # Like ingestion: an outage is reported by the stall sensor, not by failing runs; the rows stay in the
        # outbox and report_relay_sensor requests the relay again once the bus answers.
        context.log.warning(f"report bus unavailable, reports stay in the outbox: {exc}")
        return
    context.log.info(f"reports published: {result.published}, already on the bus: {result.already_on_bus}")


@dg.job(description="Publish emitted OperationsReports and developer reports to the report bus (outbox relay).")
def report_relay_job():
    publish_reports()


@dg.sensor(job=report_relay_job, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="Launches the outbox relay while reports wait to be published and the bus answers.")
def report_relay_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource,
                        report_bus: ReportBusResource):
    config = report_bus.config()
    if config is None:
        return dg.SkipReason("no report bus configured: reports stay in the operations_reports outbox")
    try:
        waiting = unpublished_count(store.get_store())
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}")
    if waiting == 0:
        return dg.SkipReason("every report is published")
    if _in_flight(context.instance, report_relay_job.name, {}):
        return dg.SkipReason(f"{waiting} reports waiting; a relay run is in flight")
    error = report_bus_error(config)
    if error is not None:
        return dg.SkipReason(f"{waiting} reports waiting; {error}")
    return dg.RunRequest(run_key=f"relay:{waiting}:{_bucket(60)}", tags={"experimenttracker/unpublished": str(waiting)})
