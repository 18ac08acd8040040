"""Verdict, drift, SRM, futility and report throttling (spec sections 7, 9, 13, 17, 19, 26)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats as sps

import experimenttracker_pipeline.stages.verdict.rule as vd
import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.stages.verdict.rule import (
    EvaluationPolicy,
    evaluate,
    materially_changed,
)
from experimenttracker_pipeline.stats import SufficientStats

WIN_TEXT = "The new strategy version performed better in testing and has been flagged for promotion review."
WAIT_TEXT = "The experiment is still collecting data. No conclusion yet."


def moments(n: int, mean: float, sd: float) -> SufficientStats:
    return SufficientStats.from_moments(n, mean, sd)


def fixed_at(n: int, **kw) -> EvaluationPolicy:
    """A fixed-horizon policy planned at n pairs (its one look)."""
    return EvaluationPolicy(ci_method="fixed_horizon", planned_max_samples=n, **kw)


def at_plan(stats: SufficientStats, **kw):
    """Evaluate a fixed-horizon design whose planned look is the data's own n."""
    return evaluate(stats, fixed_at(stats.n, **kw), look_stats=[stats])


# --------------------------------------------------------------------------- spec section 26


def test_spec_winner_not_declared_before_min_samples():
    # samples=50, min_samples=100 -> EXPERIMENT_INSUFFICIENT_SAMPLES, even with a huge effect.
    ev = evaluate(moments(50, 40.0, 5.0), EvaluationPolicy(min_samples_for_decision=100))
    assert ev.event_type == "EXPERIMENT_INSUFFICIENT_SAMPLES"
    assert ev.reason_codes[0] == "EXPERIMENT_INSUFFICIENT_SAMPLES"
    assert ev.verdict == "insufficient_samples"
    assert not ev.is_decision and not ev.drift_signalled
    assert ev.plain_english == WAIT_TEXT
    # The same data at the threshold is a decision: the gate, not the data, held it back.
    assert evaluate(moments(100, 40.0, 5.0), EvaluationPolicy(min_samples_for_decision=100)).verdict == "variant_wins"


def test_spec_failure_injection_insufficient_samples():
    # Spec 19: min_samples=1000 with only 50 samples -> keep sampling.
    ev = evaluate(moments(50, -3.0, 10.0), EvaluationPolicy(min_samples_for_decision=1000))
    assert ev.event_type == "EXPERIMENT_INSUFFICIENT_SAMPLES"


def test_spec_drift_signal_fixed_horizon_literal_rule():
    # edge_delta=-5, sigma=2 (standard error): -5 < -2 * 2 -> drift, z = -2.5.
    ev = at_plan(moments(100, -5.0, 20.0))
    assert ev.se_bps == pytest.approx(2.0)
    assert ev.drift_signalled and "EXPERIMENT_DRIFT_SIGNAL" in ev.reason_codes
    assert ev.drift_z == pytest.approx(-2.5)
    assert ev.drift_rule == "fixed_2_sigma_at_planned_look"
    # The 2-sigma rule is the spec's own, not the verdict: at alpha 0.01 the same data is
    # inconclusive (t crit 2.63) but still more than 2 SE below zero.
    strict = at_plan(moments(100, -5.0, 20.0), alpha=0.01)
    assert strict.verdict == "inconclusive" and strict.drift_signalled
    # Just inside 2 SE and not significant: no signal (the rule can say no).
    calm = at_plan(moments(100, -3.9, 20.0))
    assert not calm.drift_signalled and calm.verdict == "inconclusive"


@pytest.mark.parametrize("ci_method", ["always_valid", "fixed_horizon"])
def test_spec_drift_signal_per_pair_sigma(ci_method):
    # edge_delta=-5 with per-pair sigma 2 at the minimum sample: drift under both rules.
    s = moments(100, -5.0, 2.0)
    ev = at_plan(s) if ci_method == "fixed_horizon" else evaluate(s, EvaluationPolicy(ci_method=ci_method))
    assert ev.drift_signalled and ev.verdict == "control_wins"
    assert ev.drift_bound < 0
    assert ev.drift_z == pytest.approx(-25.0)


def test_default_drift_rule_needs_time_uniform_evidence():
    # A single 2.5-sigma dip is what continuous monitoring produces by chance; the default rule
    # (one-sided always-valid bound) does not demote on it, but does on a 6-sigma deficit.
    weak = evaluate(moments(100, -5.0, 20.0))
    assert not weak.drift_signalled and weak.drift_z == pytest.approx(-2.5)
    assert weak.drift_bound == pytest.approx(
        st.one_sided_cs_bound(moments(100, -5.0, 20.0), 0.025, n_tune=100, side="upper")
    )
    strong = evaluate(moments(100, -12.0, 20.0))
    assert strong.drift_signalled and strong.drift_rule == "one_sided_always_valid"


