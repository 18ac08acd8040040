"""Tests of the causal layer on seeded simulated data with known truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import experimenttracker_pipeline.causal as causal
from experimenttracker_pipeline.causal import instruments

TRUE_ATE = 0.5


def _confounded(n: int, seed: int, *, overlap: float = 1.0, logged: bool = False) -> pd.DataFrame:
    """Variant preferentially routed to volatile fills, where edge is worse for both arms.

    Constant true effect +0.5 bps, but the naive difference of means is strongly negative.
    """
    rng = np.random.default_rng(seed)
    vol = rng.standard_normal(n)
    volatile = rng.random(n) < 1 / (1 + np.exp(-vol))
    venue = rng.choice(np.array(["A", "B", "C"]), n)
    lin = -0.2 + overlap * (0.9 * vol + 0.8 * volatile)
    e = 1 / (1 + np.exp(-lin))
    t = (rng.random(n) < e).astype(int)
    mu0 = 1.0 - 1.5 * vol - 1.5 * volatile + 0.4 * vol**2
    y = mu0 + TRUE_ATE * t + 1.5 * rng.standard_normal(n)
    df = pd.DataFrame({"treatment": t, "outcome_bps": y, "vol": vol,
                       "regime": np.where(volatile, "volatile", "calm"), "venue": venue})
    if logged:
        df["propensity"] = e
    return df


def _harm_dgp(n: int, seed: int, *, harm: float = -2.0) -> tuple[pd.DataFrame, dict]:
    """Effect +1 on liquid fills, ``harm`` on illiquid ones, equal across venues; logged e."""
    rng = np.random.default_rng(seed)
    vol, spread = rng.standard_normal((2, n))
    illiquid = rng.random(n) < 1 / (1 + np.exp(1.2 - spread))
    venue = rng.choice(np.array(["A", "B", "C"]), n)
    e = 1 / (1 + np.exp(-(-0.2 + 0.7 * vol - 0.5 * spread)))
    t = (rng.random(n) < e).astype(int)
    tau = np.where(illiquid, harm, 1.0)
    y = 0.5 + vol + 0.5 * spread + 0.3 * vol**2 + t * tau + 2.0 * rng.standard_normal(n)
    df = pd.DataFrame({"treatment": t, "outcome_bps": y, "propensity": e, "vol": vol, "spread": spread,
                       "liquidity": np.where(illiquid, "illiquid", "liquid"), "venue": venue})
    return df, {"liquidity=illiquid": harm, "liquidity=liquid": 1.0}


COV = ["vol", "regime", "venue"]


# --------------------------------------------------------------------------- ATE
@pytest.fixture(scope="module")
def confounded_result():
    df = _confounded(4000, seed=11)
    return df, causal.analyse_experiment(df, COV, mode="limited_live", seed=3, cate_n_estimators=20)


def test_naive_has_wrong_sign_and_ipw_aipw_recover_truth(confounded_result):
    df, res = confounded_result
    ate = res.ate
    # The DGP really is confounded: naive is significantly negative, the truth is +0.5.
    assert ate.naive.ci_95_high < 0 < TRUE_ATE
    for est in (ate.ipw, ate.aipw):
        assert est.estimate_bps > 0
        assert est.covers(TRUE_ATE), est
        assert est.se > 0 and est.ci_95_low < est.estimate_bps < est.ci_95_high
    assert ate.propensity_source == "estimated_logistic"
    assert causal.PROPENSITY_ESTIMATED in res.warnings
    assert res.verdict_basis == "aipw" and res.estimate_reliable
    assert res.verdict_estimate is ate.aipw
    d = res.to_dict()
    assert d["naive_diff_bps"] == pytest.approx(ate.naive.estimate_bps)
    assert d["verdict_estimate"] == d["aipw"]


def test_logged_propensity_is_used_and_recovers_truth():
    df = _confounded(3000, seed=5, logged=True)
    r = causal.estimate_ate(df, COV, seed=1, outcome_model="linear")
    assert r.propensity_source == "logged"
    np.testing.assert_allclose(r.propensity_raw, df["propensity"].to_numpy())
    assert r.naive.estimate_bps < 0
    assert r.ipw.covers(TRUE_ATE) and r.aipw.covers(TRUE_ATE)
    assert r.se_method["ipw_rule"] == "if"
    # A partly missing logged propensity is not mixed with a model: all rows are estimated.
    df.loc[::7, "propensity"] = np.nan
    r2 = causal.estimate_ate(df, COV, seed=1, outcome_model="linear")
    assert r2.propensity_source == "estimated_logistic"
    assert causal.PROPENSITY_ESTIMATED in r2.warnings


def test_constant_propensity_uses_naive_basis_and_ipw_equals_naive():
    rng = np.random.default_rng(2)
    n = 1500
    df = pd.DataFrame({"treatment": rng.integers(0, 2, n), "vol": rng.standard_normal(n),
                       "venue": rng.choice(["A", "B"], n)})
    df["outcome_bps"] = 0.3 * df["treatment"] + df["vol"] + rng.standard_normal(n)
    df["propensity"] = 0.5
    res = causal.analyse_experiment(df, ["vol", "venue"], seed=0, cate=False, outcome_model="linear")
    assert res.ate.propensity_constant
    assert res.verdict_basis == "naive"
    assert res.ate.ipw.estimate_bps == pytest.approx(res.ate.naive.estimate_bps, abs=1e-12)
    # With non-constant logged propensities the naive difference is never the basis.
    df["propensity"] = np.where(df["vol"] > 0, 0.6, 0.4)
    res2 = causal.analyse_experiment(df, ["vol", "venue"], seed=0, cate=False, outcome_model="linear")
    assert res2.verdict_basis == "aipw"


def test_input_frame_not_mutated(confounded_result):
    df, _ = confounded_result
    assert list(df.columns) == ["treatment", "outcome_bps", "vol", "regime", "venue"]


def test_single_arm_is_reported_not_raised():
    df = _confounded(200, seed=1).assign(treatment=1)
    res = causal.analyse_experiment(df, COV, seed=0)
    assert causal.SINGLE_ARM in res.warnings
    assert res.verdict_basis is None and not res.estimate_reliable
    json.dumps(res.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------- overlap
def test_poor_overlap_warns_and_is_not_a_confident_number():
    df = _confounded(3000, seed=8, overlap=4.0, logged=True)
    res = causal.analyse_experiment(df, COV, seed=0, cate=False, outcome_model="linear", clip=(0.02, 0.98))
    ov = res.ate.overlap
    assert ov["poor_overlap"]
    assert causal.POOR_OVERLAP in res.warnings and causal.WEIGHTS_CLIPPED in res.warnings
    assert not res.estimate_reliable
    assert res.verdict_basis == "aipw_trimmed"
    assert ov["clip_bounds"] == [0.02, 0.98] and ov["share_clipped"] > 0
    assert ov["share_outside_trim"] > 0.10
    assert min(ov["ess_share_treated"], ov["ess_share_control"]) < 0.5
    assert res.ate.aipw_trimmed is not None
    # ... whereas the good-overlap design passes the gate.
    good = causal.estimate_ate(_confounded(3000, seed=8, logged=True), COV, outcome_model="linear")
    assert not good.overlap["poor_overlap"] and causal.POOR_OVERLAP not in good.warnings
    assert good.overlap["max_abs_smd_weighted"] < good.overlap["max_abs_smd_raw"]


# --------------------------------------------------------------------------- segments
@pytest.fixture(scope="module")
def harm_result():
    df, truth = _harm_dgp(4000, seed=21)
    # A venue with 6 fills: must be listed as not tested, not dropped.
    df.loc[:5, "venue"] = "Z"
    res = causal.analyse_experiment(df, ["vol", "spread", "liquidity", "venue"], seed=4,
                                    cate_n_estimators=20)
    return df, truth, res


def test_harmed_segment_is_flagged_and_neutral_ones_are_not(harm_result):
    _, truth, res = harm_result
    assert res.harmed_segments == ["liquidity=illiquid"]
    assert causal.HARMED_SEGMENT in res.warnings
    segs = {f"{s['covariate']}={s['value']}": s for s in res.segments}
    ill = segs["liquidity=illiquid"]
    assert ill["harmed"] and ill["ci_95_high"] < 0
    assert ill["ci_95_low"] <= truth["liquidity=illiquid"] <= ill["ci_95_high"]
    for lab in ("liquidity=liquid", "venue=A", "venue=B", "venue=C"):
        assert not segs[lab]["harmed"], lab
    # Flags and corrected CIs always agree; corrected CIs are wider than nominal 95%.
    for s in res.segments:
        if s["tested"]:
            assert s["harmed"] == (s["ci_95_high"] < -res.harm_margin_bps)
            assert s["ci_level"] >= 0.95
    assert res.cate is not None and "t_learner_rf" in res.cate and "dr_learner_rf" in res.cate
    # Overall the variant still looks good on average: the harm rule is what catches it.
    assert res.ate.aipw.estimate_bps > 0


def test_tiny_segment_reported_as_not_tested(harm_result):
    _, _, res = harm_result
    z = [s for s in res.segments if s["covariate"] == "venue" and s["value"] == "Z"]
    assert len(z) == 1 and z[0]["n"] == 6
    assert z[0]["tested"] is False and z[0]["status"] == "not_tested_too_small"
    assert z[0]["harmed"] is False and z[0]["ci_95_low"] is None
    assert causal.SEGMENT_NOT_TESTED in res.warnings


def test_harm_margin_and_bonferroni():
    df, _ = _harm_dgp(3000, seed=22)
    cov = ["vol", "spread", "liquidity", "venue"]
    base = causal.analyse_experiment(df, cov, seed=1, cate=False, outcome_model="linear")
    assert base.harmed_segments == ["liquidity=illiquid"]
    # A margin larger than the harm (2 bps) means no segment is "materially" harmed.
    lenient = causal.analyse_experiment(df, cov, seed=1, cate=False, outcome_model="linear",
                                        harm_margin_bps=5.0)
    assert lenient.harmed_segments == []
    bonf = causal.analyse_experiment(df, cov, seed=1, cate=False, outcome_model="linear",
                                     correction="bonferroni")
    m = sum(s["tested"] for s in bonf.segments)
    assert all(s["ci_level"] == pytest.approx(1 - 0.05 / m) for s in bonf.segments if s["tested"])
    assert bonf.harmed_segments == ["liquidity=illiquid"]


def test_no_harm_no_flag():
    df, _ = _harm_dgp(3000, seed=23, harm=1.0)
    res = causal.analyse_experiment(df, ["vol", "spread", "liquidity", "venue"], seed=1, cate=False,
                                    outcome_model="linear")
    assert res.harmed_segments == [] and causal.HARMED_SEGMENT not in res.warnings


# --------------------------------------------------------------------------- shadow
def test_shadow_paired_estimate_and_segments():
    rng = np.random.default_rng(9)
    n = 1200
    regime = rng.choice(np.array(["calm", "volatile"]), n, p=[0.7, 0.3])
    deltas = np.where(regime == "volatile", -1.5, 0.8) + rng.standard_normal(n) * 2
    df = pd.DataFrame({"regime": regime, "venue": rng.choice(["A", "B"], n)})
    res = causal.analyse_experiment(df, ["regime", "venue"], mode="shadow_only", paired_deltas=deltas, seed=0)
    tt = stats.ttest_1samp(deltas, 0.0)
    ci = tt.confidence_interval()
    assert res.verdict_basis == "paired"
    assert res.paired.estimate_bps == pytest.approx(deltas.mean())
    assert (res.paired.ci_95_low, res.paired.ci_95_high) == pytest.approx((ci.low, ci.high))
    assert res.harmed_segments == ["regime=volatile"]
    d = res.to_dict()
    assert d["ipw"] is None and d["aipw"] is None and d["propensity_source"] is None
    json.dumps(d, allow_nan=False)


# --------------------------------------------------------------------------- statsmodels cross-check
def test_matches_statsmodels_treatment_effect():
    import statsmodels.api as sm  # a dev dependency
    from statsmodels.treatment.treatment_effects import TreatmentEffect

    df = _confounded(3000, seed=31)
    X, _ = causal.design_matrix(df, COV)
    exog = sm.add_constant(X)
    t = df["treatment"].to_numpy()
    y = df["outcome_bps"].to_numpy()
    res_sel = sm.Logit(t, exog).fit(disp=False)
    # statsmodels silently clips to [.01,.99] inside its GMM step: make sure that never binds,
    # so both sides estimate the same thing.
    assert 0.01 < res_sel.predict().min() and res_sel.predict().max() < 0.99
    te = TreatmentEffect(sm.OLS(y, exog), t, results_select=res_sel)
    sm_ipw = te.ipw()
    sm_aipw = te.aipw()

    # Same estimators: Hajek IPW on the logistic propensity; AIPW with in-sample OLS outcome
    # models per arm (n_folds=1, linear) -- our default cross-fits a flexible model instead.
    ours = causal.estimate_ate(df, COV, n_folds=1, outcome_model="linear", se_method="sandwich")
    assert ours.ipw.estimate_bps == pytest.approx(sm_ipw.effect[0], abs=1e-6)
    assert ours.aipw.estimate_bps == pytest.approx(sm_aipw.effect[0], abs=1e-6)
    # Our stacked sandwich is the same M-estimation as statsmodels' GMM (HC0): same SE.
    assert ours.ipw.se == pytest.approx(sm_ipw.sd[0], rel=0.01)
    # AIPW IF-SE ignores nuisance estimation (first-order irrelevant for DR): close.
    assert ours.aipw.se == pytest.approx(sm_aipw.sd[0], rel=0.10)
    # The default (cross-fitted HGB) AIPW is a different estimator but agrees within noise.
    default = causal.estimate_ate(df, COV, seed=0)
    assert abs(default.aipw.estimate_bps - sm_aipw.effect[0]) < 2 * sm_aipw.sd[0]


# --------------------------------------------------------------------------- IV
def _iv_data(n, seed, pi):
    rng = np.random.default_rng(seed)
    u, z, x = rng.standard_normal((3, n))
    z = (z > 0).astype(float)  # the router's random draw
    d = pi * z + 0.5 * x + u + rng.standard_normal(n)
    y = 1.5 * d + 0.3 * x + 2 * u + rng.standard_normal(n) * (1 + 0.5 * np.abs(x))
    return pd.DataFrame({"y": y, "d": d, "z": z, "x": x})


def test_iv_2sls_recovers_effect_and_matches_linearmodels():
    df = _iv_data(3000, 1, pi=1.2)
    r = causal.iv_2sls(df, "y", "d", "z", ["x"])
    assert r.ci_95_low <= 1.5 <= r.ci_95_high
    ols = np.polyfit(df["d"], df["y"], 1)[0]
    assert ols > r.ci_95_high  # OLS is biased by the unobserved confounder; 2SLS is not
    assert r.first_stage_f > 10 and not r.weak and r.warnings == []
    assert r.ar_ci["kind"] == "bounded"
    lo, hi = r.ar_ci["intervals"][0]
    assert lo <= 1.5 <= hi
    import linearmodels.iv as iv  # a dev dependency
    exog = df[["x"]].assign(const=1.0)[["const", "x"]]
    lm = iv.IV2SLS(df["y"], exog, df["d"], df["z"]).fit(cov_type="robust", debiased=True)
    assert r.effect == pytest.approx(lm.params["d"], abs=1e-9)
    assert r.se == pytest.approx(lm.std_errors["d"], rel=1e-6)
    assert r.first_stage_f == pytest.approx(float(lm.first_stage.diagnostics["f.stat"].iloc[0]), rel=1e-6)


def test_iv_weak_instrument_warns_with_anderson_rubin_set():
    df = _iv_data(2000, 2, pi=0.05)
    r = causal.iv_2sls(df, "y", "d", "z", ["x"])
    assert r.first_stage_f < 10 and r.weak
    assert causal.WEAK_INSTRUMENT in r.warnings
    d = r.to_dict()
    assert d["recommended_ci"] == "anderson_rubin"
    # The AR set is weak-IV robust: it contains the truth and here is unbounded.
    ivs = d["anderson_rubin_ci"]["intervals"]
    assert d["anderson_rubin_ci"]["kind"] in ("whole_line", "union_of_rays")
    assert any((lo is None or lo <= 1.5) and (hi is None or 1.5 <= hi) for lo, hi in ivs)
    json.dumps(d, allow_nan=False)
    # Wired through analyse_experiment when the experiment declares an instrument.
    rng = np.random.default_rng(0)
    fills = df.rename(columns={"y": "outcome_bps"}).assign(
        treatment=(df["d"] > 0).astype(int), propensity=0.5, venue=rng.choice(["A", "B"], len(df)))
    res = causal.analyse_experiment(fills, ["x", "venue"], instrument="z", cate=False, outcome_model="linear")
    assert res.iv is not None and res.to_dict()["iv"]["first_stage_f"] is not None


def test_anderson_rubin_endpoints_solve_the_test():
    df = _iv_data(1500, 3, pi=0.5)
    r = causal.iv_2sls(df, "y", "d", "z", ["x"])
    lo, hi = r.ar_ci["intervals"][0]
    crit = stats.chi2.ppf(0.95, 1)
    x, z, y, d = (df[c].to_numpy() for c in ("x", "z", "y", "d"))
    Z = np.column_stack([np.ones(len(df)), x, z])
    for b in (lo, hi):
        yy = y - b * d
        ZtZi = np.linalg.inv(Z.T @ Z)
        g = ZtZi @ Z.T @ yy
        e = yy - Z @ g
        V = instruments._hc1_cov(Z, e**2, ZtZi)
        assert g[-1] ** 2 / V[-1, -1] == pytest.approx(crit, rel=1e-6)


# --------------------------------------------------------------------------- OPE
def _ope_data(n, seed):
    rng = np.random.default_rng(seed)
    K = 3
    X = rng.standard_normal((n, 2))
    coef = np.array([[0.5, 0.2], [-0.3, 0.6], [0.1, -0.4]])
    base = np.array([0.2, 0.5, 0.4])
    mean_r = base + X @ coef.T  # n x K expected rewards
    logits = 0.8 * X @ np.array([[1.0, 0.0], [0.0, 1.0], [-0.5, -0.5]]).T
    pb = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pb = 0.8 * pb + 0.2 / K  # uniform floor
    eps = 0.05
    pe = np.full((n, K), eps / K)
    pe[np.arange(n), mean_r.argmax(1)] += 1 - eps
    a = np.array([rng.choice(K, p=p) for p in pb])
    r = mean_r[np.arange(n), a] + rng.standard_normal(n)
    return X, a, r, pb, pe, mean_r


def test_off_policy_value_recovers_known_value():
    X, a, r, pb, pe, _ = _ope_data(4000, seed=12)
    # True value of the candidate policy (population), exact in the rewards and Monte Carlo
    # over 400k fresh contexts (MC error ~0.001, far below the CI half-widths).
    rng = np.random.default_rng(123)
    Xt = rng.standard_normal((400_000, 2))
    coef = np.array([[0.5, 0.2], [-0.3, 0.6], [0.1, -0.4]])
    mr = np.array([0.2, 0.5, 0.4]) + Xt @ coef.T
    pet = np.full(mr.shape, 0.05 / 3)
    pet[np.arange(len(Xt)), mr.argmax(1)] += 0.95
    v_true = float((pet * mr).sum(1).mean())

    idx = np.arange(len(a))
    q_logged, q_cand = causal.crossfit_reward_model(X, a, r, pe, kind="linear", n_folds=5, seed=0)
    frame = pd.DataFrame({"reward": r, "logging_prob": pb[idx, a], "candidate_prob": pe[idx, a],
                          "q_logged": q_logged, "q_candidate": q_cand})
    res = causal.off_policy_value(frame, q_logged="q_logged", q_candidate="q_candidate")
    for est in (res.ips, res.snips, res.dr):
        assert est.covers(v_true), (est, v_true)
    assert res.dr.se < res.ips.se  # the reward model reduces variance ...
    assert res.dr.se > 0.9 * np.std(q_cand) / np.sqrt(len(r))  # ... but its CI is not a DM CI
    v_logging = float(r.mean())
    assert not res.dr.covers(v_logging)  # the candidate is genuinely better than logging
    d = res.to_dict()
    assert d["dm_value_bps"] is not None and "dm" not in d
    assert 0 < d["weight_ess_share"] <= 1
    # Arrays work as well as column names.
    res2 = causal.off_policy_value(reward=r, logging_prob=pb[idx, a], candidate_prob=pe[idx, a])
    assert res2.ips.estimate_bps == pytest.approx(res.ips.estimate_bps)
    assert res2.dr is None


# --------------------------------------------------------------------------- output shape
def test_to_dict_is_json_safe_and_has_the_issue_shape(harm_result):
    _, _, res = harm_result
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    for k in ("naive_diff_bps", "ipw", "aipw", "overlap", "segments", "harmed_segments", "warnings",
              "propensity_source", "seed", "method", "verdict_basis", "estimate_reliable"):
        assert k in d, k
    for k in ("ipw", "aipw"):
        assert set(d[k]) == {"estimate_bps", "ci_95_low", "ci_95_high", "se"}
    seg = d["segments"][0]
    for k in ("covariate", "value", "n", "estimate_bps", "ci_95_low", "ci_95_high", "p_value", "harmed"):
        assert k in seg
    assert d["seed"] == 4 and d["propensity_source"] == "logged"
    assert isinstance(d["harmed_segments"], list) and all("=" in s for s in d["harmed_segments"])


def test_bootstrap_se_is_seeded():
    df = _confounded(800, seed=3)
    a = causal.estimate_ate(df, COV, se_method="bootstrap", n_bootstrap=30, seed=7, outcome_model="linear")
    b = causal.estimate_ate(df, COV, se_method="bootstrap", n_bootstrap=30, seed=7, outcome_model="linear")
    assert a.ipw.se == b.ipw.se and a.ipw.se > 0
    assert "bootstrap" in a.se_method["ipw"]
