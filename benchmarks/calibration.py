"""Calibration of the verdict and drift rules under continuous monitoring.

Simulates matched-pair A/A experiments (true effect 0), evaluates them after every ``--look-every`` new pairs
(as the sensor does) and prints, with 95% Wilson intervals, the false-verdict and false-drift rates of:

* the default always-valid rule on normal, t3 and lognormal deltas (skewness 6.2, and 33);
* a group-sequential design whose evaluations continue to twice its plan;
* a fixed-horizon design (evaluated at every look, tested once at its plan), with the coverage of its t CI;
* the always-valid rule with ``min_samples_for_decision`` at its floor, evaluated after every pair;
* two primary metrics (Holm on always-valid p-values) and three treatments sharing one control (Holm across
  treatments, drift alpha split over them), through the goal surface's pure functions;

plus the two simulations that chose constants: the floor on ``min_samples_for_decision`` (miss rate by first
look and tuning) and the skewness hold (false verdicts by the constant c in n >= c g1^2), and the power of the
default rule. Each scenario's rules are vectorised over experiments with cumulative sums; a random sample of
cells is re-evaluated with the library (``verdict.rule.evaluate``, ``verdict.surface.decide``) and must agree.
Seeded. Full size takes a few minutes on 2 cores; ``--quick`` a fraction of that.

    python benchmarks/calibration.py            # full size (1000 experiments x 5000 pairs per scenario)
    python benchmarks/calibration.py --quick    # 300 x 2000
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
from experimenttracker_pipeline.stages.verdict.rule import EvaluationPolicy, evaluate  # noqa: E402
from experimenttracker_pipeline.stages.verdict.surface import decide  # noqa: E402
from experimenttracker_pipeline.stats import SufficientStats  # noqa: E402

ALPHA = 0.05
FAILURES: list[str] = []


# ---------------------------------------------------------------------------------------------- data and rules


def draw(rng: np.random.Generator, shape, dist: str, sd: float, mean: float = 0.0) -> np.ndarray:
    """Deltas with the given mean and sd: normal, t3 (heavy tails), lognormal (right skew 6.2 or 33)."""
    if dist == "normal":
        return rng.normal(mean, sd, size=shape)
    if dist == "t3":
        return mean + rng.standard_t(3, size=shape) * sd / math.sqrt(3.0)
    if dist.startswith("lognormal"):
        s = {"lognormal": 1.0, "lognormal33": 1.5}[dist]
        z = np.exp(s * rng.normal(size=shape))
        return mean + (z - math.exp(s * s / 2)) / math.sqrt((math.exp(s * s) - 1) * math.exp(s * s)) * sd
    raise ValueError(dist)


def skew_of(dist: str) -> float:
    s = {"lognormal": 1.0, "lognormal33": 1.5}.get(dist)
    return 0.0 if s is None else (math.exp(s * s) + 2) * math.sqrt(math.exp(s * s) - 1)


def cs_k(ns: np.ndarray, n_tune: float, alpha: float = ALPHA) -> np.ndarray:
    """Two-sided confidence-sequence half-width in units of sd."""
    rho = st.mixture_rho(n_tune, alpha)
    return np.sqrt((ns + rho) * np.log((ns + rho) / (rho * alpha * alpha))) / ns


def drift_k(ns: np.ndarray, n_tune: float, drift_alpha: float) -> np.ndarray:
    """One-sided always-valid upper-bound half-width in units of sd (the drift rule)."""
    rho = st.mixture_rho(n_tune, min(2 * drift_alpha, 0.999))
    return np.array([st.one_sided_normal_mixture_bound(float(n), drift_alpha, rho) for n in ns]) / ns


def av_p(mean: np.ndarray, sd: np.ndarray, ns: np.ndarray, n_tune: float, null: float = 0.0) -> np.ndarray:
    """Always-valid p-value of mean = null (1 / normal-mixture likelihood ratio)."""
    rho = st.mixture_rho(n_tune, ALPHA)
    s = ns * (mean - null) / np.where(sd > 0, sd, np.nan)
    log_lr = 0.5 * np.log(rho / (ns + rho)) + s * s / (2 * (ns + rho))
    return np.nan_to_num(np.minimum(1.0, np.exp(-log_lr)), nan=1.0)


def moments(c1, c2, c3, ns):
    mean = c1 / ns
    m2 = np.maximum(c2 / ns - mean * mean, 0.0)
    sd = np.sqrt(m2 * ns / (ns - 1))
    g1 = None
    if c3 is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            g1 = np.nan_to_num((c3 / ns - 3 * mean * c2 / ns + 2 * mean**3) / m2**1.5)
    return mean, sd, g1


def wilson(k: int, n: int) -> tuple[float, float]:
    lo, hi = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return float(lo), float(hi)


def pct(x: float) -> str:
    return f"{100 * x:5.2f}%"


TABLE: list[str] = []


def report(name: str, verdicts: int, drifts: int | None, n: int, note: str = "") -> None:
    """A row of the A/A table: rates with Wilson intervals; PASS when the rate is <= 5%, or its interval
    reaches 5% (a test spending exactly alpha = 5% lands on either side by chance)."""
    cells = []
    ok = True
    for k in (verdicts, drifts):
        if k is None:
            cells.append(f"{'-':>24}")
            continue
        lo, hi = wilson(k, n)
        ok &= k / n <= 0.05 or lo <= 0.05
        cells.append(f"{pct(k / n)} [{100 * lo:5.2f}, {100 * hi:5.2f}]")
    status = "PASS" if ok else "FAIL"
    if not ok:
        FAILURES.append(name)
    line = f"  {name:<52} {cells[0]}   {cells[1]}   {n:>6}  {status}  {note}"
    TABLE.append(line)
    print(line, flush=True)


class Checker:
    """Re-evaluates sampled cells with the library and counts disagreements with the vectorised rule."""

    def __init__(self) -> None:
        self.checked = 0
        self.mismatches: list[str] = []

    def expect(self, what: str, got, want) -> None:
        self.checked += 1
        if got != want:
            self.mismatches.append(f"{what}: library {got!r}, vectorised {want!r}")


CHECK = Checker()


def chunks(total: int, size: int):
    done = 0
    while done < total:
        m = min(size, total - done)
        yield m
        done += m


# ---------------------------------------------------------------------------------------------- scenarios


def default_rule(args, rng, dist: str, *, policy: EvaluationPolicy | None = None, every: int | None = None,
                 max_pairs: int | None = None, experiments: int | None = None, skew_c: float | None = None) -> dict:
    """The default always-valid rule (with the skew hold) under continuous monitoring."""
    policy = policy or EvaluationPolicy()
    N = max_pairs or args.max_pairs
    E = experiments or args.experiments
    ns = np.arange(policy.min_samples_for_decision, N + 1, every or args.look_every)
    n_tune = policy.tuning_samples()
    k_cs, k_drift = cs_k(ns, n_tune), drift_k(ns, n_tune, policy.drift_alpha)
    c_skew = st.SKEW_SAMPLES_PER_G1SQ if skew_c is None else skew_c
    out = {"verdict": 0, "drift": 0, "win": 0, "loss": 0, "first_win": []}
    first = True
    for m in chunks(E, args.chunk):
        x = draw(rng, (m, N), dist, args.sd)
        c1, c2, c3 = (np.cumsum(x**p, axis=1)[:, ns - 1] for p in (1, 2, 3))
        mean, sd, g1 = moments(c1, c2, c3, ns)
        held = ns < np.ceil(c_skew * g1 * g1)
        win, loss = (mean - k_cs * sd > 0) & ~held, (mean + k_cs * sd < 0) & ~held
        drift = ((mean + k_drift * sd < 0) | loss) & ~held
        out["verdict"] += int((win | loss).any(axis=1).sum())
        out["win"] += int(win.any(axis=1).sum())
        out["loss"] += int(loss.any(axis=1).sum())
        out["drift"] += int(drift.any(axis=1).sum())
        has = win.any(axis=1)
        out["first_win"] += ns[np.argmax(win, axis=1)][has].tolist()
        if first and skew_c is None:
            for i, j in zip(rng.integers(0, m, args.check), rng.integers(0, ns.size, args.check)):
                ev = evaluate(SufficientStats(int(ns[j]), float(c1[i, j]), float(c2[i, j]), 0.0, float(c3[i, j])), policy)
                want = "variant_wins" if win[i, j] else "control_wins" if loss[i, j] else None
                got = ev.verdict if ev.verdict in ("variant_wins", "control_wins") else None
                CHECK.expect(f"default {dist} n={ns[j]}", (got, ev.drift_signalled), (want, bool(drift[i, j])))
        first = False
    out["E"] = E
    return out


def planned_design(args, rng, method: str) -> dict:
    """A group-sequential (5 looks) or fixed-horizon design planned at ``--plan`` pairs, evaluated every
    ``--look-every`` pairs to twice the plan: the verdict reads the planned looks only; drift is the always-valid
    rule on all the data (group-sequential) or the 2-sigma rule at the planned look (fixed horizon)."""
    plan = args.plan
    looks = 5 if method == "group_sequential" else None
    policy = EvaluationPolicy(ci_method=method, planned_max_samples=plan, planned_looks=looks)
    design = policy.design()
    E = args.experiments * 4  # a design spends exactly alpha: more experiments tell 5% from 6%
    ns = np.arange(policy.min_samples_for_decision, 2 * plan + 1, args.look_every)
    n_tune = policy.tuning_samples()
    k_drift = drift_k(ns, n_tune, policy.drift_alpha)
    out = {"verdict": 0, "drift": 0, "E": E}
    first = True
    for m in chunks(E, args.chunk):
        x = draw(rng, (m, 2 * plan), "normal", args.sd)
        c1, c2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
        crossed = np.zeros(m, bool)
        direction = np.zeros(m)
        look_stats = []
        for k, n_k in enumerate(design.look_samples, start=1):
            mean, sd, _ = moments(c1[:, n_k - 1], c2[:, n_k - 1], None, n_k)
            t = mean / (sd / math.sqrt(n_k))
            new = ~crossed & (np.abs(t) >= design.t_bound(k, n_k - 1))
            direction = np.where(new, np.sign(t), direction)
            crossed |= new
            look_stats.append((n_k, mean, sd))
        out["verdict"] += int(crossed.sum())
        if method == "fixed_horizon":
            n_k, mean, sd = look_stats[-1]
            drift = (mean + 2 * sd / math.sqrt(n_k) < 0) | (crossed & (direction < 0))
        else:
            mean, sd, _ = moments(c1[:, ns - 1], c2[:, ns - 1], None, ns)
            drift = ((mean + k_drift * sd < 0).any(axis=1)) | (crossed & (direction < 0))
        out["drift"] += int(drift.sum())
        if first:
            for i, n in zip(rng.integers(0, m, args.check), rng.choice(ns, args.check)):
                reached = design.looks_reached(int(n))
                ls = [SufficientStats(n_k, float(c1[i, n_k - 1]), float(c2[i, n_k - 1])) for n_k in design.look_samples[:reached]]
                ev = evaluate(SufficientStats(int(n), float(c1[i, n - 1]), float(c2[i, n - 1])), policy, look_stats=ls)
                # The vectorised verdict is the final one: at n it is known only if the crossing look was reached.
                cross_look = next((k for k, (n_k, mu, s) in enumerate(look_stats, start=1)
                                   if abs(mu[i] / (s[i] / math.sqrt(n_k))) >= design.t_bound(k, n_k - 1)), None)
                want = (cross_look is not None and cross_look <= reached)
                CHECK.expect(f"{method} n={n}", ev.is_decision, bool(want))
        first = False
    return out


def fixed_coverage(args, rng) -> float:
    """Coverage of the fixed-horizon design's deciding interval (the t CI of the first N pairs), true mean 1.5."""
    N, mu, hits = args.plan, 1.5, 0
    for m in chunks(args.coverage_reps, args.chunk * 4):
        x = draw(rng, (m, N), "normal", args.sd, mu)
        mean, sd = x.mean(axis=1), x.std(axis=1, ddof=1)
        hits += int((np.abs(mean - mu) <= sps.t.ppf(1 - ALPHA / 2, N - 1) * sd / math.sqrt(N)).sum())
    return hits / args.coverage_reps