def test_fixed_horizon_drift_waits_for_planned_look():
    pol = fixed_at(400)
    before = evaluate(moments(200, -5.0, 20 * math.sqrt(2)), pol)  # z = -2.5 at n = 200
    assert before.drift_z == pytest.approx(-2.5) and not before.drift_signalled
    assert before.verdict == "insufficient_samples" and "EXPERIMENT_AWAITING_PLANNED_LOOK" in before.reason_codes
    look = moments(400, -5.0, 40.0)
    at = evaluate(look, pol, look_stats=[look])  # z = -2.5 at the planned look
    assert at.drift_signalled and at.look_samples == 400


# --------------------------------------------------------------------------- verdicts


def test_verdicts_follow_the_chosen_interval():
    pol = EvaluationPolicy()
    s = moments(800, 2.0, 10.0)
    ev = evaluate(s, pol)
    cs = st.confidence_sequence(s, 0.05, n_tune=pol.tuning_samples())
    assert (ev.ci_95_low, ev.ci_95_high) == (pytest.approx(cs.low), pytest.approx(cs.high))
    assert ev.verdict == "variant_wins" and ev.event_type == "EXPERIMENT_RESULT"
    assert ev.plain_english == WIN_TEXT
    assert evaluate(moments(800, -2.0, 10.0), pol).verdict == "control_wins"
    assert evaluate(moments(800, 0.1, 10.0), pol).verdict == "inconclusive"


def test_fixed_ci_always_reported_and_matches_scipy():
    x = np.random.default_rng(11).normal(0.9, 10.0, size=600)
    ev = evaluate(SufficientStats.from_values(x))
    lo, hi = sps.t.interval(0.95, 599, loc=x.mean(), scale=sps.sem(x))
    assert (ev.fixed_ci_95_low, ev.fixed_ci_95_high) == (pytest.approx(lo), pytest.approx(hi))
    assert ev.fixed_p_value == pytest.approx(sps.ttest_1samp(x, 0).pvalue)
    assert ev.edge_delta_bps == pytest.approx(x.mean())


def test_peeking_gap_fixed_wins_but_always_valid_does_not():
    # z = 2.3 at n = 400: significant at a single planned look, not time-uniformly.
    s = moments(400, 2.3 * 10 / 20, 10.0)
    assert at_plan(s).verdict == "variant_wins"
    ev = evaluate(s)
    assert ev.verdict == "inconclusive"
    assert ev.fixed_ci_95_low > 0  # still reported
    assert ev.p_value > 0.05 > ev.fixed_p_value


def z_stats(n: int, z: float, sd: float = 10.0) -> SufficientStats:
    return moments(n, z * sd / math.sqrt(n), sd)


def test_group_sequential_uses_look_boundary_and_records_fraction():
    pol = EvaluationPolicy(ci_method="group_sequential", planned_max_samples=1000, planned_looks=4)
    looks = [z_stats(250, 0.5), z_stats(500, 2.5)]  # z = 2.5 at look 2 of 4
    ev = evaluate(looks[-1], pol, look_stats=looks)
    assert ev.information_fraction == pytest.approx(0.5)
    # O'Brien-Fleming z-bound 2.9631 carried to t with 499 df.
    assert ev.gs_boundary == pytest.approx(sps.t.isf(sps.norm.sf(2.9631), 499), abs=2e-4)
    assert ev.look_number == 2 and ev.planned_looks == 4 and ev.look_samples == 500
    assert ev.gs_boundaries == pytest.approx([4.3326, 2.9631, 2.3590, 2.0141], abs=1e-4)
    assert ev.verdict == "inconclusive"  # 2.5 < 2.96
    assert ev.fixed_ci_95_low > 0
    # At the final look the bound is 2.0141 and the same z wins.
    looks += [z_stats(750, 1.0), z_stats(1000, 2.5)]
    final = evaluate(looks[-1], pol, look_stats=looks)
    assert final.gs_boundary == pytest.approx(sps.t.isf(sps.norm.sf(2.0141), 999), abs=2e-4)
    assert final.verdict == "variant_wins"
    assert final.p_value < 0.05


def test_group_sequential_requires_planned_max():
    with pytest.raises(ValueError):
        EvaluationPolicy(ci_method="group_sequential")


