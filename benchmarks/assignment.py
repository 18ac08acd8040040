"""Benchmark of deterministic variant assignment (spec 17.3 budget: p99 < 10 ms, 100,000/s).

Single-threaded. Prints:
  * batch throughput of AssignmentPlan.assign_many (ids/s), with and without ETH checks;
  * throughput of one-at-a-time AssignmentPlan.assign calls;
  * latency percentiles of one assignment, each call timed on its own (warm plan, as the
    spec's assignment service caches the experiment config), and of the cold path that also
    builds the plan from the contract.

Usage: python benchmarks/assignment.py [--n 300000] [--latency-n 200000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experimenttracker_pipeline.model.experiment import parse_experiment  # noqa: E402
from experimenttracker_pipeline.stages.governance.assignment import (  # noqa: E402
    AssignmentPlan,
    assign,
)

RAW = {
    "experiment_id": "exp_bench", "principal": "desk:sports", "variant_slug": "m-v2",
    "control_slug": "m", "mode": "limited_live", "traffic_split_pct": 30,
    "started_at": "2026-05-05T00:00:00Z",
    "polb_config": {"max_population_share_bp": 3000},
    "variants": {"control": {"traffic_share_bp": 7000}, "a": {"slug": "m-v2", "traffic_share_bp": 2000},
                 "b": {"slug": "m-v3", "traffic_share_bp": 1000}},
    "eth_constraints": {"forbid": ["market:mkt-7", "principal:fund:pension-a", "unit:opp-42"]},
}


def pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6  # ms


def best_rate(fn, n: int, repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300_000, help="ids per throughput run")
    ap.add_argument("--latency-n", type=int, default=200_000, help="individually timed assignments")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    contract = parse_experiment(RAW, "benchmarks/assignment.yaml").contract
    plan = AssignmentPlan.from_contract(contract)
    ids = [f"opp-{i:09d}" for i in range(args.n)]
    markets = [f"mkt-{i % 100}" for i in range(args.n)]

    batch = best_rate(lambda: plan.assign_many(ids), args.n)
    batch_eth = best_rate(lambda: plan.assign_many(ids, market_ids=markets), args.n)
    single = best_rate(lambda: [plan.assign(u) for u in ids], args.n)

    lat: list[int] = []
    clock = time.perf_counter_ns
    a1 = plan.assign
    gc.collect()
    for u in ids[: args.latency_n]:
        t0 = clock()
        a1(u)
        lat.append(clock() - t0)
    lat.sort()

    cold: list[int] = []
    for u in ids[: min(20_000, args.latency_n)]:
        t0 = clock()
        assign(contract, u)  # builds the plan each time
        cold.append(clock() - t0)
    cold.sort()

    res = {
        "python": platform.python_version(), "machine": platform.machine(),
        "batch_assignments_per_s": round(batch), "batch_with_eth_checks_per_s": round(batch_eth),
        "single_call_assignments_per_s": round(single),
        "latency_warm_ms": {"p50": pct(lat, 0.50), "p99": pct(lat, 0.99), "p99.9": pct(lat, 0.999),
                            "max": lat[-1] / 1e6, "mean": statistics.fmean(lat) / 1e6},
        "latency_cold_ms": {"p50": pct(cold, 0.50), "p99": pct(cold, 0.99), "max": cold[-1] / 1e6},
        "budget": {"p99_ms": 10, "assignments_per_s": 100_000},
    }
    res["within_budget"] = (res["latency_warm_ms"]["p99"] < 10 and batch >= 100_000
                            and single >= 100_000)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        w, c = res["latency_warm_ms"], res["latency_cold_ms"]
        print(f"assignment benchmark (Python {res['python']}, single thread, {args.n:,} ids)")
        print(f"  batch assign_many            {batch:>12,.0f} /s")
        print(f"  batch with ETH market checks {batch_eth:>12,.0f} /s")
        print(f"  one call at a time           {single:>12,.0f} /s")
        print(f"  latency warm plan  p50 {w['p50']:.4f} ms  p99 {w['p99']:.4f} ms  "
              f"p99.9 {w['p99.9']:.4f} ms  max {w['max']:.3f} ms")
        print(f"  latency cold (build plan + assign)  p50 {c['p50']:.4f} ms  p99 {c['p99']:.4f} ms")
        print(f"  budget p99 < 10 ms and >= 100,000/s: {'OK' if res['within_budget'] else 'MISSED'}")
    return 0 if res["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
