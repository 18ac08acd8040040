"""The proposer's sample size against simulation: for several delta sds and MDEs, the pairs per arm that
``stages.design.proposer.planned_pairs`` plans, and the simulated power of the verdict's own interval (the
always-valid confidence sequence tuned at the plan, or the fixed-horizon t interval) at five sizes around it,
with the size where simulated power reaches the target (probit fitted linear in sqrt(n)).

    python benchmarks/proposer_power.py                 # 4000 simulated experiments per size
    python benchmarks/proposer_power.py --sims 1000     # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experimenttracker_pipeline.stages.design.proposer import planned_pairs  # noqa: E402
from experimenttracker_pipeline_tests.support.power import simulated_size  # noqa: E402

CASES = [  # (ci_method, sd of the paired delta, mde, alpha, power)
    ("always_valid", 14.142, 1.5, 0.05, 0.8),
    ("always_valid", 20.0, 1.0, 0.05, 0.8),
    ("always_valid", 8.0, 1.0, 0.05 / 3, 0.8),
    ("always_valid", 10.0, 1.0, 0.05, 0.9),
    ("fixed_horizon", 14.142, 1.5, 0.05, 0.8),
    ("fixed_horizon", 5.0, 1.0, 0.01, 0.9),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=4000)
    args = ap.parse_args()
    print(f"{'method':>13} {'sd':>7} {'mde':>5} {'alpha':>7} {'power':>5} {'planned n':>9} {'simulated n':>11} "
          f"{'diff':>6}  simulated power at 0.85 / 0.925 / 1 / 1.075 / 1.15 x planned")
    for i, (method, sd, mde, alpha, power) in enumerate(CASES):
        t0 = time.perf_counter()
        n = planned_pairs(mde, sd, alpha, power, method)
        sim, table = simulated_size(n, mde, sd, alpha, power, sims=args.sims, seed=100 + i, ci_method=method)
        powers = " / ".join(f"{p:.3f}" for _, p in table)
        print(f"{method:>13} {sd:>7.3f} {mde:>5.2f} {alpha:>7.4f} {power:>5.2f} {n:>9d} {sim:>11.0f} "
              f"{(n - sim) / sim:>+6.1%}  {powers}  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