def test_srm_blocks_verdict_in_limited_live():
    strong = moments(2000, 5.0, 10.0)
    pol = EvaluationPolicy(mode="limited_live", traffic_split_pct=10)
    ev = evaluate(strong, pol, variant_count=1500, control_count=8500)
    assert ev.verdict == "srm_blocked" and ev.event_type == "EXPERIMENT_SRM_DETECTED"
    assert "EXPERIMENT_SRM_DETECTED" in ev.reason_codes and not ev.drift_signalled
    assert ev.srm["mismatch"] is True
    assert ev.srm["p_value"] == pytest.approx(sps.chisquare([1500, 8500], [1000, 9000]).pvalue, rel=1e-6)
    # Matching split: the verdict goes through.
    assert evaluate(strong, pol, variant_count=1010, control_count=8990).verdict == "variant_wins"
    # Shadow-only experiments are not routed live, so SRM is reported but does not block.
    shadow = evaluate(strong, EvaluationPolicy(), variant_count=1500, control_count=8500)
    assert shadow.verdict == "variant_wins" and shadow.srm["mismatch"] is True


def test_large_split_warning():
    ev = evaluate(moments(500, 0.0, 10.0), EvaluationPolicy(traffic_split_pct=60))
    assert "EXPERIMENT_LARGE_SPLIT_WARN" in ev.reason_codes
    assert "sign-off" in ev.plain_english
    assert "EXPERIMENT_LARGE_SPLIT_WARN" not in evaluate(moments(500, 0.0, 10.0)).reason_codes


def test_tuning_sample_defaults():
    assert EvaluationPolicy().tuning_samples() == 100
    assert EvaluationPolicy(expected_samples=5000).tuning_samples() == 5000
    assert EvaluationPolicy(planned_max_samples=3000).tuning_samples() == 3000
    n_mde = st.required_sample_size(1.0, 10.0)
    assert EvaluationPolicy(mde_bps=1.0, expected_sd_bps=10.0).tuning_samples() == n_mde
    assert evaluate(moments(500, 0.0, 10.0), EvaluationPolicy(expected_samples=5000)).tuning_samples == 5000


def test_power_required_samples_and_days():
    pol = EvaluationPolicy(mde_bps=3.0, ci_method="fixed_horizon", planned_max_samples=1000)
    ev = evaluate(moments(60, 0.5, 10.0), pol, samples_per_day=10.0)
    assert ev.power == pytest.approx(st.power_at(60, 3.0, ev.sd_bps))
    assert ev.required_samples == max(100, st.required_sample_size(3.0, 10.0))
    assert ev.expected_days_to_decision == pytest.approx((ev.required_samples - 60) / 10.0)
    assert ev.power_basis == "mde"
    av = evaluate(moments(60, 0.5, 10.0), EvaluationPolicy(mde_bps=3.0), samples_per_day=10.0)
    assert av.required_samples > ev.required_samples  # always-valid costs samples


def test_futility_when_mde_out_of_reach():
    pol = EvaluationPolicy(planned_max_samples=1000, mde_bps=1.0)
    ev = evaluate(moments(950, 0.0, 10.0), pol)
    assert ev.verdict == "inconclusive" and ev.futile
    assert "EXPERIMENT_FUTILE" in ev.reason_codes and ev.conditional_power < 0.1
    early = evaluate(moments(150, 0.0, 10.0), pol)
    assert not early.futile and early.conditional_power > 0.1
    # No horizon declared: futility is not assessed.
    assert evaluate(moments(950, 0.0, 10.0)).conditional_power is None


def test_winsorization_reported_when_it_changes_result():
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 5.0, size=400)
    x[:9] = 300.0  # nine outliers drive the raw mean up (raw z ~ sqrt(9) = 3)
    raw = SufficientStats.from_values(x)
    w = st.winsorize_values(x, 2.5)
    pol = fixed_at(400, winsorize_pct=2.5)
    ev = evaluate(raw, pol, winsorized_stats=w.stats, look_stats=[w.stats], raw_look_stats=[raw])
    assert ev.winsorization["raw_verdict"] == "variant_wins"
    assert ev.verdict == "inconclusive"
    assert ev.winsorization["changes_result"] is True
    assert "EXPERIMENT_WINSORIZATION_CHANGED_RESULT" in ev.reason_codes
    assert ev.edge_delta_bps == pytest.approx(w.stats.mean)


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize(
    "stats,policy",
    [
        (SufficientStats.empty(), EvaluationPolicy()),
        (SufficientStats.from_values([1.0]), EvaluationPolicy()),
        (SufficientStats.from_values([2.0] * 150), EvaluationPolicy()),
        (moments(300, 1.0, 10.0), EvaluationPolicy(ci_method="group_sequential", planned_max_samples=900,
                                                   planned_looks=3)),
    ],
)
def test_to_dict_is_json_safe(stats, policy):
    looks = [stats] if policy.ci_method == "group_sequential" else []
    d = evaluate(stats, policy, samples_per_day=0.0, look_stats=looks).to_dict()
    json.dumps(d, allow_nan=False)
    for key in ("verdict", "ci_method", "ci_95_low", "ci_95_high", "fixed_ci_95_low", "fixed_ci_95_high",
                "edge_delta_bps", "samples", "p_value", "power", "drift_signalled", "plain_english"):
        assert key in d


