"""Report bus ingestion throughput and publish -> verdict latency, beside a bare JetStream consumer in the same run.

    .venv/bin/python benchmarks/bus_ingest.py [--messages 100000] [--batch 1000] [--pg-url URL] [--latency-runs 5]

Starts a private `nats-server -js` (own port, own storage folder) and a fresh PostgreSQL database (dropped at the
end), publishes ``--messages`` fill reports (matched shadow pairs over 10 experiments) to
`polytraders.reports.fills`, then times:

1. **bare consumer**: a durable pull consumer that only fetches (batch ``--batch``) and acks each message, the same
   way the pipeline's consumer does; the baseline;
2. **bus ingestion**: `ingest_bus` (validate, de-duplicate, store with each message's stream sequence in one
   transaction per batch, then ack) of the same messages through the bot's own consumer;
3. **pairing**: `record_samples` of the 10 experiments (the messages become samples);
4. **publish -> verdict latency**: ``--latency-runs`` times, a new experiment (min_samples_for_decision 100) gets
   100 pairs published with PubAcks; the clock runs from the first publish until its verdict report is in the
   outbox, with the stages run back to back in-process (ingest, pair, intervals, causal, verdict), i.e. without the
   sensors' polling intervals.

Target: bus ingestion into samples at least 1/3 of the bare consumer's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bigdata import _database_url, drop_database  # noqa: E402
from experimenttracker_pipeline.settings import normalise_db_url  # noqa: E402
from experimenttracker_pipeline.stages.causal_effects.estimation import compute_causal  # noqa: E402
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations  # noqa: E402
from experimenttracker_pipeline.stages.ingestion.bus import BusConfig, ingest_bus  # noqa: E402
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals  # noqa: E402
from experimenttracker_pipeline.stages.samples.recording import record_samples  # noqa: E402
from experimenttracker_pipeline.stages.verdict.decision import decide  # noqa: E402
from experimenttracker_pipeline.store import Store  # noqa: E402

BASE_MS = 1_778_000_000_000
EXPERIMENTS = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill(report_id: str, slug: str, mode: str, pair_key: str, t: int, edge: float) -> dict:
    return {"report_id": report_id, "report_kind": "OperationsReport", "event_type": "FILL",
            "topic": "polytraders.reports.operations", "bot_id": f"strat.{slug}", "strategy_slug": slug, "mode": mode,
            "pair_key": pair_key, "market_id": "mkt_1", "size_pusd": 200.0, "notional_pusd": 100.0, "edge_pusd": edge,
            "slippage_bps": 2.5, "recorded_at_ms": BASE_MS + t}


def _pairs(prefix: str, slugs: tuple[str, str], n: int, delta_bps: float) -> list[bytes]:
    out = []
    for i in range(n):
        key = f"{prefix}:{i}"
        out.append(json.dumps(_fill(f"{prefix}-c{i}", slugs[1], "live", key, i * 1000, 1.0)).encode())
        out.append(json.dumps(_fill(f"{prefix}-v{i}", slugs[0], "shadow", key, i * 1000 + 1,
                                    1.0 + (delta_bps + (i % 7 - 3) * 0.5) / 100)).encode())
    return out


def _declaration(exp_id: str, variant: str, control: str, min_samples: int) -> str:
    return (f"experiment_id: {exp_id}\nprincipal: desk:bench\nvariant_slug: {variant}\ncontrol_slug: {control}\n"
            f"mode: shadow_only\nmin_samples_for_decision: {min_samples}\nstarted_at: '2026-05-01T00:00:00Z'\n")


async def _publish(url: str, bodies: list[bytes], *, acked: bool) -> None:
    import nats
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    try:
        await js.stream_info("REPORTS")
    except NotFoundError:
        await js.add_stream(StreamConfig(name="REPORTS", subjects=["polytraders.reports.>"]))
    before = (await js.stream_info("REPORTS")).state.messages
    if acked:
        for body in bodies:
            await js.publish("polytraders.reports.fills", body)
    else:  # core publish (no PubAck per message), then wait until the stream holds them all
        for body in bodies:
            await nc.publish("polytraders.reports.fills", body)
        await nc.flush()
        while (await js.stream_info("REPORTS")).state.messages < before + len(bodies):
            await asyncio.sleep(0.05)
    await nc.close()


async def _bare_consumer(url: str, total: int, batch: int) -> float:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await js.add_consumer("REPORTS", ConsumerConfig(durable_name="bare", ack_policy=AckPolicy.EXPLICIT, max_deliver=-1,
                                                    max_ack_pending=max(1000, 4 * batch), ack_wait=60))
    subscription = await js.pull_subscribe_bind(durable="bare", stream="REPORTS")
    started, seen = time.perf_counter(), 0
    while seen < total:
        messages = await subscription.fetch(batch=min(batch, total - seen), timeout=5)
        for message in messages:
            await message.ack()
        seen += len(messages)
    await nc.flush()
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bus_ingest_"))
    port = _free_port()
    server = subprocess.Popen([shutil.which("nats-server") or "/usr/sbin/nats-server", "-js", "-a", "127.0.0.1",
                               "-p", str(port), "-sd", str(folder / "nats")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    name = f"et_bus_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalise_db_url(args.pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    db_url = _database_url(args.pg_url, name)
    store = Store(db_url)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        store.migrate()
        experiments = folder / "experiments"
        experiments.mkdir()
        per = args.messages // (2 * EXPERIMENTS)
        bodies: list[bytes] = []
        for k in range(EXPERIMENTS):
            (experiments / f"exp_{k}.yaml").write_text(_declaration(f"exp_{k}", f"v{k}", f"c{k}", 100))
            bodies += _pairs(f"e{k}", (f"v{k}", f"c{k}"), per, 2.0)
        sync_declarations(store, experiments)
        started = time.perf_counter()
        asyncio.run(_publish(url, bodies, acked=False))
        publish_s = time.perf_counter() - started
        total = len(bodies)
        print(f"published {total:,} reports ({EXPERIMENTS} experiments x {per:,} pairs) in {publish_s:.1f} s")

        bare_s = asyncio.run(_bare_consumer(url, total, args.batch))
        config = BusConfig(url=url, batch_size=args.batch, ack_wait_seconds=120)
        started = time.perf_counter()
        result = ingest_bus(store, config, max_messages=total)
        ingest_s = time.perf_counter() - started
        assert result.balanced and result.accepted == total, result
        started = time.perf_counter()
        samples = sum(record_samples(store, f"exp_{k}").new_samples for k in range(EXPERIMENTS))
        pair_s = time.perf_counter() - started
        assert samples == total // 2, samples

        bare_rate = total / bare_s
        rows = [("bare consumer (fetch + ack)", bare_s, bare_rate),
                ("bus ingestion (validate, store + sequence, ack)", ingest_s, total / ingest_s),
                ("pairing into samples", pair_s, total / pair_s),
                ("bus -> samples (ingestion + pairing)", ingest_s + pair_s, total / (ingest_s + pair_s))]
        print(f"\n{'step':<50} {'time':>8} {'reports/s':>11} {'of bare rate':>13}")
        for label, seconds, rate in rows:
            print(f"{label:<50} {seconds:7.1f}s {rate:11,.0f} {rate / bare_rate:12.2f}x")

        latencies = []
        for run in range(args.latency_runs):
            exp_id = f"lat_{run}"
            (experiments / f"{exp_id}.yaml").write_text(_declaration(exp_id, f"lv{run}", f"lc{run}", 100))
            sync_declarations(store, experiments)
            lat_bodies = _pairs(exp_id, (f"lv{run}", f"lc{run}"), 100, 3.0)
            started = time.perf_counter()
            asyncio.run(_publish(url, lat_bodies, acked=True))
            published = time.perf_counter() - started
            ingest_bus(store, config)
            record_samples(store, exp_id)
            compute_intervals(store, exp_id)
            compute_causal(store, exp_id)
            verdict = decide(store, exp_id)
            assert verdict.report is not None and verdict.verdict["verdict"] == "variant_wins", verdict.verdict
            latencies.append((time.perf_counter() - started, published))
        total_s = [t for t, _ in latencies]
        print(f"\npublish -> verdict report (200 reports, 100 pairs, stages back to back), {len(latencies)} runs: "
              f"median {statistics.median(total_s):.2f} s, max {max(total_s):.2f} s "
              f"(of which publishing with PubAcks: median {statistics.median(p for _, p in latencies):.2f} s)")
    finally:
        store.dispose()
        drop_database(args.pg_url, db_url)
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
