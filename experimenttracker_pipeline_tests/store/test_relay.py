"""The outbox relay against a real JetStream server: marked published only after the PubAck, de-duplicated by
Nats-Msg-Id after a crash, nothing left behind, a backlog drained after an outage (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from experimenttracker_pipeline.settings import DEVELOPER_TOPIC, OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.ingestion import bus
from experimenttracker_pipeline.stages.publishing.relay import ReportPublishError, publish_outbox
from experimenttracker_pipeline_tests.support.nats import publish, read_subject
from experimenttracker_pipeline.stages.publishing.queries import unpublished_count, unpublished_reports


def emit(store, n: int, *, start: int = 0) -> list[str]:
    ids = []
    with store.begin() as conn:
        for i in range(start, start + n):
            developer = i % 5 == 4
            body = store.emit_report(conn, event_type="SAMPLE_RECORDED" if developer else "EXPERIMENT_RESULT",
                                     severity="INFO", dedupe_key=f"k{i}", payload={"n": i}, experiment_id="exp_r",
                                     report_kind="DeveloperReport" if developer else "OperationsReport",
                                     topic=DEVELOPER_TOPIC if developer else OPERATIONS_TOPIC)
            ids.append(body["report_id"])
    return ids


def test_every_report_is_published_once_on_its_subject(store, nats_server, bus_config):
    emitted = emit(store, 25)
    ids = [r["report_id"] for r in unpublished_reports(store, 100)]  # the outbox order: created_at, report_id
    assert sorted(ids) == sorted(emitted)
    result = publish_outbox(store, bus_config, page=7)
    assert (result.published, result.already_on_bus) == (25, 0)
    assert unpublished_count(store) == 0
    on_stream = read_subject(nats_server.url, "polytraders.reports.>")
    assert [m["msg_id"] for m in on_stream] == ids  # oldest first, one message per report
    assert {m["subject"] for m in on_stream if m["payload"]["report_kind"] == "DeveloperReport"} == {DEVELOPER_TOPIC}
    assert {m["subject"] for m in on_stream if m["payload"]["report_kind"] == "OperationsReport"} == {OPERATIONS_TOPIC}
    recorded = store.rows("SELECT report_id, stream, stream_seq, duplicate FROM report_publications ORDER BY stream_seq")
    assert [(r["report_id"], int(r["stream_seq"])) for r in recorded] == [(m["msg_id"], m["seq"]) for m in on_stream]
    again = publish_outbox(store, bus_config)
    assert (again.published, again.already_on_bus) == (0, 0)


def test_a_crash_after_the_puback_is_deduplicated_by_the_server(store, nats_server, bus_config):
    emit(store, 10)
    rows = unpublished_reports(store, 100)
    ids = [r["report_id"] for r in rows]

    async def publish_without_recording():
        # The relay's publish of the first 6 rows, with the process dying before it records the PubAcks.
        nc = await bus.connect(bus_config)
        js = nc.jetstream(timeout=5)
        await bus.ensure_stream(js, bus_config)
        for row in rows[:6]:
            await js.publish(row["topic"], row["payload_json"].encode(), headers={"Nats-Msg-Id": row["report_id"]})
        await nc.close()

    asyncio.run(publish_without_recording())
    assert unpublished_count(store) == 10
    result = publish_outbox(store, bus_config)
    assert (result.published, result.already_on_bus) == (4, 6)
    assert [m["msg_id"] for m in read_subject(nats_server.url, "polytraders.reports.>")] == ids
    assert store.scalar("SELECT COUNT(*) FROM report_publications WHERE duplicate") == 6


def test_an_outage_leaves_the_backlog_in_the_outbox_until_the_bus_is_back(store, nats_server, bus_config):
    emit(store, 5)
    publish_outbox(store, bus_config)
    nats_server.stop()
    emit(store, 8, start=5)
    with pytest.raises(bus.ReportBusUnavailable):
        publish_outbox(store, bus_config)
    assert unpublished_count(store) == 8
    nats_server.start()
    result = publish_outbox(store, bus_config)
    assert result.published == 8 and unpublished_count(store) == 0
    assert len(read_subject(nats_server.url, "polytraders.reports.>")) == 13


def test_a_stream_that_does_not_capture_the_subject_records_nothing(store, nats_server, bus_config):
    publish(nats_server.url, [], subjects=("polytraders.reports.fills",))  # someone else's stream of that name
    emit(store, 3)
    with pytest.raises(ReportPublishError):
        publish_outbox(store, bus_config)
    assert unpublished_count(store) == 3
