"""Sensors that run the pipeline by itself. Each tick reads file stats, counts and watermarks (never sample
rows) and decides through `experimenttracker_pipeline.orchestration.due_work`; run keys encode intent, so a tick that fails
part-way neither loses nor duplicates a request, and the cursors live in Dagster's storage across restarts.

Sensors start RUNNING; set EXPERIMENTTRACKER_SENSORS=stopped to deploy them stopped."""

import json
import time

import dagster as dg

from experimenttracker_pipeline.defs.jobs import (
    EXPERIMENT_TAG,
    declarations_job,
    evaluation_job,
    reports_job,
    samples_job,
)
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
    ReportBusResource,
    StrategyRegistryResource,
)
from experimenttracker_pipeline.stages.ingestion.bus import report_bus_error
from experimenttracker_pipeline.orchestration import due_work as sensing
from experimenttracker_pipeline.stages.drift.signal import deliver_pending
from experimenttracker_pipeline.stages.stalls.episodes import apply_stall_changes
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.store import StoreUnavailable
from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.ingestion.queries import batch_slugs_since, landing_state
from experimenttracker_pipeline.stages.samples.queries import sensor_snapshot
from experimenttracker_pipeline.stages.stalls.queries import open_stalls

# Sensor intervals and default status are decorator arguments, so they are fixed when the definitions load.
_SETTINGS = Settings.from_env()
DEFAULT_STATUS = dg.DefaultSensorStatus.RUNNING if _SETTINGS.sensors_running else dg.DefaultSensorStatus.STOPPED
RETRY_AFTER_MS = int(_SETTINGS.sensor_retry_seconds * 1000)
EVALUATION_STEP_PCT = _SETTINGS.evaluation_step_pct / 100
EVALUATION_STEP_N = _SETTINGS.evaluation_step_n
INTERVAL = _SETTINGS.sensor_interval_seconds
_IN_FLIGHT = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _state_of(status: dg.DagsterRunStatus) -> str:
    if status in _IN_FLIGHT:
        return sensing.RUN_IN_FLIGHT
    return sensing.RUN_SUCCEEDED if status == dg.DagsterRunStatus.SUCCESS else sensing.RUN_FAILED


class _RunStates:
    """The state of the newest run of every run key the cursor remembers, read with one query per 500 keys at
    the start of a tick (instead of one query per key, twice per tick)."""

    def __init__(self, instance: dg.DagsterInstance, cursor: dict):
        keys = sorted({entry[2] for entry in cursor.get("requested", {}).values()})
        self.states: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": keys[i:i + 500]})):
                self.states.setdefault(run.tags["dagster/run_key"], _state_of(run.status))  # newest first

    def __call__(self, run_key: str | None) -> str:
        return sensing.RUN_UNKNOWN if run_key is None else self.states.get(run_key, sensing.RUN_UNKNOWN)


def _request(states: _RunStates, cursor: dict, base_key: str, **run_request) -> dg.RunRequest | None:
    key = sensing.keyed_request(cursor, base_key, _now_ms(), retry_after_ms=RETRY_AFTER_MS,
                                last_run_state=states(sensing.last_key(cursor, base_key)))
    return dg.RunRequest(run_key=key, **run_request) if key else None


def _done(states: _RunStates, cursor: dict, prefix: str, keep: set[str]) -> set[str]:
    """Keys under ``prefix`` still worth remembering: the current ones, and older ones not yet succeeded."""
    live = {k for k in cursor.get("requested", {}) if not k.startswith(prefix)} | keep
    for key in cursor.get("requested", {}):
        if key.startswith(prefix) and key not in keep and states(sensing.last_key(cursor, key)) != sensing.RUN_SUCCEEDED:
            live.add(key)
    return live