def floor_table(args, rng) -> tuple[dict, list[int], list]:
    """Miss rate of the confidence sequence evaluated after every pair from n0 to ``--floor-pairs`` (A/A normal),
    by first look n0 and tuning: the simulation that chose ALWAYS_VALID_MIN_SAMPLES."""
    n0s = [2, 5, 10, 15, 20, 30]
    tunings = ["n0", 100, 1000, 10000]
    N = args.floor_pairs
    hits = {(n0, t): 0 for n0 in n0s for t in tunings}
    ns = np.arange(1, N + 1)
    for m in chunks(args.floor_reps, args.chunk * 4):
        x = rng.normal(0, 1, (m, N))
        c1, c2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = c1 / ns
            sd = np.sqrt(np.maximum(c2 - ns * mean * mean, 0) / (ns - 1))
        for n0 in n0s:
            sl = slice(n0 - 1, N)
            for t in tunings:
                k = cs_k(ns[sl], n0 if t == "n0" else t)
                hits[(n0, t)] += int((np.abs(mean[:, sl]) > k * sd[:, sl]).any(axis=1).sum())
    return hits, n0s, tunings


def two_primaries(args, rng) -> dict:
    """Two primary metrics (edge and fill quality, correlation 0.5) judged together: Holm on their always-valid
    p-values at every look; a win needs one better and none worse (the surface's rule)."""
    raw = {"experiment_id": "bench", "principal": "desk:bench", "variant_slug": "v", "control_slug": "c",
           "started_at": "2026-05-01T00:00:00Z",
           "eval_surface": {"objectives": {"primary": [{"name": "edge_delta_bps", "weight_bp": 10000},
                                                       {"name": "fill_quality_delta", "weight_bp": 5000}]}}}
    contract = parse_experiment(raw, "benchmark").contract
    policy = EvaluationPolicy()
    ns = np.arange(policy.min_samples_for_decision, args.max_pairs + 1, args.look_every)
    n_tune = policy.tuning_samples()
    k_cs, k_drift = cs_k(ns, n_tune), drift_k(ns, n_tune, policy.drift_alpha)
    out = {"verdict": 0, "drift": 0, "any_rejection": 0, "E": args.experiments}
    first = True
    for m in chunks(args.experiments, args.chunk):
        z1 = rng.normal(size=(m, args.max_pairs))
        z2 = 0.5 * z1 + math.sqrt(0.75) * rng.normal(size=(m, args.max_pairs))
        stats = []
        for z in (z1 * args.sd, z2 * 0.05):
            c1, c2 = np.cumsum(z, axis=1)[:, ns - 1], np.cumsum(z * z, axis=1)[:, ns - 1]
            mean, sd, _ = moments(c1, c2, None, ns)
            stats.append((c1, c2, mean, sd, av_p(mean, sd, ns, n_tune)))
        p1, p2 = stats[0][4], stats[1][4]
        lo, hi = np.minimum(p1, p2), np.maximum(p1, p2)
        holm_lo, holm_hi = np.minimum(1, 2 * lo), np.maximum(np.minimum(1, 2 * lo), hi)
        rej1 = np.where(p1 <= p2, holm_lo, holm_hi) <= ALPHA
        rej2 = np.where(p1 <= p2, holm_hi, holm_lo) <= ALPHA
        up1, up2 = stats[0][2] > 0, stats[1][2] > 0
        better = (rej1 & up1).astype(int) + (rej2 & up2)
        worse = (rej1 & ~up1).astype(int) + (rej2 & ~up2)
        win, loss = (better > 0) & (worse == 0), (worse > 0) & (better == 0)
        out["verdict"] += int((win | loss).any(axis=1).sum())
        out["any_rejection"] += int((rej1 | rej2).any(axis=1).sum())
        mean, sd = stats[0][2], stats[0][3]
        # Drift: the edge's own rule (one-sided bound, or its interval below 0) or a family-wise control_wins.
        out["drift"] += int(((mean + k_drift * sd < 0) | (mean + k_cs * sd < 0) | loss).any(axis=1).sum())
        if first:
            for i, j in zip(rng.integers(0, m, args.check), rng.integers(0, ns.size, args.check)):
                cis = {}
                for name, (c1, c2, *_rest) in zip(("edge_delta_bps", "fill_quality_delta"), stats):
                    cs = st.confidence_sequence(SufficientStats(int(ns[j]), float(c1[i, j]), float(c2[i, j])), n_tune=n_tune)
                    cis[name] = {"estimate": cs.estimate, "ci_95_low": cs.low, "ci_95_high": cs.high, "n": int(ns[j]),
                                 "p_value": cs.p_value}
                got = decide(contract, cis).variant(contract.treatments[0].id).stat_verdict
                want = "variant_wins" if win[i, j] else "control_wins" if loss[i, j] else "inconclusive"
                CHECK.expect(f"two primaries n={ns[j]}", got, want)
        first = False
    return out


