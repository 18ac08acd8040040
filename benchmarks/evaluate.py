"""Evaluation time for many experiments holding millions of samples in PostgreSQL, beside one bare aggregate query.

    .venv/bin/python benchmarks/evaluate.py [--experiments 1000] [--samples 10000000] [--pg-url URL] [--keep]

Builds its own database with `benchmarks/bigdata.py` (dropped at the end unless --keep), then times

1. ONE bare aggregate over the whole table:
   ``SELECT experiment_id, COUNT(*), SUM(d), SUM(d*d) FROM experiment_samples GROUP BY experiment_id``
   (run twice; the faster run is the baseline);
2. the pipeline's evaluation of every experiment, the way the pipeline does it: for each experiment
   ``compute_intervals`` (sufficient statistics aggregated in SQL, one look recorded) then
   ``decide`` (verdict, report outbox). The causal stage is separate and not timed here.

Prints both side by side with their ratio, the per-experiment p50/p99, experiments per second, where the
evaluation's database time goes (per SQL statement), and the process's peak memory. Checks on one experiment
that the evaluation's n and mean equal a direct SQL COUNT/AVG.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bigdata import create_big_database, drop_database  # noqa: E402
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals
from experimenttracker_pipeline.stages.verdict.decision import decide
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.intervals.queries import metric_stats

BARE_AGGREGATE = ("SELECT experiment_id, COUNT(*), SUM(edge_delta_bps), SUM(edge_delta_bps * edge_delta_bps) "
                  "FROM experiment_samples GROUP BY experiment_id")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


class StatementTimer:
    """Wall time per SQL statement shape (literals and whitespace folded), via SQLAlchemy cursor events."""

    def __init__(self, engine: sa.Engine):
        self.totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self._starts: list[float] = []
        self.engine = engine
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        self._starts.append(time.perf_counter())

    def _after(self, conn, cursor, statement, parameters, context, executemany):
        elapsed = time.perf_counter() - self._starts.pop()
        key = re.sub(r"\s+", " ", statement).strip()
        entry = self.totals[key]
        entry[0] += 1
        entry[1] += elapsed

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._before)
        sa.event.remove(self.engine, "after_cursor_execute", self._after)

    def top(self, k: int = 8) -> list[tuple[str, int, float]]:
        return sorted(((s, int(c), t) for s, (c, t) in self.totals.items()), key=lambda r: -r[2])[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="admin URL of the server (a database to connect to while creating the benchmark's own)")
    parser.add_argument("--seed", type=int, default=20260505)
    parser.add_argument("--layout", choices=("clustered", "interleaved"), default="clustered",
                        help="clustered: each experiment's samples stored together (best case); interleaved: in arrival "
                             "order across experiments, as a live pipeline writes them")
    parser.add_argument("--keep", action="store_true", help="do not drop the benchmark database at the end")
    args = parser.parse_args()

    t0 = time.perf_counter()
    url = create_big_database(args.pg_url, experiments=args.experiments, samples=args.samples, seed=args.seed,
                              layout=args.layout)
    load_s = time.perf_counter() - t0
    store = None
    try:
        store = Store(url)
        ids = [r["experiment_id"] for r in store.rows("SELECT experiment_id FROM experiments ORDER BY experiment_id")]

        # (1) one bare aggregate over the whole table
        bare_runs = []
        for _ in range(2):
            with store.engine.connect() as conn:
                start = time.perf_counter()
                groups = conn.exec_driver_sql(BARE_AGGREGATE).all()
                bare_runs.append(time.perf_counter() - start)
        assert len(groups) == len(ids) and sum(g[1] for g in groups) == args.samples, (len(groups), sum(g[1] for g in groups))
        bare_s = min(bare_runs)
        with store.engine.connect() as conn:
            plan = [r[0] for r in conn.exec_driver_sql(f"EXPLAIN {BARE_AGGREGATE}")]

        # (2) the pipeline's evaluation of every experiment
        timer = StatementTimer(store.engine)
        per_ms, intervals_ms, decide_ms = [], [], []
        evaluations = {}
        verdicts: dict[str, int] = defaultdict(int)
        start_all = time.perf_counter()
        for i, experiment_id in enumerate(ids, 1):
            t_a = time.perf_counter()
            result = compute_intervals(store, experiment_id)
            t_b = time.perf_counter()
            verdict = decide(store, experiment_id)
            t_c = time.perf_counter()
            intervals_ms.append((t_b - t_a) * 1000)
            decide_ms.append((t_c - t_b) * 1000)
            per_ms.append((t_c - t_a) * 1000)
            evaluations[experiment_id] = result.evaluation
            verdicts[verdict.verdict["verdict"]] += 1
            if i % max(1, len(ids) // 10) == 0:
                print(f"[evaluate] {i:,} / {len(ids):,} experiments evaluated  {time.perf_counter() - start_all:6.1f} s", flush=True)
        eval_s = time.perf_counter() - start_all
        timer.close()

        # The evaluation's n and mean are the table's, for one experiment.
        probe = ids[len(ids) // 2]
        row = store.rows("SELECT COUNT(*) AS n, AVG(edge_delta_bps) AS mean, STDDEV_SAMP(edge_delta_bps) AS sd "
                         "FROM experiment_samples WHERE experiment_id = :e", e=probe)[0]
        evaluation = evaluations[probe]
        assert evaluation["samples"] == row["n"], (evaluation["samples"], row["n"])
        # The evaluation's floats are rounded to 6 significant digits (Evaluation.to_dict) ...
        assert math.isclose(evaluation["edge_delta_bps"], float(row["mean"]), rel_tol=1e-5), (evaluation["edge_delta_bps"], row["mean"])
        assert math.isclose(evaluation["sd_bps"], float(row["sd"]), rel_tol=1e-5), (evaluation["sd_bps"], row["sd"])
        # ... the sufficient statistics it was computed from are not.
        n_sql, total, _, shift, _ = metric_stats(store, probe)["edge_delta_bps"]  # sums about the first delta
        mean = shift + total / n_sql
        assert n_sql == row["n"] and math.isclose(mean, float(row["mean"]), rel_tol=1e-9, abs_tol=1e-12), (mean, row["mean"])

        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n_exp = len(ids)
        print()
        print(f"database: {n_exp:,} experiments, {args.samples:,} samples in experiment_samples ({args.layout} layout); "
              f"built in {load_s:.1f} s")
        print(f"bare aggregate (one GROUP BY over the table):   {bare_s:8.2f} s  "
              f"(runs: {', '.join(f'{r:.2f}' for r in bare_runs)} s; plan: {plan[0].strip()})")
        print(f"pipeline evaluation of {n_exp:,} experiments:      {eval_s:8.2f} s  "
              f"{n_exp / eval_s:,.1f} experiments/s  ratio to the bare aggregate {eval_s / bare_s:.2f}x")
        print(f"  per experiment (compute_intervals + decide): p50 {_percentile(per_ms, 0.5):7.1f} ms  "
              f"p99 {_percentile(per_ms, 0.99):7.1f} ms  max {max(per_ms):7.1f} ms")
        print(f"  compute_intervals: p50 {_percentile(intervals_ms, 0.5):7.1f} ms  p99 {_percentile(intervals_ms, 0.99):7.1f} ms; "
              f"decide: p50 {_percentile(decide_ms, 0.5):7.1f} ms  p99 {_percentile(decide_ms, 0.99):7.1f} ms")
        sql_total = sum(t for _, t in timer.totals.values())
        print(f"  time in SQL statements: {sql_total:.2f} s of {eval_s:.2f} s; the costliest:")
        for statement, count, total in timer.top(6):
            print(f"    {total:7.2f} s  {count:6,}x  {total / count * 1000:7.2f} ms  {statement[:110]}")
        for statement, _count, _total in [t for t in timer.top(6) if t[0].startswith("SELECT") and "%(e)s" in t[0]][:2]:
            with store.engine.connect() as conn:
                plan_rows = [r[0] for r in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", {"e": probe})]
            print(f"    plan of {statement[:60]}... for {probe}:")
            for line in plan_rows:
                print(f"      {line}")
        print(f"  verdicts: {dict(sorted(verdicts.items()))}")
        print(f"  check on {probe}: evaluation n={evaluation['samples']:,} mean={evaluation['edge_delta_bps']:.6g} bps "
              f"sd={evaluation['sd_bps']:.6g} = SQL COUNT/AVG/STDDEV {row['n']:,} / {float(row['mean']):.9g} / {float(row['sd']):.9g}")
        print(f"peak memory (max RSS of this process): {peak_mib:,.0f} MiB")
        print(f"mean evaluation per experiment {statistics.fmean(per_ms):.1f} ms")
    finally:
        if store is not None:
            store.dispose()
        if args.keep:
            print(f"kept database: {url}")
        else:
            drop_database(args.pg_url, url)


if __name__ == "__main__":
    main()