def test_report_payload_has_spec_shape():
    ev = evaluate(moments(150, 3.2, 12.0))
    p = vd.report_payload(ev, report_id="ops_1", experiment_id="exp_sports_v2",
                          variant_slug="sports-model-v2", control_slug="sports-model")
    for key in ("report_id", "bot_id", "event_type", "experiment_id", "variant_slug", "control_slug", "samples",
                "edge_delta_bps", "ci_95_low", "ci_95_high", "verdict", "report_kind", "topic"):
        assert key in p
    assert p["bot_id"] == "gov.experimenttracker" and p["topic"] == "polytraders.reports.operations"
    assert p["ci_method"] == "always_valid" and p["fixed_ci_95_low"] is not None


@given(
    n=hs.integers(min_value=0, max_value=5000),
    mean=hs.floats(min_value=-50, max_value=50),
    sd=hs.floats(min_value=0.0, max_value=100),
    method=hs.sampled_from(["always_valid", "fixed_horizon"]),
    min_n=hs.integers(min_value=2, max_value=500),
)
@settings(max_examples=80, deadline=None)
def test_verdict_invariants(n, mean, sd, method, min_n):
    if method == "always_valid":
        min_n = max(min_n, st.ALWAYS_VALID_MIN_SAMPLES)
        ev = evaluate(moments(n, mean, sd), EvaluationPolicy(min_samples_for_decision=min_n))
    else:  # planned at min_n; the look's own statistics are those of the first min_n pairs
        look = [moments(min_n, mean, sd)] if n >= min_n else []
        ev = evaluate(moments(n, mean, sd), fixed_at(min_n, min_samples_for_decision=min_n), look_stats=look)
    json.dumps(ev.to_dict(), allow_nan=False)
    if n < min_n:
        assert ev.verdict == "insufficient_samples" and not ev.drift_signalled
    else:
        assert ev.verdict == ("variant_wins" if ev.ci_95_low > 0 else "control_wins" if ev.ci_95_high < 0 else "inconclusive")
    if ev.verdict == "control_wins":
        assert ev.drift_signalled
    if ev.drift_signalled:
        assert ev.edge_delta_bps < 0


# --------------------------------------------------------------------------- report throttling


def test_materially_changed():
    pol = EvaluationPolicy()
    first = evaluate(moments(1000, 0.3, 10.0), pol)
    assert materially_changed(None, first)
    stored = json.loads(json.dumps(first.to_dict()))
    # Same evidence re-evaluated on the next tick: no new report.
    assert not materially_changed(stored, evaluate(moments(1000, 0.3, 10.0), pol))
    # A few more pairs that barely move the interval: still no report.
    assert not materially_changed(stored, evaluate(moments(1040, 0.31, 10.0), pol))
    # 10% more samples: report.
    assert materially_changed(stored, evaluate(moments(1100, 0.3, 10.0), pol))
    # Verdict change: report.
    assert materially_changed(stored, evaluate(moments(1010, 2.0, 10.0), pol))
    # Method change: report.
    assert materially_changed(stored, at_plan(moments(1000, 0.3, 10.0)))
    # Bound moved by more than 25% of the width, same n and verdict: report.
    width = first.ci_95_high - first.ci_95_low
    moved = evaluate(moments(1000, 0.3 + 0.3 * width, 10.0), pol)
    assert moved.verdict == first.verdict and materially_changed(stored, moved)


def test_materially_changed_on_drift_status():
    before = at_plan(moments(100, -3.9, 20.0)).to_dict()
    after = at_plan(moments(100, -4.1, 20.0))  # crosses -2 SE without new samples
    assert after.drift_signalled and materially_changed(before, after)


# --------------------------------------------------------------------------- small calibration


