"""Sensors: due work read from the store (nothing the CLI did is requested again), every due experiment batched into
one pass run, retries of only what a failed run left due, partitions added and removed, run keys (no duplicate
requests), stall and recovery with one report per episode, store outages skipped cleanly."""

import shutil
import uuid

import dagster as dg
import pytest

from experimenttracker_pipeline.defs import sensors
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
    ReportBusResource,
)
from experimenttracker_pipeline.orchestration import due_work as sensing
from experimenttracker_pipeline.stages.declarations.registration import (
    sync_declarations,
)
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline.stages.verdict.decision import decide
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl
from experimenttracker_pipeline.stages.declarations.queries import experiment_row


# ---- pure decisions ------------------------------------------------------------------------------------------
def test_keyed_request_retries_only_failed_work_after_the_delay():
    cursor: dict = {}
    assert sensing.keyed_request(cursor, "k", 0, last_run_state="unknown", retry_after_ms=1000) == "k"
    assert sensing.keyed_request(cursor, "k", 10, last_run_state="in_flight", retry_after_ms=1000) is None
    assert sensing.keyed_request(cursor, "k", 5000, last_run_state="succeeded", retry_after_ms=1000) is None
    assert sensing.keyed_request(cursor, "k", 500, last_run_state="failed", retry_after_ms=1000) is None
    assert sensing.keyed_request(cursor, "k", 1500, last_run_state="failed", retry_after_ms=1000) == "k:retry1"
    assert sensing.last_key(cursor, "k") == "k:retry1"


def test_stall_changes():
    now, window = 10_000_000, 3_600_000
    snapshot = [{"experiment_id": "fresh", "status": "active", "last_appended_at_ms": now - 1000, "registered_at_ms": 0},
                {"experiment_id": "silent", "status": "active", "last_appended_at_ms": now - window - 1, "registered_at_ms": 0},
                {"experiment_id": "ended", "status": "ended", "last_appended_at_ms": 0, "registered_at_ms": 0},
                # A sandbox experiment never has samples (it is valued from logs): never "no samples in window".
                {"experiment_id": "sandbox", "status": "active", "last_appended_at_ms": None, "registered_at_ms": 0,
                 "sandbox": True}]
    changes = sensing.stall_changes(snapshot, {}, now_ms=now, window_ms=window, bus_error=None)
    assert [(c.experiment_id, c.action, c.reason) for c in changes] == [("silent", "stall", "NO_SAMPLES_IN_WINDOW")]
    bus = sensing.stall_changes(snapshot, {}, now_ms=now, window_ms=window, bus_error="gone")
    assert {c.experiment_id for c in bus} == {"fresh", "silent", "sandbox"} and {c.reason for c in bus} == {"REPORT_BUS_UNAVAILABLE"}
    stalled = {"fresh": {"reason": "REPORT_BUS_UNAVAILABLE", "started_at_ms": now - 5}}
    assert [c.action for c in sensing.stall_changes(snapshot[:1], stalled, now_ms=now, window_ms=window, bus_error=None)] == ["resume"]
    assert sensing.stall_changes(snapshot[:1], stalled, now_ms=now, window_ms=window, bus_error="still gone") == []


# ---- Dagster sensors -------------------------------------------------------------------------------------------
@pytest.fixture
def env(store, db_url, workdirs):
    resources = {"store": ExperimentStoreResource(db_url=db_url),
                 "settings": PipelineSettingsResource(landing_dir=str(workdirs["landing"]), experiments_dir=str(workdirs["experiments"]),
                                                      stall_window_seconds=3600),
                 "report_bus": ReportBusResource()}  # no bus: the landing folder is the report source
    with dg.instance_for_test() as instance:
        yield instance, resources


def _tick(sensor, instance, resources, cursor=None):
    context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result
    if isinstance(result, dg.RunRequest):
        return [result], cursor, None
    return list(result.run_requests or []), result.cursor, None