@dg.sensor(job=declarations_job, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="A new or changed declaration file registers the experiment (partition, EXPERIMENT_STARTED once).")
def new_experiments_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettingsResource):
    cursor = json.loads(context.cursor or "{}")
    states = _RunStates(context.instance, cursor)
    try:
        signature = sensing.folder_signature(settings.experiments_path, (".yaml", ".yml"))
    except OSError as exc:
        return dg.SkipReason(f"experiments folder unreadable: {exc}")
    if not signature:
        return dg.SkipReason("no declaration files")
    base = "declarations:" + sensing.digest(signature.items())
    request = _request(states, cursor, base)
    sensing.prune_requested(cursor, _done(states, cursor, "declarations:", {base}))
    return dg.SensorResult(run_requests=[request] if request else [], cursor=json.dumps(cursor))


@dg.sensor(job=reports_job, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="New or grown landing files request one ingestion run (keyed by the files' sizes).")
def new_reports_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource, settings: PipelineSettingsResource):
    cursor = json.loads(context.cursor or "{}")
    states = _RunStates(context.instance, cursor)
    try:
        signature = sensing.folder_signature(settings.landing_path, (".jsonl",), recursive=True)
        behind = sensing.files_behind(signature, landing_state(store.get_store()))
    except OSError as exc:
        return dg.SkipReason(f"report bus unavailable: {exc} (the stall sensor reports it)")
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}; nothing is lost, ingestion resumes on reconnect")
    if not behind:
        sensing.prune_requested(cursor, _done(states, cursor, "reports:", set()))
        return dg.SensorResult(run_requests=[], cursor=json.dumps(cursor))
    base = "reports:" + sensing.digest(behind.items())
    request = _request(states, cursor, base, tags={"experimenttracker/files": str(len(behind))})
    sensing.prune_requested(cursor, _done(states, cursor, "reports:", {base}))
    return dg.SensorResult(run_requests=[request] if request else [], cursor=json.dumps(cursor))


@dg.sensor(job=samples_job, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="Experiments whose arms received new fills get a pairing run for their partition.")
def pairing_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource):
    cursor = json.loads(context.cursor or "{}")
    states = _RunStates(context.instance, cursor)
    known = set(context.instance.get_dynamic_partitions("experiments"))
    try:
        db = store.get_store()
        newest, by_slug = batch_slugs_since(db, int(cursor.get("batch", 0)))
        eligible = [r for r in sensor_snapshot(db) if r["experiment_id"] in known]
        # An experiment that became known since the last tick may have fills in batches the cursor has already
        # passed (an archive ingested before its declaration, or reports_job committing before declarations_job):
        # count all its fills, not only the new batches'.
        seen = set(cursor.get("experiments", [r["experiment_id"] for r in eligible] if "batch" in cursor else []))
        fresh = [r for r in eligible if r["experiment_id"] not in seen]
        ever = batch_slugs_since(db, 0)[1] if fresh else {}
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}")
    cursor["experiments"] = sorted(seen | {r["experiment_id"] for r in eligible})
    items = {i.key: i for i in sensing.pairing_requests([r for r in eligible if r["experiment_id"] in seen], by_slug, newest)}
    items.update({i.key: i for i in sensing.pairing_requests(fresh, ever, newest)})
    requests, keep = [], set()
    for item in items.values():
        keep.add(item.key)
        request = _request(states, cursor, item.key, partition_key=item.target, tags={EXPERIMENT_TAG: item.target})
        if request:
            requests.append(request)
    for key in list(cursor.get("requested", {})):  # retry earlier pairing requests whose run failed
        if key not in keep and states(sensing.last_key(cursor, key)) == sensing.RUN_FAILED:
            keep.add(key)
            target = key.split(":")[1]
            request = _request(states, cursor, key, partition_key=target, tags={EXPERIMENT_TAG: target})
            if request:
                requests.append(request)
    cursor["batch"] = newest
    sensing.prune_requested(cursor, _done(states, cursor, "samples:", keep))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))


@dg.sensor(job=evaluation_job, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="Evaluate an experiment when its samples first cross min_samples_for_decision, then at each "
                       "further step (EXPERIMENTTRACKER_EVALUATION_STEP_PCT, default +10%); never twice for one count.")
