"""Calibration of the verdict and drift rules under continuous monitoring (issue 3).

Simulates matched-pair experiments, evaluates them after every ``--look-every`` new pairs
(as the sensor does) and prints:

* the false-verdict rate in A/A experiments of the fixed-horizon rule (spec computeCI95
  re-checked at every look) and of the default always-valid rule (target <= 5%);
* the false drift-signal rate in A/A experiments (target <= 2.5%), default rule and the
  spec's literal 2-sigma rule re-checked at every look;
* the coverage of the fixed-horizon CI at a fixed n (target 95% +/- 1.5%), plus the
  single-n and all-looks coverage of the confidence sequence;
* the power for a +3 bps effect with sd 10 for the default rule (verdict reached by n,
  continuous monitoring) and for the fixed-horizon test at a single planned look;
* optionally a group-sequential design with K equal looks.

Rules are vectorised over experiments with cumulative sums; a random sample of
(experiment, look) cells is re-evaluated with ``verdict.evaluate`` to check that the
vectorised rules are the library's rules. Seeded; runs in about a minute at full size.

    python benchmarks/calibration.py                      # full size (1000 x 5000 pairs)
    python benchmarks/calibration.py --experiments 200 --max-pairs 1000 --coverage-reps 2000
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

import experimenttracker_pipeline.stats as st

from experimenttracker_pipeline.stages.verdict.rule import EvaluationPolicy, evaluate
from experimenttracker_pipeline.stats import SufficientStats


def draw(rng: np.random.Generator, shape: tuple[int, int], mean: float, sd: float, dist: str) -> np.ndarray:
    if dist == "normal":
        return rng.normal(mean, sd, size=shape)
    if dist == "t3":  # heavy tails, rescaled to the requested sd
        return mean + rng.standard_t(3, size=shape) * sd / math.sqrt(3.0)
    raise ValueError(dist)


class Rules:
    """Per-look critical values for all rules (they depend on n only)."""

    def __init__(self, ns: np.ndarray, policy: EvaluationPolicy):
        self.ns = ns
        a = policy.alpha
        n_tune = policy.tuning_samples()
        rho = st.mixture_rho(n_tune, a)
        rho1 = st.mixture_rho(n_tune, 2 * policy.drift_alpha)
        self.t_crit = sps.t.ppf(1 - a / 2, ns - 1)
        # Half-widths in units of sd: hw = sd * k(n)
        self.cs_k = np.array([st.normal_mixture_bound(n, a, rho) for n in ns]) / ns
        self.drift_k = np.array([st.one_sided_normal_mixture_bound(n, policy.drift_alpha, rho1) for n in ns]) / ns
        self.n_tune = n_tune


def moments(c1: np.ndarray, c2: np.ndarray, ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = c1 / ns
    var = np.maximum((c2 - c1 * c1 / ns) / (ns - 1), 0.0)
    return mean, np.sqrt(var)


def simulate(args, rng, effect: float, rules: Rules, policy: EvaluationPolicy, check: int = 0) -> dict:
    """Continuous monitoring of ``args.experiments`` experiments with true mean ``effect``."""
    ns = rules.ns
    out = {
        "fixed_any": 0, "fixed_win": 0, "default_any": 0, "default_win": 0, "default_loss": 0,
        "drift_default": 0, "drift_fixed2sigma": 0, "gs_any": 0,
        "first_win_n": [], "checked": 0, "mismatch": 0,
    }
    gs = None
    if args.gs_looks:
        gs_ns = np.linspace(args.max_pairs / args.gs_looks, args.max_pairs, args.gs_looks).round().astype(int)
        gs_b = np.array(st.group_sequential_boundaries(gs_ns / args.max_pairs, policy.alpha))
        gs = (gs_ns, gs_b)
    done = 0
    while done < args.experiments:
        m = min(args.chunk, args.experiments - done)
        x = draw(rng, (m, args.max_pairs), effect, args.sd, args.dist)
        c1 = np.cumsum(x, axis=1)
        c2 = np.cumsum(x * x, axis=1)
        s1, s2 = c1[:, ns - 1], c2[:, ns - 1]
        mean, sd = moments(s1, s2, ns)
        se = sd / np.sqrt(ns)
        fixed_lo, fixed_hi = mean - rules.t_crit * se, mean + rules.t_crit * se
        cs_lo, cs_hi = mean - rules.cs_k * sd, mean + rules.cs_k * sd
        fixed_dec = (fixed_lo > 0) | (fixed_hi < 0)
        win = cs_lo > 0
        loss = cs_hi < 0
        drift = (mean + rules.drift_k * sd < 0) | loss
        out["fixed_any"] += int(fixed_dec.any(axis=1).sum())
        out["fixed_win"] += int((fixed_lo > 0).any(axis=1).sum())
        out["default_any"] += int((win | loss).any(axis=1).sum())
        out["default_win"] += int(win.any(axis=1).sum())
        out["default_loss"] += int(loss.any(axis=1).sum())
        out["drift_default"] += int(drift.any(axis=1).sum())
        # Spec literal: mean < -2 SE (or control wins), re-checked at every look.
        out["drift_fixed2sigma"] += int(((mean < -2 * se) | (fixed_hi < 0)).any(axis=1).sum())
        has_win = win.any(axis=1)
        first = np.where(has_win, ns[np.argmax(win, axis=1)], 0)
        out["first_win_n"].extend(first[has_win].tolist())
        if gs is not None:
            gs_ns, gs_b = gs
            gm, gsd = moments(c1[:, gs_ns - 1], c2[:, gs_ns - 1], gs_ns)
            z = gm / (gsd / np.sqrt(gs_ns))
            out["gs_any"] += int((np.abs(z) >= gs_b).any(axis=1).sum())
        # Cross-check a few cells against the library's evaluate().
        for _ in range(check if done == 0 else 0):
            i, j = int(rng.integers(m)), int(rng.integers(len(ns)))
            ev = evaluate(SufficientStats(int(ns[j]), float(s1[i, j]), float(s2[i, j])), policy)
            expected = "variant_wins" if win[i, j] else "control_wins" if loss[i, j] else "inconclusive"
            out["checked"] += 1
            out["mismatch"] += int(ev.verdict != expected or ev.drift_signalled != bool(drift[i, j]))
        done += m
    return out


def coverage(args, rng, policy: EvaluationPolicy) -> dict:
    n, reps = args.coverage_n, args.coverage_reps
    hits_t = hits_cs = hits_cs_all = 0
    ns = np.arange(policy.min_samples_for_decision, n + 1, args.look_every)
    rules = Rules(ns, policy)
    mu = 1.5  # a non-zero true mean, so coverage is not confused with the A/A test
    done = 0
    while done < reps:
        m = min(args.chunk * 4, reps - done)
        x = draw(rng, (m, n), mu, args.sd, args.dist)
        c1, c2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
        mean, sd = moments(c1[:, -1], c2[:, -1], np.array(n))
        hw_t = sps.t.ppf(1 - policy.alpha / 2, n - 1) * sd / math.sqrt(n)
        hits_t += int((np.abs(mean - mu) <= hw_t).sum())
        hits_cs += int((np.abs(mean - mu) <= rules.cs_k[-1] * sd).sum())
        lm, lsd = moments(c1[:, ns - 1], c2[:, ns - 1], ns)
        hits_cs_all += int((np.abs(lm - mu) <= rules.cs_k * lsd).all(axis=1).sum())
        done += m
    return {"fixed": hits_t / reps, "cs_at_n": hits_cs / reps, "cs_all_looks": hits_cs_all / reps, "looks": len(ns)}


def pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def binom_ci(k: int, n: int) -> str:
    lo, hi = sps.binomtest(k, n).proportion_ci(0.95, method="wilson") if n else (math.nan, math.nan)
    return f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", type=int, default=1000, help="A/A (and effect) experiments (default 1000)")
    p.add_argument("--max-pairs", type=int, default=5000, help="pairs per experiment (default 5000)")
    p.add_argument("--look-every", type=int, default=10, help="evaluate after every k new pairs (default 10)")
    p.add_argument("--min-samples", type=int, default=100, help="min_samples_for_decision (default 100)")
    p.add_argument("--n-tune", type=int, default=None, help="expected_samples (default: the policy default)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--sd", type=float, default=10.0, help="sd of the paired deltas, bps (default 10)")
    p.add_argument("--effect", type=float, default=3.0, help="true effect for the power run, bps (default 3)")
    p.add_argument("--coverage-n", type=int, default=500)
    p.add_argument("--coverage-reps", type=int, default=10000)
    p.add_argument("--gs-looks", type=int, default=5, help="also simulate a K-look O'Brien-Fleming design (0: skip)")
    p.add_argument("--dist", choices=["normal", "t3"], default="normal")
    p.add_argument("--chunk", type=int, default=250, help="experiments simulated at once (memory)")
    p.add_argument("--check", type=int, default=300, help="cells re-evaluated with verdict.evaluate()")
    p.add_argument("--seed", type=int, default=20260501)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    policy = EvaluationPolicy(min_samples_for_decision=args.min_samples, alpha=args.alpha, expected_samples=args.n_tune)
    ns = np.arange(args.min_samples, args.max_pairs + 1, args.look_every)
    rules = Rules(ns, policy)
    E = args.experiments

    print(f"calibration: {E} experiments x {args.max_pairs} pairs, evaluated every {args.look_every} pairs "
          f"from n={args.min_samples} ({len(ns)} looks); deltas {args.dist}, sd {args.sd} bps; alpha {args.alpha}; "
          f"confidence sequence tuned at n={rules.n_tune}; seed {args.seed}")

    aa = simulate(args, rng, 0.0, rules, policy, check=args.check)
    print("\nA/A (true effect 0), continuous monitoring  [rate, 95% CI]")
    print(f"  false verdict, fixed-horizon rule (t CI at every look) {pct(aa['fixed_any'] / E)}  {binom_ci(aa['fixed_any'], E)}")
    ok = aa["default_any"] / E <= 0.05
    print(f"  false verdict, default always-valid rule              {pct(aa['default_any'] / E)}  {binom_ci(aa['default_any'], E)}"
          f"  target <= 5%: {'PASS' if ok else 'FAIL'}")
    print(f"      of which variant_wins {pct(aa['default_win'] / E)}, control_wins {pct(aa['default_loss'] / E)}")
    ok_d = aa["drift_default"] / E <= 0.025
    print(f"  false drift signal, default rule                      {pct(aa['drift_default'] / E)}  {binom_ci(aa['drift_default'], E)}"
          f"  target <= 2.5%: {'PASS' if ok_d else 'FAIL'}")
    print(f"  false drift signal, spec 2-sigma rule at every look   {pct(aa['drift_fixed2sigma'] / E)}  {binom_ci(aa['drift_fixed2sigma'], E)}")
    if args.gs_looks:
        print(f"  false verdict, O'Brien-Fleming {args.gs_looks} equal looks         {pct(aa['gs_any'] / E)}  {binom_ci(aa['gs_any'], E)}")
    print(f"  check: {aa['checked']} cells re-evaluated with verdict.evaluate(), {aa['mismatch']} mismatches")

    cov = coverage(args, rng, policy)
    ok_c = abs(cov["fixed"] - (1 - args.alpha)) <= 0.015
    print(f"\ncoverage at fixed n={args.coverage_n} ({args.coverage_reps} reps, true mean 1.5 bps)")
    print(f"  fixed-horizon t CI                       {pct(cov['fixed'])}  target 95% +/- 1.5%: {'PASS' if ok_c else 'FAIL'}")
    print(f"  confidence sequence at n                 {pct(cov['cs_at_n'])}  (conservative at a single n by design)")
    print(f"  confidence sequence, all {cov['looks']} looks to n   {pct(cov['cs_all_looks'])}  (time-uniform, >= 95%)")

    pw = simulate(args, rng, args.effect, rules, policy)
    first = np.array(pw["first_win_n"])
    print(f"\npower, true effect +{args.effect} bps, sd {args.sd} ({E} experiments)")
    n_fixed = max(args.min_samples, st.required_sample_size(args.effect, args.sd, args.alpha, 0.8))
    horizons = sorted({args.min_samples, n_fixed, 200, 300, 500, 1000, args.max_pairs} & set(range(args.min_samples, args.max_pairs + 1)))
    for h in horizons:
        sim = (first <= h).sum() / E if first.size else 0.0
        print(f"  default rule, variant_wins by n={h:<5d} (continuous monitoring)  {pct(sim)}"
              f"   fixed-horizon t-test, single look at n={h}: {pct(st.power_at(h, args.effect, args.sd, args.alpha))}")
    print(f"  default rule, variant_wins by the horizon n={args.max_pairs}: {pct(pw['default_win'] / E)}; "
          f"wrong-direction verdicts {pct(pw['default_loss'] / E)}; median n at verdict "
          f"{int(np.median(first)) if first.size else 'n/a'}")
    print(f"  fixed-horizon rule re-checked at every look, variant_wins by n={args.max_pairs}: {pct(pw['fixed_win'] / E)}")
    print(f"  (80%-power fixed-horizon design for +{args.effect} bps: n={n_fixed}; "
          f"always-valid single-look 80% n={st.required_sample_size(args.effect, args.sd, args.alpha, 0.8, method='always_valid', n_tune=rules.n_tune)})")
    print(f"\nelapsed {time.perf_counter() - t0:.1f} s")
    return 0 if (ok and ok_d and ok_c and aa["mismatch"] == 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