def test_new_reports_sensor_requests_once_per_file_state(store, workdirs, env):
    instance, resources = env
    path = workdirs["landing"] / "a.jsonl"
    write_jsonl(path, [fill("r1", "v-slug", "shadow", "k1")])
    requests, cursor, _ = _tick(sensors.new_reports_sensor, instance, resources)
    assert len(requests) == 1 and requests[0].run_key.startswith("reports:")
    again, cursor, _ = _tick(sensors.new_reports_sensor, instance, resources, cursor)
    assert again == []  # same file state: no second request, however often it ticks
    ingest_landing(store, workdirs["landing"])
    done, cursor, _ = _tick(sensors.new_reports_sensor, instance, resources, cursor)
    assert done == []
    write_jsonl(path, [fill("r2", "v-slug", "shadow", "k2")], append=True)
    grown, cursor, _ = _tick(sensors.new_reports_sensor, instance, resources, cursor)
    assert len(grown) == 1 and grown[0].run_key != requests[0].run_key


def test_new_experiments_sensor(store, workdirs, env):
    instance, resources = env
    assert _tick(sensors.new_experiments_sensor, instance, resources)[0] == []  # empty folder: nothing to do
    (workdirs["experiments"] / "a.yaml").write_text(declaration("exp_a"))
    requests, cursor, _ = _tick(sensors.new_experiments_sensor, instance, resources)
    assert len(requests) == 1
    assert _tick(sensors.new_experiments_sensor, instance, resources, cursor)[0] == []
    # Once the store has registered the file, a daemon starting from scratch (no cursor) requests nothing.
    sync_declarations(store, workdirs["experiments"])
    assert _tick(sensors.new_experiments_sensor, instance, resources)[0] == []


def test_new_experiments_sensor_adds_missing_and_removes_unbacked_partitions(store, workdirs, env):
    instance, resources = env
    (workdirs["experiments"] / "a.yaml").write_text(declaration("exp_a"))
    sync_declarations(store, workdirs["experiments"])
    instance.add_dynamic_partitions("experiments", ["exp_typo_sports"])  # a key typed into the UI
    context = dg.build_sensor_context(instance=instance, resources=resources)
    result = sensors.new_experiments_sensor(context)
    changes = {(type(r).__name__, tuple(r.partition_keys)) for r in result.dynamic_partitions_requests}
    assert changes == {("AddDynamicPartitionsRequest", ("exp_a",)), ("DeleteDynamicPartitionsRequest", ("exp_typo_sports",))}
    assert result.run_requests == []


def _declare_and_ingest(store, workdirs, instance, n, start=0, experiment_id="exp_a", v="v-slug", c="c-slug", min_samples=100):
    path = workdirs["experiments"] / f"{experiment_id}.yaml"
    if not path.exists():
        path.write_text(declaration(experiment_id, variant_slug=v, control_slug=c, min_samples_for_decision=min_samples))
        sync_declarations(store, workdirs["experiments"])
        instance.add_dynamic_partitions("experiments", [experiment_id])
    write_jsonl(workdirs["landing"] / f"{experiment_id}-{start}.jsonl", [r for i in range(start, start + n) for r in (
        fill(f"{experiment_id}-c{i}", c, "live", f"{experiment_id}-k{i}", t=i),
        fill(f"{experiment_id}-v{i}", v, "shadow", f"{experiment_id}-k{i}", t=i))])
    ingest_landing(store, workdirs["landing"])


def _pass_ids(request):
    return request.run_config["experiment_ids"]


def _finish(instance, requests, status=dg.DagsterRunStatus.SUCCESS):
    """Record the requested runs as finished, as the daemon would (the next tick reads their state)."""
    for request in requests:
        instance.add_run(dg.DagsterRun(job_name="experiment_pass_job", run_id=str(uuid.uuid4()), status=status,
                                       tags={"dagster/run_key": request.run_key}))


def test_pass_sensor_batches_every_due_experiment_into_one_run(store, workdirs, env):
    instance, resources = env
    for i in range(3):
        _declare_and_ingest(store, workdirs, instance, 5, experiment_id=f"exp_{i}", v=f"v{i}", c=f"c{i}")
    requests, cursor, _ = _tick(sensors.experiment_pass_sensor, instance, resources)
    assert len(requests) == 1 and sorted(_pass_ids(requests[0])) == ["exp_0", "exp_1", "exp_2"]
    config = requests[0].run_config
    assert config["evaluation"] == "step" and requests[0].tags["dagster/max_retries"] == "0"
    # The run is in flight: nothing more is requested, however often the sensor ticks.
    assert _tick(sensors.experiment_pass_sensor, instance, resources, cursor)[0] == []


