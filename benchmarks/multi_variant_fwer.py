"""Family-wise false-verdict rate of an A/B/n experiment under continuous monitoring (issue: A/B/n sampling).

Simulates all-null 3-treatment A/A experiments the way the pipeline evaluates them: each treatment's fills are
matched to the same control fill (shadow, one pair_key), so the three comparisons share the control's noise and
are positively correlated; every comparison is evaluated after each ``--look-every`` new pairs from
``min_samples_for_decision`` on, on its always-valid confidence sequence, with the policy the pipeline uses for a
comparison (``verdict.assembly.policy_of`` of ``Experiment.comparison``: alpha / k, drift alpha split over k).
A family false verdict is any comparison ever called ``variant_wins`` or ``control_wins``; a family false drift
is any comparison's drift rule ever firing. Printed with 95% Wilson intervals, next to the same experiments
evaluated without the correction (each comparison at alpha, as k separate experiments would be). A random sample
of cells is re-evaluated with the library (``verdict.rule.evaluate``) and must agree with the vectorised rule.

    python benchmarks/multi_variant_fwer.py            # 1000 experiments x 3000 pairs, a look every 25 pairs
    python benchmarks/multi_variant_fwer.py --quick    # 300 x 1500
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import experimenttracker_pipeline.stats as st  # noqa: E402
from experimenttracker_pipeline.model.experiment import parse_experiment  # noqa: E402
from experimenttracker_pipeline.stages.verdict.assembly import policy_of  # noqa: E402
from experimenttracker_pipeline.stages.verdict.rule import evaluate  # noqa: E402
from experimenttracker_pipeline.stats import SufficientStats  # noqa: E402

K = 3
DECLARATION = {
    "experiment_id": "exp_aaa", "principal": "desk:bench", "variant_slug": "s-a", "control_slug": "ctl",
    "mode": "shadow_only", "traffic_split_pct": 30, "min_samples_for_decision": 100, "expected_samples": 1000,
    "started_at": "2026-05-01T00:00:00Z",
    "variants": {"control": {"slug": "ctl", "traffic_share_bp": 7000},
                 **{v: {"slug": f"s-{v}", "traffic_share_bp": 1000} for v in ("a", "b", "c")}},
}


def wilson(hits: int, n: int) -> tuple[float, float]:
    z = sps.norm.ppf(0.975)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def simulate(experiments: int, pairs: int, look_every: int, seed: int) -> dict:
    experiment = parse_experiment(DECLARATION, "<benchmark>")
    comparisons = experiment.comparisons()
    assert len(comparisons) == K
    corrected = policy_of(comparisons[0])
    uncorrected = policy_of(experiment)
    rng = np.random.default_rng(seed)
    # Edge per fill in bps: the control's and each treatment's own noise; the delta shares the control's.
    control = rng.normal(0.0, 10.0, size=(experiments, pairs))
    deltas = rng.normal(0.0, 10.0, size=(K, experiments, pairs)) - control[None, :, :]
    looks = np.arange(corrected.min_samples_for_decision, pairs + 1, look_every)
    csum = np.cumsum(deltas, axis=2)[:, :, looks - 1]
    csq = np.cumsum(deltas * deltas, axis=2)[:, :, looks - 1]
    n = looks.astype(float)
    mean = csum / n
    sd = np.sqrt(np.maximum(csq - n * mean * mean, 0.0) / (n - 1))
    out = {"looks": len(looks), "policy_alpha": corrected.alpha, "drift_alpha": corrected.drift_alpha / corrected.treatments}
    for name, policy in (("corrected", corrected), ("uncorrected", uncorrected)):
        alpha = policy.alpha
        rho = st.mixture_rho(policy.tuning_samples(), alpha)
        half = sd * np.array([st.normal_mixture_bound(v, alpha, rho) / v for v in n])
        decided = (mean - half > 0) | (mean + half < 0)
        drift_alpha = policy.drift_alpha / policy.treatments
        rho1 = st.mixture_rho(policy.tuning_samples(), 2 * drift_alpha)
        upper = mean + sd * np.array([st.one_sided_normal_mixture_bound(v, drift_alpha, rho1) / v for v in n])
        drift = upper < -policy.drift_margin_bps
        family_verdict = decided.any(axis=2).any(axis=0)
        family_drift = drift.any(axis=2).any(axis=0)
        out[name] = {"verdict": int(family_verdict.sum()), "drift": int(family_drift.sum()),
                     "per_comparison": float(decided.any(axis=2).mean())}
        if name == "corrected":
            out["check"] = (decided, drift)
    out["experiments"] = experiments
    out["deltas"], out["look_index"], out["policy"] = deltas, looks, corrected
    return out


def library_agrees(result: dict, samples: int, seed: int) -> int:
    """Re-evaluate random (comparison, experiment, look) cells with verdict.rule.evaluate; returns mismatches."""
    rng = np.random.default_rng(seed + 1)
    decided, drift = result["check"]
    deltas, looks, policy = result["deltas"], result["look_index"], result["policy"]
    bad = 0
    for _ in range(samples):
        k, e, j = rng.integers(K), rng.integers(deltas.shape[1]), rng.integers(len(looks))
        got = evaluate(SufficientStats.from_values(deltas[k, e, :looks[j]]), policy)
        lib_decided = got.verdict in ("variant_wins", "control_wins")
        if lib_decided != bool(decided[k, e, j]) or bool(got.drift_signalled) != bool(drift[k, e, j]):
            bad += 1
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--look-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args()
    experiments, pairs = (300, 1500) if args.quick else (1000, 3000)
    started = time.perf_counter()
    r = simulate(experiments, pairs, args.look_every, args.seed)
    print(f"all-null A/B/n, {K} treatments sharing one control: {experiments} experiments x {pairs} pairs, "
          f"{r['looks']} looks each (every {args.look_every} pairs from min_samples_for_decision)")
    print(f"per-comparison alpha {r['policy_alpha']:.4f} (0.05 / {K}), drift alpha {r['drift_alpha']:.4f} per comparison")
    for name in ("corrected", "uncorrected"):
        for what in ("verdict", "drift"):
            hits = r[name][what]
            lo, hi = wilson(hits, experiments)
            print(f"  {name:11s} family-wise false {what:7s}: {hits / experiments:.3f}  [{lo:.3f}, {hi:.3f}]")
    bad = library_agrees(r, 200, args.seed)
    print(f"library cross-check (verdict.rule.evaluate on 200 random cells): {bad} disagreements")
    print(f"elapsed {time.perf_counter() - started:.1f} s")
    ok = r["corrected"]["verdict"] / experiments <= 0.05 and bad == 0
    print("PASS: family-wise false-verdict rate <= 5%" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
