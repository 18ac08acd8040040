"""Cost of one group-sequential evaluation as the number of earlier sensor evaluations grows.

Before: every sensor evaluation was a look, so the information fractions of all earlier evaluations went into
a fresh Lan-DeMets recursion and a root-found repeated p-value (``stats.group_sequential_ci`` over all of
them). Now: the looks are the planned ones (K equally spaced sample counts), analysed on their own first n_k
pairs; the design is computed once per process and cached, so an evaluation reads the looks reached and costs
the same whatever came before. Both are timed here in the same run, on the same data.

    python benchmarks/group_sequential_cost.py            # 3, 60 and 190 earlier evaluations
    python benchmarks/group_sequential_cost.py --quick    # 3 and 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import experimenttracker_pipeline.stats as st  # noqa: E402
from experimenttracker_pipeline.stages.verdict.rule import EvaluationPolicy, evaluate  # noqa: E402
from experimenttracker_pipeline.stats import SufficientStats  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--plan", type=int, default=2000, help="planned_max_samples (default 2000)")
    p.add_argument("--looks", type=int, default=5, help="planned_looks (default 5)")
    p.add_argument("--every", type=int, default=10, help="pairs between sensor evaluations (default 10)")
    args = p.parse_args(argv)
    previous_counts = [3, 30] if args.quick else [3, 60, 190]

    rng = np.random.default_rng(7)
    x = rng.normal(0.3, 10, 4 * args.plan)
    c1, c2 = np.cumsum(x), np.cumsum(x * x)

    def stats(n: int) -> SufficientStats:
        return SufficientStats(n, float(c1[n - 1]), float(c2[n - 1]))

    policy = EvaluationPolicy(ci_method="group_sequential", planned_max_samples=args.plan, planned_looks=args.looks)
    print(f"group-sequential evaluation cost: plan {args.plan} pairs, {args.looks} planned looks, a sensor "
          f"evaluation every {args.every} pairs")
    print(f"  {'earlier evaluations':>20} {'n':>6} {'before (every evaluation a look)':>34} {'now, cold':>12} "
          f"{'now, warm':>12} {'ratio before/warm':>18}")
    for k in previous_counts:
        n = 100 + args.every * k
        # Before: all earlier evaluations are looks; fractions renormalised by max(plan, n).
        counts = [100 + args.every * i for i in range(k)] + [n]
        fractions = [c / max(args.plan, n) for c in counts]
        t = time.perf_counter()
        st.group_sequential_ci(stats(n), fractions)
        before = time.perf_counter() - t
        design_looks = policy.design().look_samples
        looks = [stats(m) for m in design_looks[:policy.design().looks_reached(n)]]
        st.group_sequential_design.cache_clear()
        t = time.perf_counter()
        evaluate(stats(n), policy, look_stats=looks)
        cold = time.perf_counter() - t
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            evaluate(stats(n), policy, look_stats=looks)
        warm = (time.perf_counter() - t) / reps
        print(f"  {k:>20} {n:>6} {before:>32.3f} s {cold:>10.3f} s {warm:>10.4f} s {before / warm:>17.0f}x",
              flush=True)
    print("  (now: the cost does not depend on the number of earlier evaluations; 'cold' includes computing the "
          "design once per process; most of 'warm' is the power and sample-size read-out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