def test_pass_sensor_starts_from_the_store_watermarks(store, workdirs, env):
    """Work done outside the daemon (the CLI's `run`) is not due: a daemon with an empty cursor requests nothing."""
    instance, resources = env
    _declare_and_ingest(store, workdirs, instance, 100)
    assert [_pass_ids(r) for r in _tick(sensors.experiment_pass_sensor, instance, resources)[0]] == [["exp_a"]]
    record_samples(store, "exp_a")
    compute_intervals(store, "exp_a")
    decide(store, "exp_a")
    assert _tick(sensors.experiment_pass_sensor, instance, resources)[0] == []
    # Ten more pairs (+10%) make it due again, with a new run key.
    _declare_and_ingest(store, workdirs, instance, 10, start=100)
    requests = _tick(sensors.experiment_pass_sensor, instance, resources)[0]
    assert [_pass_ids(r) for r in requests] == [["exp_a"]]


def test_pass_sensor_retries_only_the_experiments_a_failed_run_left_due(store, workdirs, env, monkeypatch):
    instance, resources = env
    monkeypatch.setattr(sensors, "RETRY_AFTER_MS", 0)
    _declare_and_ingest(store, workdirs, instance, 100, experiment_id="exp_a", v="va", c="ca")
    _declare_and_ingest(store, workdirs, instance, 100, experiment_id="exp_b", v="vb", c="cb")
    requests, cursor, _ = _tick(sensors.experiment_pass_sensor, instance, resources)
    assert sorted(_pass_ids(requests[0])) == ["exp_a", "exp_b"]
    # The run did exp_a and failed on exp_b.
    record_samples(store, "exp_a")
    compute_intervals(store, "exp_a")
    decide(store, "exp_a")
    _finish(instance, requests, dg.DagsterRunStatus.FAILURE)
    retry, cursor, _ = _tick(sensors.experiment_pass_sensor, instance, resources, cursor)
    assert [_pass_ids(r) for r in retry] == [["exp_b"]] and retry[0].tags["experimenttracker/retried"] == "1"
    assert retry[0].run_key != requests[0].run_key


def test_stall_sensor_emits_once_and_resumes(store, workdirs, env):
    instance, resources = env
    _declare_and_ingest(store, workdirs, instance, 3)
    record_samples(store, "exp_a")
    shutil.rmtree(workdirs["landing"])  # the report bus becomes unreadable
    for _ in range(3):
        _tick(sensors.stall_sensor, instance, resources)
    stalled = store.reports("exp_a", "EXPERIMENT_STALLED")
    assert len(stalled) == 1 and stalled[0]["reason"] == "REPORT_BUS_UNAVAILABLE"
    assert experiment_row(store, "exp_a")["status"] == "stalled"
    workdirs["landing"].mkdir()
    _tick(sensors.stall_sensor, instance, resources)
    _tick(sensors.stall_sensor, instance, resources)
    assert len(store.reports("exp_a", "EXPERIMENT_RESUMED")) == 1
    assert experiment_row(store, "exp_a")["status"] == "active"
    # A second outage is a new episode with its own report.
    shutil.rmtree(workdirs["landing"])
    _tick(sensors.stall_sensor, instance, resources)
    assert len(store.reports("exp_a", "EXPERIMENT_STALLED")) == 2


def test_sensors_skip_cleanly_when_the_store_is_down(workdirs):
    resources = {"store": ExperimentStoreResource(db_url="postgresql+psycopg2://postgres@127.0.0.1:1/none"),
                 "settings": PipelineSettingsResource(landing_dir=str(workdirs["landing"]), experiments_dir=str(workdirs["experiments"])),
                 "report_bus": ReportBusResource()}
    write_jsonl(workdirs["landing"] / "a.jsonl", [fill("r1", "v-slug", "shadow", "k1")])
    with dg.instance_for_test() as instance:
        for sensor in (sensors.new_experiments_sensor, sensors.new_reports_sensor, sensors.experiment_pass_sensor,
                       sensors.stall_sensor):
            requests, _, skip = _tick(sensor, instance, resources)
            assert requests == [] and skip is not None and "unavailable" in skip.skip_message
