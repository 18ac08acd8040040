"""Adaptive allocation by simulation: regret against a fixed split, share bounds, and the coverage of the final
IPW / AIPW effect estimates under adaptive allocation.

Each simulated limited-live experiment has a control and treatments with known mean edges (bps) and normal noise.
Units arrive in batches; before each batch the allocation is recomputed from the arms' outcomes so far
(``stages.design.allocation.recommend_allocation``: Thompson probabilities, 5% floor per arm, PoLB cap on the
treatments' total), units are assigned at random with those shares and the propensity of each unit's arm is
logged. The fixed split is the declared one (the cap shared equally by the treatments). At the end the effect of
every treatment against control is estimated with ``causal.adaptive.adaptive_effects`` (Hajek IPW and
history-only AIPW) and its 95% CI checked against the truth; the naive difference of means is shown for contrast.

Regret: sum over units of (best arm mean - mean of the unit's arm), the best arm being the best the cap allows
(the control plus the cap on the best treatment).

The pipeline's deciding CI for an experiment that declares adaptive allocation is that AIPW estimate widened to the
always-valid footing (``verdict.assembly``, basis ``aipw_adaptive_always_valid``), looked at after every batch:
the benchmark reports how often it covers the truth at *every* look, and how often the propensity check
(``causal.adaptive.propensity_check``, the sample-ratio check of adaptive allocation) raises a false alarm at the
end when the logging is correct.

    python benchmarks/adaptive_allocation.py                  # 400 experiments, 3 arms, 40 batches of 250
    python benchmarks/adaptive_allocation.py --sims 100 --batches 20   # quick
    python benchmarks/adaptive_allocation.py --means 0 0 0          # all null: coverage of zero effects
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from experimenttracker_pipeline.causal.adaptive import adaptive_effects, propensity_check
from experimenttracker_pipeline.stages.design.allocation import ArmStats, recommend_allocation
from experimenttracker_pipeline.stages.verdict.assembly import _always_valid_from_estimate  # the verdict's widening
from experimenttracker_pipeline.stages.verdict.rule import EvaluationPolicy


def best_capped_mean(means: np.ndarray, cap: float) -> float:
    """Mean outcome of the best allocation the cap allows (control first in ``means``)."""
    best_t = means[1:].max()
    return float(max(means[0], cap * best_t + (1 - cap) * means[0]))


def simulate(means, sd, batches, batch, cap_bp, floor, rng, seed):
    k = len(means)
    arms = ["control"] + [f"t{i}" for i in range(1, k)]
    assigned, ys, es = [], [], []
    shares_seen = []
    sums = np.zeros(k)
    sq = np.zeros(k)
    counts = np.zeros(k)
    for b in range(batches):
        stats = []
        for j, name in enumerate(arms):
            n = int(counts[j])
            mean = sums[j] / n if n else 0.0
            var = (sq[j] - n * mean * mean) / (n - 1) if n > 1 else 0.0
            stats.append(ArmStats(name, n, mean, max(var, 0.0)))
        rec = recommend_allocation(stats, control="control", cap_bp=cap_bp, floor=floor, draws=4000, seed=seed * 1000 + b)
        p = np.array([rec.shares_bp[a] for a in arms]) / 10_000
        shares_seen.append(p)
        a = rng.choice(k, size=batch, p=p)
        y = rng.normal(np.asarray(means)[a], sd)
        np.add.at(sums, a, y)
        np.add.at(sq, a, y * y)
        np.add.at(counts, a, 1)
        assigned.append(a)
        ys.append(y)
        es.append(p[a])
    a = np.concatenate(assigned)
    return arms, a, np.concatenate(ys), np.concatenate(es), np.array(shares_seen)


def fixed_split(k: int, cap_bp: int) -> np.ndarray:
    t = cap_bp / 10_000 / (k - 1)
    return np.array([1 - t * (k - 1)] + [t] * (k - 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=400)
    ap.add_argument("--means", type=float, nargs="+", default=[0.0, 1.0, -1.0], help="control first (bps)")
    ap.add_argument("--sd", type=float, default=10.0)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--cap-bp", type=int, default=5000)
    ap.add_argument("--floor", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tune-n", type=int, default=100,
                    help="samples the always-valid boundary is tuned at (the default min_samples_for_decision)")
    args = ap.parse_args()
    policy = EvaluationPolicy(min_samples_for_decision=args.tune_n)
    means = np.asarray(args.means)
    k = len(means)
    rng = np.random.default_rng(args.seed)
    cap = args.cap_bp / 10_000
    best = best_capped_mean(means, cap)
    fixed = fixed_split(k, args.cap_bp)
    n_units = args.batches * args.batch
    regret_fixed = n_units * (best - float(fixed @ means))
    regrets, cover = [], {m: np.zeros(k - 1) for m in ("ipw", "aipw", "naive")}
    bias = {m: np.zeros(k - 1) for m in ("ipw", "aipw", "naive")}
    width = {m: np.zeros(k - 1) for m in ("ipw", "aipw")}
    min_share, max_treat_total, min_logged = 1.0, 0.0, 1.0
    covered_every_look, check_alarms = np.zeros(k - 1), 0
    t0 = time.perf_counter()
    for s in range(args.sims):
        arms, a, y, e, shares = simulate(means, args.sd, args.batches, args.batch, args.cap_bp, args.floor, rng, s)
        regrets.append(float(np.sum(best - means[a])))
        min_share = min(min_share, float(shares.min()))
        max_treat_total = max(max_treat_total, float(shares[:, 1:].sum(axis=1).max()))
        min_logged = min(min_logged, float(e.min()))
        labels = [arms[i] for i in a]
        effects = adaptive_effects(labels, y, e, control="control", order=np.arange(len(a)))
        check_alarms += propensity_check(labels, e)["mismatch"]
        every = np.ones(k - 1, dtype=bool)
        for m in range(args.batch, len(a) + 1, args.batch):  # the deciding CI at every look (batch end)
            if min(np.bincount(a[:m], minlength=k)) < 2:
                continue
            looked = effects if m == len(a) else adaptive_effects(labels[:m], y[:m], e[:m], control="control",
                                                                  order=np.arange(m))
            for j in range(1, k):
                est = looked[arms[j]].aipw
                low, high = _always_valid_from_estimate(est.estimate_bps, est.se, m, policy)
                every[j - 1] &= low <= means[j] - means[0] <= high
        covered_every_look += every
        for j in range(1, k):
            truth = means[j] - means[0]
            eff = effects[arms[j]]
            for name in ("ipw", "aipw", "naive"):
                est = getattr(eff, name)
                cover[name][j - 1] += est.covers(truth)
                bias[name][j - 1] += est.estimate_bps - truth
            for name in ("ipw", "aipw"):
                est = getattr(eff, name)
                width[name][j - 1] += est.ci_95_high - est.ci_95_low
    dt = time.perf_counter() - t0
    S = args.sims
    print(f"adaptive allocation: {S} experiments, arms {[float(m) for m in means]} bps (control first), sd {args.sd}, "
          f"{args.batches} batches x {args.batch} units, PoLB cap {args.cap_bp} bp, floor {args.floor:.0%}  ({dt:.1f} s)")
    print(f"regret (units x bps vs the best capped allocation): adaptive mean {np.mean(regrets):.0f} "
          f"(median {np.median(regrets):.0f}), fixed split {fixed.round(3).tolist()} {regret_fixed:.0f}; "
          f"adaptive / fixed = {np.mean(regrets) / regret_fixed if regret_fixed else float('nan'):.2f}")
    print(f"share bounds: smallest recommended share {min_share:.4f} (floor {args.floor}), largest treatment total "
          f"{max_treat_total:.4f} (cap {cap}), smallest logged propensity {min_logged:.4f}: "
          f"{'respected' if min_share >= args.floor - 1e-12 and max_treat_total <= cap + 1e-12 else 'VIOLATED'}")
    mc = np.sqrt(0.95 * 0.05 / S)
    print(f"95% CI coverage of each treatment's effect (Monte Carlo SE {mc:.3f}; target 0.93-0.97):")
    print(f"{'arm':>4} {'truth':>6} {'ipw cov':>8} {'aipw cov':>9} {'naive cov':>10} {'ipw bias':>9} {'aipw bias':>10} "
          f"{'naive bias':>11} {'ipw width':>10} {'aipw width':>11}")
    for j in range(1, k):
        print(f"t{j:<3} {means[j] - means[0]:>6.2f} {cover['ipw'][j - 1] / S:>8.3f} {cover['aipw'][j - 1] / S:>9.3f} "
              f"{cover['naive'][j - 1] / S:>10.3f} {bias['ipw'][j - 1] / S:>9.3f} {bias['aipw'][j - 1] / S:>10.3f} "
              f"{bias['naive'][j - 1] / S:>11.3f} {width['ipw'][j - 1] / S:>10.3f} {width['aipw'][j - 1] / S:>11.3f}")
    print(f"deciding CI (AIPW, always-valid, tuned at n={args.tune_n}) covering the truth at every one of "
          f"{args.batches} looks: " + ", ".join(f"t{j} {covered_every_look[j - 1] / S:.3f}" for j in range(1, k))
          + " (target >= 0.95)")
    print(f"propensity check false alarms (alpha 0.001, correct logging): {check_alarms}/{S} = {check_alarms / S:.3f}")


if __name__ == "__main__":
    main()
