"""Report bus ingestion against a real JetStream server: validation, quarantine, ignored reports, exactly-once
storage across lost acks, crashes and store outages (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experimenttracker_pipeline.stages.ingestion.landing import ReportBusUnavailable

from experimenttracker_pipeline.stages.ingestion import bus
from experimenttracker_pipeline.store import Store, StoreUnavailable
from experimenttracker_pipeline_tests.builders import fill
from experimenttracker_pipeline_tests.support.nats import free_port, publish
from experimenttracker_pipeline_tests.support.waiting import wait_until


def fills(n: int, prefix: str = "r") -> list[dict]:
    return [fill(f"{prefix}{i}", "v-slug" if i % 2 else "c-slug", "shadow" if i % 2 else "live", f"p{i // 2}", t=i)
            for i in range(n)]


def bus_rows(store: Store, stream: str = "REPORTS") -> dict[str, int]:
    rows = store.rows("SELECT outcome, COUNT(*) AS n FROM bus_messages WHERE stream = :s GROUP BY outcome", s=stream)
    return {r["outcome"]: int(r["n"]) for r in rows}


def test_messages_are_validated_quarantined_ignored_and_accounted(store, nats_server, bus_config):
    good = fills(10)
    other_bot = {"report_id": "ops_other_1", "report_kind": "OperationsReport", "event_type": "EXPERIMENT_RESULT",
                 "bot_id": "gov.experimenttracker", "topic": "polytraders.reports.operations", "verdict": "inconclusive"}
    developer = {"report_id": "dev_1", "report_kind": "DeveloperReport", "event_type": "SAMPLE_RECORDED"}
    overflow = dict(good[0], report_id="r_overflow")
    overflow_text = json.dumps(overflow).replace('"size_pusd": 200.0', '"size_pusd": 1' + "0" * 400)
    assert overflow_text != json.dumps(overflow)
    surrogate = json.dumps(dict(good[0], report_id="r_surrogate", pair_key="\ud800"))
    messages = [*good, "{not json", other_bot, developer, overflow_text, surrogate, "", fill("r_bad", "v", "live", "p", notional=-1),
                good[3]]  # an exact redelivery by the producer
    seqs = publish(nats_server.url, messages)

    result = bus.ingest_bus(store, bus_config, run_id="run-1")

    assert result.balanced and result.messages == len(messages)
    assert (result.accepted, result.duplicates, result.ignored) == (10, 1, 2)
    assert result.quarantined == 5
    reasons = dict(result.quarantine_reasons)
    assert reasons["REPORT_INVALID_JSON"] == 1 and reasons["REPORT_EMPTY_LINE"] == 1
    assert reasons["REPORT_NON_POSITIVE_AMOUNT"] == 1
    # The 400-digit number and the lone surrogate are poison for validation or the database: each is quarantined
    # on its own (whatever code names it) and never blocks the messages around it.
    quarantined = {r["line_number"]: r for r in store.rows("SELECT * FROM quarantined_reports WHERE source_file = 'REPORTS'")}
    assert set(quarantined) == {seqs[10], seqs[13], seqs[14], seqs[15], seqs[16]}
    assert quarantined[seqs[13]]["report_id"] in (None, "r_overflow")
    stored = store.rows("SELECT report_id, source_file, source_line FROM raw_reports ORDER BY source_line")
    assert [(r["report_id"], r["source_file"], r["source_line"]) for r in stored] == [
        (f"r{i}", "REPORTS", seqs[i]) for i in range(10)]
    assert bus_rows(store) == {"accepted": 10, "duplicate": 1, "quarantined": 5, "ignored": 2}
    batch = store.rows("SELECT SUM(lines_read) AS n, SUM(accepted) AS a, SUM(duplicates) AS d, SUM(quarantined) AS q, "
                       "SUM(ignored) AS i FROM ingestion_batches WHERE source_file = 'REPORTS'")[0]
    assert (batch["n"] + batch["i"], batch["a"], batch["d"], batch["q"], batch["i"]) == (len(messages), 10, 1, 5, 2)

    backlog = bus.consumer_backlog(bus_config)
    assert (backlog.pending, backlog.ack_pending, backlog.ack_floor_seq) == (0, 0, seqs[-1])
    again = bus.ingest_bus(store, bus_config)
    assert again.messages == 0


def test_a_message_stored_but_not_acked_is_redelivered_and_counted_once(store, nats_server, bus_config):
    seqs = publish(nats_server.url, fills(30))

    async def store_without_ack() -> int:
        # The consumer's own steps, stopped between the commit and the acks (a crash at the worst moment).
        nc = await bus.connect(bus_config)
        js = nc.jetstream(timeout=5)
        await bus.ensure_stream(js, bus_config)
        await bus.ensure_consumer(js, bus_config)
        subscription = await js.pull_subscribe_bind(durable=bus_config.consumer, stream=bus_config.stream)
        messages = await subscription.fetch(batch=20, timeout=2)
        deliveries = [(m.metadata.sequence.stream, bus.classify(m.metadata.sequence.stream, m.data)) for m in messages]
        bus.store_deliveries(store, bus_config.stream, deliveries, {}, None)
        await nc.close()
        return len(messages)

    assert asyncio.run(store_without_ack()) == 20
    assert store.scalar("SELECT COUNT(*) FROM raw_reports") == 20
    time.sleep(bus_config.ack_wait_seconds + 0.5)  # the server redelivers after ack_wait

    result = bus.ingest_bus(store, bus_config)

    assert result.messages == 30 and result.redelivered == 20 and result.duplicates == 20 and result.accepted == 10
    assert store.scalar("SELECT COUNT(*) FROM raw_reports") == 30
    assert bus_rows(store) == {"accepted": 30}
    assert store.scalar("SELECT COUNT(*) FROM bus_messages") == len(seqs)
    backlog = bus.consumer_backlog(bus_config)
    assert backlog.outstanding == 0


def test_store_outage_acks_nothing_and_the_messages_wait_on_the_bus(db_url, nats_server, bus_config):
    publish(nats_server.url, fills(12))
    down = Store(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere")
    with pytest.raises(StoreUnavailable):
        bus.ingest_bus(down, bus_config)
    backlog = bus.consumer_backlog(bus_config)
    assert backlog.pending == 12 and backlog.ack_pending == 0  # nothing was even fetched

    store = Store(db_url)
    store.migrate()
    result = bus.ingest_bus(store, bus_config)
    assert (result.messages, result.accepted) == (12, 12)
    store.dispose()


def test_bus_unreachable_is_reported_not_raised_as_a_crash(store, nats_server, bus_config):
    nats_server.stop()
    started = time.monotonic()
    with pytest.raises(bus.ReportBusUnavailable):
        bus.ingest_bus(store, bus_config)
    error = bus.report_bus_error(bus_config)
    assert error and "unreachable" in error
    assert time.monotonic() - started < 20
    nats_server.start()
    assert bus.report_bus_error(bus_config) is None


_WORKER = """
import sys
from experimenttracker_pipeline.stages.ingestion.bus import BusConfig, ingest_bus
from experimenttracker_pipeline.store import Store
store = Store(sys.argv[1])
config = BusConfig(url=sys.argv[2], batch_size=int(sys.argv[3]), ack_wait_seconds=1.0, connect_timeout_seconds=1.0)
result = ingest_bus(store, config, max_messages=10**9)
print(result.messages, flush=True)
"""


@pytest.mark.slow
def test_killing_the_ingestion_mid_batch_and_restarting_gives_exact_counts(store, nats_server, bus_config):
    records: list = fills(3000)
    for i in range(0, 3000, 500):  # some bad and some foreign messages along the way
        records.insert(i, "{broken")
        records.insert(i, {"report_id": f"x{i}", "report_kind": "OperationsReport", "event_type": "EXPERIMENT_STARTED"})
    seqs = publish(nats_server.url, records)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    for step in (150, 420, 90, 610, 260, 330):
        # SIGKILL once the ledger has moved on by `step` messages: mid-fetch, mid-transaction or mid-ack.
        before = store.scalar("SELECT COUNT(*) FROM bus_messages")
        worker = subprocess.Popen([sys.executable, "-c", _WORKER, store.url, nats_server.url, "40"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        last, last_change = before, time.monotonic()
        while worker.poll() is None:
            done = store.scalar("SELECT COUNT(*) FROM bus_messages")
            if done - before >= step:
                worker.send_signal(signal.SIGKILL)
                kills += 1
                break
            if done != last:
                last, last_change = done, time.monotonic()
            assert time.monotonic() - last_change < 60, "the ingestion worker made no progress for 60 s"
            time.sleep(0.01)
        worker.wait()
    assert kills >= 4
    done_before = store.scalar("SELECT COUNT(*) FROM bus_messages")
    assert 0 < done_before < len(records)
    time.sleep(bus_config.ack_wait_seconds + 0.5)

    def drained() -> bool:
        if store.scalar("SELECT COUNT(*) FROM bus_messages") >= len(records):
            return True
        try:
            bus.ingest_bus(store, bus_config, max_messages=10**9)
        except ReportBusUnavailable:
            pass  # a connect timeout on a loaded machine: the next poll retries, wait_until judges progress
        return False

    wait_until(drained, lambda: store.scalar("SELECT COUNT(*) FROM bus_messages"), idle_timeout=120,
               poll_seconds=bus_config.ack_wait_seconds, what="the restarted ingestion to store every message")

    assert store.scalar("SELECT COUNT(*) FROM raw_reports") == 3000
    assert store.scalar("SELECT COUNT(*) FROM quarantined_reports") == 6
    assert bus_rows(store) == {"accepted": 3000, "quarantined": 6, "ignored": 6}
    assert store.scalar("SELECT MIN(stream_seq) FROM bus_messages") == seqs[0]
    assert store.scalar("SELECT MAX(stream_seq) FROM bus_messages") == seqs[-1]
    totals = store.rows("SELECT SUM(lines_read) AS n, SUM(accepted) AS a, SUM(duplicates) AS d, SUM(quarantined) AS q, "
                        "SUM(ignored) AS i FROM ingestion_batches")[0]
    # Every delivery that reached a commit is counted: first deliveries once each, redeliveries as duplicates.
    assert totals["a"] == 3000 and totals["q"] == 6 and totals["i"] == 6
    assert totals["n"] == totals["a"] + totals["d"] + totals["q"]
    assert bus.consumer_backlog(bus_config).outstanding == 0
