"""Coverage study for the causal layer (experimenttracker_pipeline.causal).

Simulates confounded limited-live experiments with a known population ATE and reports, per
sample size, the empirical coverage of the IPW and AIPW 95% CIs (target 0.93-0.97), the
bias, SE/SD calibration and how often the overlap gate fires; then times
``analyse_experiment`` on 100,000 fills.

DGP (after causal_notes.md section 2.2, with categorical covariates as the pipeline sees
them): vol, spread, momentum ~ N(0,1); liquidity = "illiquid" w.p. sigmoid(-1.5 + spread);
venue uniform over A/B/C (neutral); logit e = -0.3 + s (0.9 vol - 0.7 spread + 0.5 mom +
0.8 illiquid), s=1 good overlap, s=3 poor; mu0 = 0.5 + vol + 0.6 spread + 0.8 mom +
0.5 vol^2 - 0.3 illiquid; tau = 1 + 0.3 vol - 2 illiquid (PATE 0.5557); y = mu0 + t tau +
N(0, 2^2).  Propensity either logged (the true e) or left to be estimated.

    python benchmarks/causal_coverage.py            # 200 sims at n=500/2000/10000 + 100k runtime
    python benchmarks/causal_coverage.py --propensity logged --overlap 1 3 --n 2000
    python benchmarks/causal_coverage.py --sims 20 --n 1000 --runtime-n 20000   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd
from scipy import integrate, stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from experimenttracker_pipeline import causal  # noqa: E402
from experimenttracker_pipeline.causal import weighting  # noqa: E402


def _p_illiquid() -> float:
    f = lambda s: stats.norm.pdf(s) / (1 + np.exp(1.5 - s))  # noqa: E731
    return integrate.quad(f, -12, 12)[0]


P_ILLIQUID = _p_illiquid()


def pate(harm: float = 2.0) -> float:
    return 1.0 - harm * P_ILLIQUID


PATE = pate()


def simulate(n: int, rng: np.random.Generator, *, overlap_scale: float = 1.0, logged: bool = False,
             harm: float = 2.0):
    """One confounded experiment; returns (fills frame, true tau per unit).

    tau = 1 + 0.3 vol - harm * illiquid: harm=2 makes "liquidity=illiquid" a harmed segment
    (mean effect -1); harm=1 puts it exactly on the null (mean effect 0) to measure the
    false-flag rate; the venue segments are never harmed.
    """
    vol, spread, mom = rng.standard_normal((3, n))
    illiquid = (rng.random(n) < 1 / (1 + np.exp(1.5 - spread))).astype(float)
    venue = rng.choice(np.array(["A", "B", "C"]), n)
    lin = -0.3 + overlap_scale * (0.9 * vol - 0.7 * spread + 0.5 * mom + 0.8 * illiquid)
    e = 1 / (1 + np.exp(-lin))
    t = (rng.random(n) < e).astype(int)
    mu0 = 0.5 + vol + 0.6 * spread + 0.8 * mom + 0.5 * vol**2 - 0.3 * illiquid
    tau = 1 + 0.3 * vol - harm * illiquid
    y = mu0 + t * tau + 2.0 * rng.standard_normal(n)
    df = pd.DataFrame({
        "treatment": t, "outcome_bps": y,
        "vol": vol, "spread": spread, "momentum": mom,
        "liquidity": np.where(illiquid == 1, "illiquid", "liquid"), "venue": venue,
    })
    if logged:
        df["propensity"] = e
    return df, tau


COVARIATES = ["vol", "spread", "momentum", "liquidity", "venue"]


def run_block(n: int, sims: int, seed: int, overlap_scale: float, logged: bool, n_folds: int, model: str,
              harm: float = 2.0):
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.perf_counter()
    for i in range(sims):
        df, tau = simulate(n, rng, overlap_scale=overlap_scale, logged=logged, harm=harm)
        r = causal.estimate_ate(df, COVARIATES, seed=seed + i, n_folds=n_folds, outcome_model=model)
        t = df["treatment"].to_numpy(float)
        y = df["outcome_bps"].to_numpy(float)
        row = {"naive": r.naive.estimate_bps, "ipw": r.ipw.estimate_bps, "aipw": r.aipw.estimate_bps,
               "ipw_se": r.ipw.se, "aipw_se": r.aipw.se,
               "poor": r.overlap["poor_overlap"], "ess_t": r.overlap["ess_share_treated"],
               "share_out": r.overlap["share_outside_trim"]}
        # Alternative IPW SEs from the same fit, for the record (the rule is in weighting._choose_ipw_se).
        _, psi = causal.hajek_ipw(t, y, r.propensity)
        row["ipw_se_if"] = weighting._se_from_if(psi)
        if r.propensity_source == "estimated_logistic":
            X, _ = causal.design_matrix(df, COVARIATES)
            Xd = np.column_stack([np.ones(n), X])
            clipped = r.propensity != r.propensity_raw
            row["ipw_se_sandwich"] = weighting._se_from_if(
                weighting._hajek_sandwich_if(t, y, r.propensity_raw, r.propensity, Xd, clipped))
        else:
            row["ipw_se_sandwich"] = row["ipw_se_if"]
        if r.aipw_trimmed is not None:
            keep = (r.propensity_raw >= 0.05) & (r.propensity_raw <= 0.95)
            row["aipw_tr"], row["aipw_tr_se"], row["truth_tr"] = (
                r.aipw_trimmed.estimate_bps, r.aipw_trimmed.se, float(tau[keep].mean()))
        # Harm test exactly as analyse_experiment runs it (Holm over the 5 segments).
        segs, harmed, _ = causal.segment_effects(r.scores, df, ["liquidity", "venue"], t=t)
        row["flag_illiquid"] = "liquidity=illiquid" in harmed
        row["flag_other"] = any(h != "liquidity=illiquid" for h in harmed)
        rows.append(row)
    return pd.DataFrame(rows), time.perf_counter() - t0


def summarise(res: pd.DataFrame, truth: float) -> list[dict]:
    z = stats.norm.ppf(0.975)
    out = []

    def line(name, est, se, tr=truth):
        err = est - tr
        cover = (np.abs(err) <= z * se).mean() if se is not None else float("nan")
        sd = est.std(ddof=1)
        out.append({"estimator": name, "bias": err.mean(), "mc_se_bias": sd / np.sqrt(len(est)),
                    "rmse": np.sqrt((err**2).mean()), "sd": sd,
                    "se_over_sd": (se.mean() / sd) if se is not None else float("nan"),
                    "coverage95": cover})

    line("naive diff", res["naive"], None)
    line("IPW Hajek [auto SE]", res["ipw"], res["ipw_se"])
    line("  IPW, known-e IF SE", res["ipw"], res["ipw_se_if"])
    line("  IPW, sandwich SE", res["ipw"], res["ipw_se_sandwich"])
    line("AIPW cross-fit [IF SE]", res["aipw"], res["aipw_se"])
    if "aipw_tr" in res and res["aipw_tr"].notna().all():
        line("AIPW trimmed (vs trimmed SATE)", res["aipw_tr"], res["aipw_tr_se"], res["truth_tr"])
    return out


def runtime(n: int, seed: int) -> float:
    """Wall time of the full analyse_experiment (ATE, segments, CATE) on n fills, 1 thread."""
    rng = np.random.default_rng(seed)
    df, tau = simulate(n, rng, logged=True)
    t0 = time.perf_counter()
    r = causal.analyse_experiment(df, COVARIATES, mode="limited_live", seed=seed)
    el = time.perf_counter() - t0
    a = r.ate.aipw
    print(f"analyse_experiment(n={n:,}): {el:.1f} s wall  aipw={a.estimate_bps:.3f} "
          f"[{a.ci_95_low:.3f}, {a.ci_95_high:.3f}] (PATE {PATE:.3f})  harmed={r.harmed_segments}")
    for k, v in (r.cate_predictions or {}).items():
        print(f"  CATE {k}: RMSE vs true tau(x) {np.sqrt(np.mean((v - tau) ** 2)):.3f}, "
              f"corr {np.corrcoef(v, tau)[0, 1]:.3f} (descriptive only)")
    return el


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=200, help="simulated datasets per cell (default 200; 0 = skip)")
    ap.add_argument("--n", type=int, nargs="+", default=[500, 2000, 10000],
                    help="sample sizes (default 500 2000 10000)")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--overlap", type=float, nargs="+", default=[1.0],
                    help="overlap scale s (1 = good, 3 = poor); default 1")
    ap.add_argument("--propensity", choices=["estimated", "logged", "both"], default="estimated")
    ap.add_argument("--harm", type=float, default=2.0,
                    help="tau = 1 + 0.3 vol - harm*illiquid (2: harmed segment; 1: segment on the null)")
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--outcome-model", default="hgb", choices=["hgb", "rf", "linear"])
    ap.add_argument("--runtime-n", type=int, default=100_000, help="fills for the runtime check (0 = skip)")
    args = ap.parse_args(argv)

    pd.set_option("display.width", 160)
    print(f"true PATE = {pate(args.harm):.4f}  sims={args.sims}  seed={args.seed}  folds={args.n_folds} "
          f"outcome_model={args.outcome_model}")
    modes = ["estimated", "logged"] if args.propensity == "both" else [args.propensity]
    for s in args.overlap if args.sims > 0 else []:
        for mode in modes:
            for n in args.n:
                res, secs = run_block(n, args.sims, args.seed + n, s, mode == "logged",
                                      args.n_folds, args.outcome_model, args.harm)
                print(f"\n== n={n}  overlap s={s}  propensity={mode}  ({secs:.0f} s, "
                      f"{secs / args.sims:.2f} s/sim) ==")
                print(f"overlap gate fired in {res['poor'].mean():.1%} of runs; mean ESS/n treated "
                      f"{res['ess_t'].mean():.2f}; mean share outside [.05,.95] {res['share_out'].mean():.3f}")
                print(pd.DataFrame(summarise(res, pate(args.harm))).to_string(
                    index=False, float_format=lambda v: f"{v:.3f}"))
                ill = 1 - args.harm  # mean effect in the illiquid segment
                print(f"harm test: 'liquidity=illiquid' (mean effect {ill:+.1f}) flagged in "
                      f"{res['flag_illiquid'].mean():.1%} of runs "
                      f"({'power' if ill < 0 else 'false-flag rate, one-sided alpha/2=0.025'}); "
                      f"a non-harmed segment flagged in {res['flag_other'].mean():.1%}")
    if args.runtime_n:
        print()
        runtime(args.runtime_n, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