def three_treatments(args, rng) -> dict:
    """Three treatments against one shared control (deltas correlated 0.5): Holm across the treatments' always-valid
    p-values for the verdict, drift alpha split three ways."""
    raw = {"experiment_id": "bench", "principal": "desk:bench", "variant_slug": "a", "control_slug": "c",
           "started_at": "2026-05-01T00:00:00Z",
           "traffic_split_pct": 30,
           "variants": {"control": {"slug": "c", "traffic_share_bp": 7000},
                        "a": {"slug": "a", "traffic_share_bp": 1000}, "b": {"slug": "b", "traffic_share_bp": 1000},
                        "d": {"slug": "d", "traffic_share_bp": 1000}}}
    contract = parse_experiment(raw, "benchmark").contract
    ids = [v.id for v in contract.treatments]
    policy = EvaluationPolicy(treatments=3)
    ns = np.arange(policy.min_samples_for_decision, args.max_pairs + 1, args.look_every)
    n_tune = policy.tuning_samples()
    k_drift = drift_k(ns, n_tune, policy.drift_alpha / 3)
    out = {"verdict": 0, "drift": 0, "E": args.experiments}
    first = True
    for m in chunks(args.experiments, args.chunk):
        control = rng.normal(0, args.sd / math.sqrt(2), (m, args.max_pairs))
        per = []
        for _ in ids:
            d = rng.normal(0, args.sd / math.sqrt(2), (m, args.max_pairs)) - control
            c1, c2 = np.cumsum(d, axis=1)[:, ns - 1], np.cumsum(d * d, axis=1)[:, ns - 1]
            mean, sd, _ = moments(c1, c2, None, ns)
            per.append((c1, c2, mean, sd, av_p(mean, sd, ns, n_tune)))
        p = np.stack([q[4] for q in per])  # (3, m, looks)
        order = np.sort(p, axis=0)
        adj_sorted = np.maximum.accumulate(np.minimum(1, order * np.array([3, 2, 1])[:, None, None]), axis=0)
        ranks = np.argsort(np.argsort(p, axis=0), axis=0)
        adjusted = np.take_along_axis(adj_sorted, ranks, axis=0)
        rejected = adjusted <= ALPHA
        decided = rejected.any(axis=0)
        out["verdict"] += int(decided.any(axis=1).sum())
        drift = np.zeros((m, ns.size), bool)
        for t, (_, _, mean, sd, _) in enumerate(per):
            drift |= (mean + k_drift * sd < 0) | (rejected[t] & (mean < 0))
        out["drift"] += int(drift.any(axis=1).sum())
        if first:
            for i, j in zip(rng.integers(0, m, args.check), rng.integers(0, ns.size, args.check)):
                outcomes, drift_lib = {}, False
                for vid, (c1, c2, *_rest) in zip(ids, per):
                    s = SufficientStats(int(ns[j]), float(c1[i, j]), float(c2[i, j]))
                    cs = st.confidence_sequence(s, n_tune=n_tune)
                    outcomes[vid] = {"edge_delta_bps": {"estimate": cs.estimate, "ci_95_low": cs.low,
                                                        "ci_95_high": cs.high, "n": s.n, "p_value": cs.p_value}}
                    drift_lib |= evaluate(s, policy).drift_bound < 0
                d = decide(contract, outcomes)
                got = any(v.stat_verdict in ("variant_wins", "control_wins") for v in d.variants)
                drift_lib |= any(v.stat_verdict == "control_wins" for v in d.variants)
                CHECK.expect(f"three treatments n={ns[j]}", (got, drift_lib), (bool(decided[i, j]), bool(drift[i, j])))
        first = False
    return out


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller counts (300 x 2000; figures are noisier)")
    p.add_argument("--experiments", type=int, default=None, help="A/A experiments per scenario (default 1000)")
    p.add_argument("--max-pairs", type=int, default=None, help="pairs per experiment (default 5000)")
    p.add_argument("--plan", type=int, default=None, help="planned_max_samples of the designs (default 2000)")
    p.add_argument("--look-every", type=int, default=10, help="evaluate after every k new pairs (default 10)")
    p.add_argument("--sd", type=float, default=10.0, help="sd of the paired deltas, bps (default 10)")
    p.add_argument("--effect", type=float, default=3.0, help="true effect for the power run, bps (default 3)")
    p.add_argument("--coverage-reps", type=int, default=None)
    p.add_argument("--floor-reps", type=int, default=None)
    p.add_argument("--floor-pairs", type=int, default=None)
    p.add_argument("--chunk", type=int, default=250, help="experiments simulated at once (memory)")
    p.add_argument("--check", type=int, default=30, help="cells re-evaluated with the library per scenario")
    p.add_argument("--seed", type=int, default=20260501)
    args = p.parse_args(argv)
    q = args.quick
    args.experiments = args.experiments or (300 if q else 1000)
    args.max_pairs = args.max_pairs or (2000 if q else 5000)
    args.plan = args.plan or (1000 if q else 2000)
    args.coverage_reps = args.coverage_reps or (3000 if q else 10000)
    args.floor_reps = args.floor_reps or (4000 if q else 20000)
    args.floor_pairs = args.floor_pairs or (400 if q else 1000)

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    default = EvaluationPolicy()
    print(f"calibration: A/A experiments of {args.max_pairs} pairs (designs: plan {args.plan}, evaluated to "
          f"{2 * args.plan}), evaluated every {args.look_every} pairs from min_samples_for_decision; deltas sd "
          f"{args.sd} bps; alpha {ALPHA}, drift alpha {default.drift_alpha}; default tuning n={default.tuning_samples()}; "
          f"seed {args.seed}{' (quick)' if q else ''}")
    print("\nA/A under continuous monitoring                           false verdict [95% Wilson]    "
          "false drift [95% Wilson]   experiments")
    for dist, label in (("normal", "normal"), ("t3", "t3 (heavy tails)"), ("lognormal", "lognormal, skewness 6.2"),
                        ("lognormal33", "lognormal, skewness 33")):
        r = default_rule(args, rng, dist)
        report(f"default rule, {label} deltas", r["verdict"], r["drift"], r["E"])
    for method in ("group_sequential", "fixed_horizon"):
        r = planned_design(args, rng, method)
        name = ("group-sequential, 5 looks, evaluated to 2x plan" if method == "group_sequential"
                else "fixed horizon declared, evaluated to 2x plan")
        report(name, r["verdict"], r["drift"], r["E"])
    floor = EvaluationPolicy(min_samples_for_decision=st.ALWAYS_VALID_MIN_SAMPLES)
    for dist in ("normal", "t3"):
        r = default_rule(args, rng, dist, policy=floor, every=1, max_pairs=args.floor_pairs,
                         experiments=args.floor_reps // 4)
        report(f"min_samples at its floor ({st.ALWAYS_VALID_MIN_SAMPLES}), every pair, {dist}", r["verdict"], r["drift"], r["E"],
               f"to n={args.floor_pairs}")
    r = two_primaries(args, rng)
    report("two primary metrics (Holm)", r["verdict"], r["drift"], r["E"],
           f"any rejection {pct(r['any_rejection'] / r['E'])}")
    r = three_treatments(args, rng)
    report("three treatments, shared control (Holm)", r["verdict"], r["drift"], r["E"])
    print(f"  check: {CHECK.checked} cells re-evaluated with the library, {len(CHECK.mismatches)} mismatches")
    for mm in CHECK.mismatches[:10]:
        print(f"    {mm}")

    cov = fixed_coverage(args, rng)
    ok_c = abs(cov - (1 - ALPHA)) <= 0.015
    print(f"\ncoverage of the fixed-horizon design's deciding CI (t CI of the first {args.plan} pairs, "
          f"{args.coverage_reps} reps): {pct(cov)}  target 95% +/- 1.5%: {'PASS' if ok_c else 'FAIL'}")
    if not ok_c:
        FAILURES.append("coverage")

    print(f"\nsmall n: miss rate of the confidence sequence evaluated after every pair from n0 to {args.floor_pairs} "
          f"(A/A normal, {args.floor_reps} experiments), by tuning")
    hits, n0s, tunings = floor_table(args, rng)
    print("  n0     " + "".join(f"tuned at {str(t):<8}" for t in tunings))
    for n0 in n0s:
        print(f"  {n0:<6} " + "".join(f"{pct(hits[(n0, t)] / args.floor_reps):<17}" for t in tunings))
    print(f"  -> floor ALWAYS_VALID_MIN_SAMPLES = {st.ALWAYS_VALID_MIN_SAMPLES}")

    print(f"\nskewed deltas: false verdicts of the always-valid rule held until n >= c * g1^2 "
          f"({args.experiments // 2} experiments each)")
    cs_ = [0, 25, 50, 75, 100]
    print("  deltas                   " + "".join(f"c = {c:<10}" for c in cs_))
    for dist in ("lognormal", "lognormal33"):
        rates = [default_rule(args, rng, dist, skew_c=c, experiments=args.experiments // 2) for c in cs_]
        print(f"  lognormal, skewness {skew_of(dist):4.1f} " + "".join(f"{pct(r['verdict'] / r['E']):<14}" for r in rates))
    print(f"  -> SKEW_SAMPLES_PER_G1SQ = {st.SKEW_SAMPLES_PER_G1SQ}")

    rng_p = np.random.default_rng(args.seed + 1)
    E = args.experiments
    pol = EvaluationPolicy()
    ns = np.arange(100, args.max_pairs + 1, args.look_every)
    k = cs_k(ns, pol.tuning_samples())
    first: list[int] = []
    for m in chunks(E, args.chunk):
        x = draw(rng_p, (m, args.max_pairs), "normal", args.sd, args.effect)
        mean, sd, _ = moments(np.cumsum(x, axis=1)[:, ns - 1], np.cumsum(x * x, axis=1)[:, ns - 1], None, ns)
        win = mean - k * sd > 0
        first += ns[np.argmax(win, axis=1)][win.any(axis=1)].tolist()
    first_a = np.array(first)
    print(f"\npower of the default rule, true effect +{args.effect} bps, sd {args.sd}: variant_wins by n=200 "
          f"{pct((first_a <= 200).sum() / E)}, by n=500 {pct((first_a <= 500).sum() / E)}, by n={args.max_pairs} "
          f"{pct(first_a.size / E)} (median n at the verdict {int(np.median(first_a)) if first_a.size else 'n/a'}); "
          f"a single fixed-horizon t-test at n=100: {pct(st.power_at(100, args.effect, args.sd))}")
    print(f"\nelapsed {time.perf_counter() - t0:.1f} s")
    if FAILURES or CHECK.mismatches:
        print(f"FAILED: {', '.join(FAILURES) or 'library cross-check'}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
