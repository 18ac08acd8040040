"""The bus sensors through Dagster's sensor API against a real JetStream server: a run request only while
messages wait (one at a time), the relay requested while reports wait, and the stall sensor marking every active
experiment stalled once while the bus is down and resuming them once when it is back."""

from __future__ import annotations

import dagster as dg

from experimenttracker_pipeline.defs import bus as bus_defs
from experimenttracker_pipeline.defs import sensors
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    PipelineSettingsResource,
    ReportBusResource,
)
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.ingestion.bus import ingest_bus
from experimenttracker_pipeline_tests.builders import declaration, fill
from experimenttracker_pipeline_tests.support.nats import publish
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows
from experimenttracker_pipeline.stages.publishing.queries import unpublished_count


def _bus(nats_server) -> ReportBusResource:
    return ReportBusResource(url=nats_server.url, ack_wait_seconds=1.0, connect_timeout_seconds=1.0)


def test_report_bus_sensor_requests_ingestion_only_while_messages_wait(store, nats_server, bus_config):
    instance = dg.DagsterInstance.ephemeral()
    report_bus = _bus(nats_server)
    context = dg.build_sensor_context(instance=instance, resources={"report_bus": report_bus})
    publish(nats_server.url, [])  # the stream exists, nothing on it
    assert isinstance(bus_defs.report_bus_sensor(context), dg.SkipReason)
    publish(nats_server.url, [fill(f"r{i}", "v", "live", f"p{i}") for i in range(7)])
    request = bus_defs.report_bus_sensor(context)
    assert isinstance(request, dg.RunRequest) and request.tags["experimenttracker/bus_outstanding"] == "7"
    assert request.tags[bus_defs.SOURCE_TAG] == "bus"
    ingest_bus(store, bus_config)
    assert isinstance(bus_defs.report_bus_sensor(context), dg.SkipReason)
    nats_server.stop()
    skipped = bus_defs.report_bus_sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "unreachable" in skipped.skip_message
    unconfigured = dg.build_sensor_context(instance=instance, resources={"report_bus": ReportBusResource()})
    assert "no report bus configured" in bus_defs.report_bus_sensor(unconfigured).skip_message


def test_report_relay_sensor_requests_a_run_while_reports_wait(store, nats_server):
    instance = dg.DagsterInstance.ephemeral()
    resources = {"report_bus": _bus(nats_server), "store": ExperimentStoreResource(db_url=store.url)}
    context = dg.build_sensor_context(instance=instance, resources=resources)
    assert isinstance(bus_defs.report_relay_sensor(context), dg.SkipReason)
    with store.begin() as conn:
        store.emit_report(conn, event_type="EXPERIMENT_STARTED", severity="INFO", dedupe_key="s1", payload={},
                          experiment_id="e", topic="polytraders.reports.operations")
    request = bus_defs.report_relay_sensor(context)
    assert isinstance(request, dg.RunRequest) and request.tags["experimenttracker/unpublished"] == "1"
    result = bus_defs.report_relay_job.execute_in_process(instance=instance, resources=resources)
    assert result.success and unpublished_count(store) == 0
    assert isinstance(bus_defs.report_relay_sensor(context), dg.SkipReason)


def test_stall_sensor_stalls_every_active_experiment_once_and_resumes_once(store, nats_server, tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    for exp_id in ("exp_1", "exp_2", "exp_3"):
        (folder / f"{exp_id}.yaml").write_text(declaration(exp_id, variant_slug=f"v{exp_id}", control_slug=f"c{exp_id}"))
    sync_declarations(store, folder)
    resources = {"store": ExperimentStoreResource(db_url=store.url), "report_bus": _bus(nats_server),
                 "settings": PipelineSettingsResource(landing_dir=str(tmp_path / "no-landing"), experiments_dir=str(folder))}
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources=resources)
    publish(nats_server.url, [])
    sensors.stall_sensor(context)
    assert store.reports(event_type="EXPERIMENT_STALLED") == []  # bus up, no landing folder needed

    nats_server.stop()
    for _ in range(3):
        sensors.stall_sensor(context)
    stalled = store.reports(event_type="EXPERIMENT_STALLED")
    assert sorted(r["experiment_id"] for r in stalled) == ["exp_1", "exp_2", "exp_3"]
    assert {r["reason"] for r in stalled} == {"REPORT_BUS_UNAVAILABLE"}
    assert {r["status"] for r in experiment_rows(store)} == {"stalled"}

    nats_server.start()
    for _ in range(3):
        sensors.stall_sensor(context)
    assert sorted(r["experiment_id"] for r in store.reports(event_type="EXPERIMENT_RESUMED")) == ["exp_1", "exp_2", "exp_3"]
    assert {r["status"] for r in experiment_rows(store)} == {"active"}
    assert len(store.reports(event_type="EXPERIMENT_STALLED")) == 3
