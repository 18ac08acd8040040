"""Ingestion + pairing throughput against PostgreSQL, beside a raw COPY of the same rows into a bare table.

    .venv/bin/python benchmarks/ingest.py [--reports 1000000] [--experiments 10] [--pg-url URL]

Creates (and drops) its own database. Prints reports per second for raw COPY, ingestion, and ingestion plus
pairing, the ratio to raw COPY (the figure that matters; target within 3x), and the process's peak memory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline.store import Store

BASE_MS = 1_778_000_000_000


def generate(path: Path, reports: int, experiments: int) -> None:
    """Write `reports` fills (half variant shadow, half live control, matched by pair_key) as JSONL."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(reports // 2):
            e = i % experiments
            key = f"e{e}:opp:{i}"
            t = BASE_MS + i * 10
            for role, slug, mode in (("c", f"model-{e}", "live"), ("v", f"model-{e}-v2", "shadow")):
                record = {"report_id": f"{role}-{i}", "report_kind": "OperationsReport", "event_type": "FILL",
                          "topic": "polytraders.reports.operations", "bot_id": f"strat.{slug}", "strategy_slug": slug,
                          "mode": mode, "pair_key": key, "market_id": f"mkt_{i % 97}", "size_pusd": 100.0 + i % 50,
                          "notional_pusd": 55.0 + i % 30, "edge_pusd": ((i * 7919) % 200 - 100) / 100.0,
                          "slippage_bps": 2.0 + (i % 5), "recorded_at_ms": t, "covariates": {"category": f"c{i % 4}"}}
                handle.write(json.dumps(record) + "\n")


def raw_copy_seconds(url: str, path: Path) -> float:
    """COPY the same rows (already as columns) into a bare table: the floor any ingestion can approach."""
    engine = sa.create_engine(url)
    columns = ["report_id", "report_kind", "event_type", "topic", "bot_id", "strategy_slug", "mode", "pair_key",
               "market_id", "size_pusd", "notional_pusd", "edge_pusd", "slippage_bps", "recorded_at_ms", "covariates"]
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bare_copy")
        conn.exec_driver_sql(
            "CREATE TABLE bare_copy (report_id text, report_kind text, event_type text, topic text, bot_id text, "
            "strategy_slug text, mode text, pair_key text, market_id text, size_pusd float8, notional_pusd float8, "
            "edge_pusd float8, slippage_bps float8, recorded_at_ms bigint, covariates text)")
    start = time.perf_counter()
    with engine.begin() as conn, path.open("r", encoding="utf-8") as handle:
        cursor = conn.connection.driver_connection.cursor()
        while True:  # chunks of 50,000 lines, like ingestion, so memory is comparable
            lines = [line for _, line in zip(range(50_000), handle)]
            if not lines:
                break
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            for line in lines:  # parsing JSON is part of any honest baseline: the input is JSON lines
                record = json.loads(line)
                writer.writerow([record[c] if c != "covariates" else json.dumps(record[c]) for c in columns])
            buffer.seek(0)
            cursor.copy_expert(f"COPY bare_copy ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buffer)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--pg-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    name = f"et_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            landing = tmp_path / "landing"
            experiments_dir = tmp_path / "experiments"
            landing.mkdir()
            experiments_dir.mkdir()
            t0 = time.perf_counter()
            generate(landing / "reports.jsonl", args.reports, args.experiments)
            for e in range(args.experiments):
                (experiments_dir / f"e{e}.yaml").write_text(
                    f"experiment_id: bench_e{e}\nprincipal: desk:bench\nvariant_slug: model-{e}-v2\n"
                    f"control_slug: model-{e}\nstarted_at: '2026-01-01T00:00:00Z'\n")
            print(f"generated {args.reports:,} reports in {time.perf_counter() - t0:.1f} s")

            copy_s = raw_copy_seconds(url, landing / "reports.jsonl")
            store = Store(url)
            store.migrate()
            sync_declarations(store, experiments_dir)
            t0 = time.perf_counter()
            result = ingest_landing(store, landing)
            ingest_s = time.perf_counter() - t0
            assert result.balanced and result.accepted == args.reports, result
            t0 = time.perf_counter()
            samples = sum(record_samples(store, f"bench_e{e}").new_samples for e in range(args.experiments))
            pair_s = time.perf_counter() - t0
            store.dispose()
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n = args.reports
        print(f"raw COPY (json parse + COPY into a bare table): {copy_s:7.1f} s  {n / copy_s:>10,.0f} reports/s")
        print(f"ingestion (validate, dedupe, quarantine, COPY):  {ingest_s:7.1f} s  {n / ingest_s:>10,.0f} reports/s"
              f"  ratio to raw COPY {ingest_s / copy_s:.2f}x")
        print(f"pairing ({samples:,} samples, hash chain, COPY):     {pair_s:7.1f} s  {samples / pair_s:>10,.0f} samples/s")
        print(f"ingestion + pairing:                             {ingest_s + pair_s:7.1f} s  {n / (ingest_s + pair_s):>10,.0f} reports/s"
              f"  ratio to raw COPY {(ingest_s + pair_s) / copy_s:.2f}x")
        print(f"peak memory (max RSS of this process): {peak_mib:,.0f} MiB")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
