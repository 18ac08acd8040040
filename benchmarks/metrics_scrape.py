"""Cost of one Prometheus scrape of `experimenttracker serve` with 1,000 experiments, beside one bare query.

    .venv/bin/python benchmarks/metrics_scrape.py [--experiments 1000] [--samples 1000000] [--looks 20] [--pg-url URL]

Builds its own PostgreSQL database with `benchmarks/bigdata.py` (dropped at the end), evaluates every experiment
once for real (`compute_intervals` + `decide`, so evaluations, verdicts and reports exist), then multiplies the
history the way a long-running tracker accumulates it: ``--looks`` evaluations and verdicts per experiment, 20
outbox reports per experiment (90% of them published), 10,000 quarantined lines and 2,000 ingestion batches.
Times, over 50 rounds each:

1. the bare query ``SELECT experiment_id, samples FROM experiment_pairing_state`` (the smallest read that could
   feed one per-experiment series), and
2. the full scrape: the collector's store reads plus rendering the Prometheus text (``generate_latest``).

Prints medians and p95 with their ratio, the response size and the number of series.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.exposition import generate_latest  # noqa: E402

from benchmarks.bigdata import create_big_database, drop_database  # noqa: E402
from experimenttracker_pipeline.observability.metrics import build_registry  # noqa: E402
from experimenttracker_pipeline.observability.readings import QUERIES, read_store  # noqa: E402
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals  # noqa: E402
from experimenttracker_pipeline.stages.verdict.decision import decide  # noqa: E402
from experimenttracker_pipeline.store import Store  # noqa: E402
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows

HISTORY = """
INSERT INTO experiment_evaluations (experiment_id, samples, verdict, ci_method, ci_95_low, ci_95_high, fixed_ci_95_low,
    fixed_ci_95_high, edge_delta_bps, p_value, power, drift_signalled, evaluation_json)
SELECT experiment_id, samples, verdict, ci_method, ci_95_low, ci_95_high, fixed_ci_95_low, fixed_ci_95_high,
    edge_delta_bps, p_value, power, drift_signalled, evaluation_json FROM experiment_evaluations, generate_series(2, :looks);
INSERT INTO operations_reports (report_id, dedupe_key, bot_id, report_kind, topic, event_type, severity, experiment_id, payload_json)
SELECT 'bench_' || e.experiment_id || '_' || g, 'bench:' || e.experiment_id || ':' || g, 'gov.experimenttracker',
    'OperationsReport', 'polytraders.reports.operations', 'EXPERIMENT_RESULT', 'INFO', e.experiment_id, '{}'
FROM experiments e, generate_series(1, 20) g;
INSERT INTO report_publications (report_id, subject, stream, stream_seq, duplicate)
SELECT report_id, topic, 'REPORTS', row_number() OVER (ORDER BY report_id), false FROM operations_reports
WHERE report_id LIKE 'bench_%' AND right(report_id, 1) <> '7';
INSERT INTO quarantined_reports (source_file, line_number, reason_code, detail, raw_text)
SELECT 'REPORTS', g, (ARRAY['REPORT_INVALID_JSON', 'REPORT_MISSING_FIELD', 'REPORT_OUT_OF_RANGE'])[1 + g % 3], 'bench', '{'
FROM generate_series(1, 10000) g;
INSERT INTO ingestion_batches (source_file, from_offset, to_offset, first_line, lines_read, accepted, duplicates, quarantined, ignored)
SELECT 'REPORTS', g * 500, g * 500 + 499, g * 500, 500, 490, 5, 5, 20 FROM generate_series(1, 2000) g;
INSERT INTO stage_durations (stage, runs, total_seconds, last_seconds, last_at_ms) VALUES
    ('ingestion', 2000, 900.0, 0.4, 0), ('evaluation', 20000, 700.0, 0.03, 0);
ANALYZE;
"""


def _time(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    url = create_big_database(args.pg_url, experiments=args.experiments, samples=args.samples, verbose=False)
    store = Store(url)
    try:
        started = time.perf_counter()
        for row in experiment_rows(store):
            compute_intervals(store, row["experiment_id"])
            decide(store, row["experiment_id"])
        print(f"setup: {args.experiments} experiments, {args.samples:,} samples, evaluated in "
              f"{time.perf_counter() - started:.1f} s")
        with store.begin() as conn:
            for statement in HISTORY.split(";"):
                if statement.strip():
                    conn.execute(sa.text(statement), {"looks": args.looks})
        counts = {t: store.scalar(f"SELECT COUNT(*) FROM {t}") for t in (
            "experiment_evaluations", "experiment_verdicts", "operations_reports", "quarantined_reports")}
        print("history: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))

        def bare() -> None:
            with store.begin() as conn:
                conn.execute(sa.text("SELECT experiment_id, samples FROM experiment_pairing_state")).all()

        registry = build_registry(store)
        body = generate_latest(registry)
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        bare_times = _time(bare, args.rounds)
        scrape_times = _time(lambda: generate_latest(registry), args.rounds)

        def pct(values: list[float], q: float) -> float:
            return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

        b50, s50 = statistics.median(bare_times) * 1000, statistics.median(scrape_times) * 1000
        print(f"{'step':<44} {'median':>9} {'p95':>9}")
        print(f"{'bare query (pairing state, 1 table)':<44} {b50:8.1f}ms {pct(bare_times, .95):8.1f}ms")
        print(f"{'full scrape (store reads + text rendering)':<44} {s50:8.1f}ms {pct(scrape_times, .95):8.1f}ms")
        print(f"ratio scrape / bare (median): {s50 / b50:.1f}x; response {len(body) / 1024:.0f} KiB, {series} series")
        reads = statistics.median(_time(lambda: read_store(store), args.rounds)) * 1000
        print(f"store reads alone (one transaction, median): {reads:.1f} ms; per statement (median):")
        for name, sql in QUERIES.items():
            def one(sql=sql):
                with store.begin() as conn:
                    conn.execute(sql).all()
            print(f"  {name:<24} {statistics.median(_time(one, 20)) * 1000:7.1f} ms")
    finally:
        store.dispose()
        drop_database(args.pg_url, url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