def test_default_rule_false_verdict_rate_under_continuous_monitoring():
    # 150 A/A experiments evaluated with evaluate() every 50 pairs up to 1500; the default rule
    # declares a winner in few of them, the fixed-horizon rule in many more.
    rng = np.random.default_rng(99)
    x = rng.normal(0.0, 10.0, size=(150, 1500))
    c1, c2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    looks = range(100, 1501, 50)
    default = EvaluationPolicy()
    false_default = false_fixed = 0
    for i in range(x.shape[0]):
        evs = [SufficientStats(n, float(c1[i, n - 1]), float(c2[i, n - 1])) for n in looks]
        false_default += any(evaluate(s, default).is_decision for s in evs)
        false_fixed += any(st.fixed_ci(s).excludes_zero() for s in evs)
    assert false_default / 150 <= 0.06
    assert false_fixed / 150 >= 0.12


# --------------------------------------------------------------------------- read-outs added to the verdict


def test_bayesian_readout_reported_never_the_basis():
    s = moments(400, 0.6, 10.0)  # z = 1.2: inconclusive, yet ~88% likely better under a flat prior
    ev = evaluate(s)
    assert ev.verdict == "inconclusive"
    ref = st.gaussian_readout(0.6, 0.5)
    assert ev.bayesian["chance_to_beat_control"] == pytest.approx(ref.chance_to_beat_control, rel=1e-5)
    assert ev.bayesian["expected_loss_ship"] == pytest.approx(ref.expected_loss_ship, rel=1e-5)
    assert ev.bayesian["prior"] == "flat"
    informed = evaluate(s, EvaluationPolicy(prior_mean_bps=0.0, prior_sd_bps=0.5))
    assert informed.bayesian["posterior_mean"] == pytest.approx(0.3, rel=1e-5)  # equal precisions: halfway
    assert informed.verdict == "inconclusive"


def test_drift_margin_is_a_non_inferiority_margin():
    s = moments(2000, -0.8, 10.0)  # upper one-sided bound ~ -0.05 bps
    plain = evaluate(s)
    assert plain.drift_signalled and plain.non_inferiority["inferior"]
    # Even control_wins (the interval below 0) is no drift while the interval is within the margin.
    lenient = evaluate(s, EvaluationPolicy(drift_margin_bps=0.5))
    assert lenient.verdict == "control_wins" and lenient.ci_95_high > -0.5
    assert not lenient.drift_signalled and lenient.non_inferiority["margin_bps"] == 0.5
    assert lenient.drift_bound == pytest.approx(plain.drift_bound)
    good = evaluate(moments(2000, 0.4, 10.0), EvaluationPolicy(drift_margin_bps=0.5))
    assert good.non_inferiority["non_inferior"] and good.non_inferiority["lower_bound"] > -0.5
    assert good.non_inferiority["lower_bound"] == pytest.approx(
        st.one_sided_cs_bound(moments(2000, 0.4, 10.0), 0.025, n_tune=100, side="lower"))


def test_drift_alpha_is_split_over_treatments():
    s = moments(2000, -0.8, 10.0)
    three = evaluate(s, EvaluationPolicy(treatments=3))
    assert three.non_inferiority["alpha"] == pytest.approx(0.025 / 3)
    assert three.drift_bound == pytest.approx(st.one_sided_cs_bound(s, 0.025 / 3, n_tune=100, side="upper"))
    assert three.drift_bound > evaluate(s).drift_bound


def test_regression_adjusted_estimate_is_the_basis_when_given():
    rng = np.random.default_rng(12)
    x = rng.normal(0, 3, (500, 1))
    d = 0.4 + 2.0 * x[:, 0] + rng.normal(0, 1, 500)
    raw = SufficientStats.from_values(d)
    adj = st.regression_adjusted(st.RegressionStats.from_values(d, x), [0.0])
    ev = evaluate(raw, adjusted=adj)
    assert ev.verdict == "variant_wins" and evaluate(raw).verdict == "inconclusive"
    assert ev.regression_adjustment["variance_reduction"] == pytest.approx(adj.variance_reduction)
    assert ev.regression_adjustment["unadjusted_edge_delta_bps"] == pytest.approx(d.mean())
    assert ev.se_bps == pytest.approx(adj.se)
    with pytest.raises(ValueError):
        evaluate(raw, EvaluationPolicy(winsorize_pct=1), winsorized_stats=SufficientStats.from_values(d), adjusted=adj)


def test_group_sequential_p_value_is_stagewise_and_consistent_with_the_verdict():
    pol = EvaluationPolicy(ci_method="group_sequential", planned_max_samples=1000, planned_looks=4)
    for z in (1.9, 2.1, 2.5):
        looks = [z_stats(250, 0.0), z_stats(500, 0.0), z_stats(750, 0.0), z_stats(1000, z)]
        ev = evaluate(looks[-1], pol, look_stats=looks)
        assert (ev.p_value <= 0.05) == ev.is_decision
