"""Sensors: crossing logic, cursors surviving a restart, run keys (no duplicate requests), stall and recovery
with one report per episode, store outages skipped cleanly."""

import json
import shutil

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
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl
from experimenttracker_pipeline.stages.declarations.queries import experiment_row


# ---- pure decisions ------------------------------------------------------------------------------------------
def test_evaluation_requests_cross_threshold_then_step_never_twice():
    cursor: dict = {}
    row = {"experiment_id": "e", "min_samples_for_decision": 100}
    assert sensing.evaluation_requests([{**row, "samples": 99}], cursor) == []
    (first,) = sensing.evaluation_requests([{**row, "samples": 100}], cursor)
    assert first.key == "evaluate:e:100"
    assert sensing.evaluation_requests([{**row, "samples": 100}], cursor) == []
    assert sensing.evaluation_requests([{**row, "samples": 109}], cursor) == []
    (second,) = sensing.evaluation_requests([{**row, "samples": 110}], cursor)
    assert second.key == "evaluate:e:110"
    assert sensing.next_evaluation_count(1000, step_pct=0.0, step_n=250) == 1250


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
                {"experiment_id": "ended", "status": "ended", "last_appended_at_ms": 0, "registered_at_ms": 0}]
    changes = sensing.stall_changes(snapshot, {}, now_ms=now, window_ms=window, bus_error=None)
    assert [(c.experiment_id, c.action, c.reason) for c in changes] == [("silent", "stall", "NO_SAMPLES_IN_WINDOW")]
    bus = sensing.stall_changes(snapshot, {}, now_ms=now, window_ms=window, bus_error="gone")
    assert {c.experiment_id for c in bus} == {"fresh", "silent"} and {c.reason for c in bus} == {"REPORT_BUS_UNAVAILABLE"}
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


def test_new_experiments_sensor(workdirs, env):
    instance, resources = env
    assert _tick(sensors.new_experiments_sensor, instance, resources)[0] == []  # empty folder: nothing to do
    (workdirs["experiments"] / "a.yaml").write_text(declaration("exp_a"))
    requests, cursor, _ = _tick(sensors.new_experiments_sensor, instance, resources)
    assert len(requests) == 1
    assert _tick(sensors.new_experiments_sensor, instance, resources, cursor)[0] == []


def _declare_and_pair(store, workdirs, instance, n, start=0):
    if not (workdirs["experiments"] / "a.yaml").exists():
        (workdirs["experiments"] / "a.yaml").write_text(declaration("exp_a", min_samples_for_decision=100))
        sync_declarations(store, workdirs["experiments"])
        instance.add_dynamic_partitions("experiments", ["exp_a"])
    write_jsonl(workdirs["landing"] / f"b{start}.jsonl", [r for i in range(start, start + n) for r in (
        fill(f"c{i}", "c-slug", "live", f"k{i}", t=i), fill(f"v{i}", "v-slug", "shadow", f"k{i}", t=i))])
    ingest_landing(store, workdirs["landing"])


def test_pairing_sensor_requests_partitions_with_new_fills(store, workdirs, env):
    instance, resources = env
    _declare_and_pair(store, workdirs, instance, 5)
    requests, cursor, _ = _tick(sensors.pairing_sensor, instance, resources)
    assert [(r.partition_key, r.run_key.split(":")[0]) for r in requests] == [("exp_a", "samples")]
    assert _tick(sensors.pairing_sensor, instance, resources, cursor)[0] == []


def test_sample_threshold_sensor_crossing_and_restart(store, workdirs, env):
    instance, resources = env
    _declare_and_pair(store, workdirs, instance, 99)
    record_samples(store, "exp_a")
    requests, cursor, _ = _tick(sensors.sample_threshold_sensor, instance, resources)
    assert requests == []
    _declare_and_pair(store, workdirs, instance, 1, start=99)
    record_samples(store, "exp_a")
    requests, cursor, _ = _tick(sensors.sample_threshold_sensor, instance, resources, cursor)
    assert [(r.run_key, r.partition_key) for r in requests] == [("evaluate:exp_a:100", "exp_a")]
    # A "daemon restart" is a new context with the stored cursor: nothing is requested twice.
    assert _tick(sensors.sample_threshold_sensor, instance, resources, json.loads(json.dumps(cursor)))[0] == []
    _declare_and_pair(store, workdirs, instance, 10, start=100)
    record_samples(store, "exp_a")
    requests, cursor, _ = _tick(sensors.sample_threshold_sensor, instance, resources, cursor)
    assert [r.run_key for r in requests] == ["evaluate:exp_a:110"]


def test_stall_sensor_emits_once_and_resumes(store, workdirs, env):
    instance, resources = env
    _declare_and_pair(store, workdirs, instance, 3)
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
        for sensor in (sensors.new_reports_sensor, sensors.pairing_sensor, sensors.sample_threshold_sensor, sensors.stall_sensor):
            requests, _, skip = _tick(sensor, instance, resources)
            assert requests == [] and skip is not None and "unavailable" in skip.skip_message