def sample_threshold_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource):
    cursor = json.loads(context.cursor or "{}")
    states = _RunStates(context.instance, cursor)
    try:
        snapshot = sensor_snapshot(store.get_store())
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}")
    known = set(context.instance.get_dynamic_partitions("experiments"))
    requests, keep = [], set()
    for item in sensing.evaluation_requests([r for r in snapshot if r["experiment_id"] in known], cursor,
                                            step_pct=EVALUATION_STEP_PCT, step_n=EVALUATION_STEP_N):
        keep.add(item.key)
        request = _request(states, cursor, item.key, partition_key=item.target,
                           tags={EXPERIMENT_TAG: item.target, "experimenttracker/samples": str(item.detail["samples"])})
        if request:
            requests.append(request)
    for key in list(cursor.get("requested", {})):
        if key not in keep and states(sensing.last_key(cursor, key)) == sensing.RUN_FAILED:
            keep.add(key)
            target = key.split(":")[1]
            request = _request(states, cursor, key, partition_key=target, tags={EXPERIMENT_TAG: target})
            if request:
                requests.append(request)
    sensing.prune_requested(cursor, _done(states, cursor, "evaluate:", keep))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))


@dg.sensor(minimum_interval_seconds=60, default_status=DEFAULT_STATUS,
           description="Marks experiments stalled when the report bus cannot be read or no samples arrived within "
                       "EXPERIMENTTRACKER_STALL_WINDOW_SECONDS (EXPERIMENT_STALLED once per episode); resumes them on recovery.")
def stall_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource, settings: PipelineSettingsResource,
                 report_bus: ReportBusResource):
    bus_error = None
    bus_config = report_bus.config()
    if bus_config is not None:
        bus_error = report_bus_error(bus_config)  # with a live bus, the landing folder is only the backfill path
    else:
        try:
            sensing.folder_signature(settings.landing_path, (".jsonl",), recursive=True)
        except OSError as exc:
            bus_error = f"report bus archive unreadable: {exc}"
    now = _now_ms()
    try:
        db = store.get_store()
        changes = sensing.stall_changes(sensor_snapshot(db), open_stalls(db), now_ms=now,
                                        window_ms=int(settings.stall_window_seconds * 1000), bus_error=bus_error)
        emitted = apply_stall_changes(db, changes, now)
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}; stalls are recorded after reconnect")
    summary = ", ".join(f"{r['event_type']} {r['experiment_id']}" for r in emitted)
    return dg.SkipReason(summary or "no stall changes")


@dg.op(description="Deliver pending drift signals to the StrategyRegistry.")
def deliver_pending_signals(context: dg.OpExecutionContext, store: ExperimentStoreResource,
                            registry: StrategyRegistryResource) -> None:
    delivered, pending = deliver_pending(store.get_store(), registry.get_registry())
    context.log.info(f"drift signals delivered: {delivered}, still pending: {pending}")


@dg.job(description="Retry delivery of pending drift signals (a registry outage delays, never loses, a signal).")
def signal_delivery_job():
    deliver_pending_signals()


@dg.sensor(job=signal_delivery_job, minimum_interval_seconds=120, default_status=DEFAULT_STATUS,
           description="Requests a delivery run while drift signals are pending (after a registry outage or restart).")
def pending_signals_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource):
    try:
        pending = signals(store.get_store(), status="pending")
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}")
    if not pending:
        return dg.SkipReason("no pending drift signals")
    # The attempt counts are part of the key: each failed delivery makes the next tick's request new.
    key = "deliver:" + sensing.digest((s["id"], s["attempts"]) for s in pending)
    return dg.RunRequest(run_key=key)


SENSORS = [new_experiments_sensor, new_reports_sensor, pairing_sensor, sample_threshold_sensor, stall_sensor,
           pending_signals_sensor]
