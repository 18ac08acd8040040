"""Sensors that run the pipeline by itself. Each tick reads file stats, counts and the experiment store's watermarks
(never sample rows) and decides through `experimenttracker_pipeline.orchestration.due_work`: what the CLI already
did is not due, so the daemon never repeats it. Run keys encode intent, so a tick that fails part-way neither loses
nor duplicates a request, and the cursors live in Dagster's storage across restarts.

Sensors start RUNNING; set EXPERIMENTTRACKER_SENSORS=stopped to deploy them stopped."""

import json
import time
from pathlib import Path

import dagster as dg

from experimenttracker_pipeline.defs.experiment_pass import JOB_NAME as PASS_JOB
from experimenttracker_pipeline.defs.jobs import declarations_job, reports_job
from experimenttracker_pipeline.defs.partitions import experiment_partitions
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
    ReportBusResource,
    StrategyRegistryResource,
)
from experimenttracker_pipeline.stages.ingestion.bus import report_bus_error
from experimenttracker_pipeline.orchestration import due_work as sensing
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.drift.signal import deliver_pending
from experimenttracker_pipeline.stages.stalls.episodes import apply_stall_changes
from experimenttracker_pipeline.store import StoreUnavailable
from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.ingestion.queries import landing_state, newest_batch_by_slug
from experimenttracker_pipeline.stages.samples.queries import sensor_snapshot
from experimenttracker_pipeline.stages.stalls.queries import open_stalls

# Sensor intervals and default status are decorator arguments, so they are fixed when the definitions load.
_SETTINGS = Settings.from_env()
DEFAULT_STATUS = dg.DefaultSensorStatus.RUNNING if _SETTINGS.sensors_running else dg.DefaultSensorStatus.STOPPED
RETRY_AFTER_MS = int(_SETTINGS.sensor_retry_seconds * 1000)
EVALUATION_RULE = sensing.EvaluationRule("step", _SETTINGS.evaluation_step_pct / 100, _SETTINGS.evaluation_step_n)
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
    """The state of the newest run of each given run key, read with one query per 500 keys at the start of a tick
    (instead of one query per key)."""

    def __init__(self, instance: dg.DagsterInstance, run_keys):
        keys = sorted(set(run_keys))
        self.states: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": keys[i:i + 500]})):
                self.states.setdefault(run.tags["dagster/run_key"], _state_of(run.status))  # newest first

    def __call__(self, run_key: str | None) -> str:
        return sensing.RUN_UNKNOWN if run_key is None else self.states.get(run_key, sensing.RUN_UNKNOWN)


def _keyed_states(instance: dg.DagsterInstance, cursor: dict) -> _RunStates:
    return _RunStates(instance, (entry[2] for entry in cursor.get("requested", {}).values()))


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
           description="Declaration files the store has not registered (or changed since) register their experiments "
                       "(EXPERIMENT_STARTED once); every stored experiment gets its partition, and a partition no "
                       "declared experiment backs (a key typed into the UI) is removed.")
def new_experiments_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource,
                           settings: PipelineSettingsResource):
    cursor = json.loads(context.cursor or "{}")
    states = _keyed_states(context.instance, cursor)
    try:
        files = sensing.folder_stats(settings.experiments_path, (".yaml", ".yml"))
    except OSError as exc:
        return dg.SkipReason(f"experiments folder unreadable: {exc}")
    # Partitions first, then the store: registration stores an experiment before it adds its partition.
    partitions = context.instance.get_dynamic_partitions(experiment_partitions.name)
    try:
        rows = sensor_snapshot(store.get_store())
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}")
    add, delete = sensing.partition_changes(partitions, sensing.partition_keys(rows))
    partition_requests = []
    if add:
        partition_requests.append(experiment_partitions.build_add_request(add))
    if delete:
        context.log.warning(f"removing partitions no declared experiment backs: {', '.join(delete)}")
        partition_requests.append(experiment_partitions.build_delete_request(delete))
    registered = {str(Path(r["source_file"]).resolve()): r["registered_at_ms"] for r in rows if r["source_file"]}
    due = sensing.declarations_due(files, registered)
    requests = []
    if due:
        base = "declarations:" + sensing.digest(due.items())
        request = _request(states, cursor, base, tags={"experimenttracker/files": str(len(due))})
        requests = [request] if request else []
        keep = {base}
    else:
        keep = set()
    sensing.prune_requested(cursor, _done(states, cursor, "declarations:", keep))
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=json.dumps(cursor),
                           skip_reason=None if requests or partition_requests else "every declaration is registered")


@dg.sensor(job=reports_job, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="New or grown landing files request one ingestion run (keyed by the files' sizes).")
def new_reports_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource, settings: PipelineSettingsResource):
    cursor = json.loads(context.cursor or "{}")
    states = _keyed_states(context.instance, cursor)
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


@dg.sensor(job_name=PASS_JOB, minimum_interval_seconds=INTERVAL, default_status=DEFAULT_STATUS,
           description="Every experiment that is due, in one experiment_pass_job run per tick (up to "
                       "EXPERIMENTTRACKER_PASS_RUN_SIZE experiments per run): new fills to pair, or a sample count that "
                       "crossed min_samples_for_decision or grew by EXPERIMENTTRACKER_EVALUATION_STEP_PCT since the "
                       "latest verdict. Due is read from the store, so work the CLI did is not repeated.")
def experiment_pass_sensor(context: dg.SensorEvaluationContext, store: ExperimentStoreResource):
    cursor = json.loads(context.cursor or "{}")
    # Run states before the store: a run that finishes in between still looks in flight, never "done but due".
    states = _RunStates(context.instance, (entry[3] for entry in cursor.get("requested", {}).values()))
    known = set(context.instance.get_dynamic_partitions(experiment_partitions.name))
    try:
        db = store.get_store()
        snapshot = [r for r in sensor_snapshot(db) if r["experiment_id"] in known]
        newest = newest_batch_by_slug(db)
    except StoreUnavailable as exc:
        return dg.SkipReason(f"experiment store unavailable: {exc}")
    due = sensing.due_experiments(snapshot, newest, EVALUATION_RULE)
    planned = sensing.plan_pass_requests(due, cursor, _now_ms(), run_state=states, retry_after_ms=RETRY_AFTER_MS,
                                         run_size=_SETTINGS.pass_run_size)
    requests = [dg.RunRequest(
        run_key=p.run_key,
        run_config={"experiment_ids": p.experiment_ids, "evaluation": EVALUATION_RULE.kind,
                    "step_pct": _SETTINGS.evaluation_step_pct, "step_n": _SETTINGS.evaluation_step_n},
        # This sensor retries what a run left undone (only that), so the run-retry daemon need not.
        tags={"experimenttracker/experiments": str(len(p.experiment_ids)), "experimenttracker/retried": str(len(p.retried)),
              "dagster/max_retries": "0"}) for p in planned]
    skip = None if requests else (f"{len(due)} experiment(s) due, all in flight or waiting to retry" if due
                                  else f"nothing due ({len(snapshot)} experiments up to date)")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor), skip_reason=skip)


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


SENSORS = [new_experiments_sensor, new_reports_sensor, experiment_pass_sensor, stall_sensor, pending_signals_sensor]
