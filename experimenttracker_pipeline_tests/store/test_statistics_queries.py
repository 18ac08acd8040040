"""The statistics aggregates in SQL on SQLite and PostgreSQL, against numpy / statsmodels on the same deltas:
sums about a reference value (exact variance far from zero), planned-look prefixes, the ratio metric, the
covariate sums of the regression adjustment, and a fixed-horizon design tested once at its plan."""

import json

import numpy as np
import pytest
import statsmodels.api as sm

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline.stages.verdict.decision import decide
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl
from experimenttracker_pipeline.stages.intervals.queries import (
    cumulative_delta_stats,
    latest_evaluation,
    look_delta_stats,
    metric_stats,
    winsorized_delta_stats,
)
from experimenttracker_pipeline.stages.samples.queries import iter_samples


def _feed(store, workdirs, deltas, *, exp_id="exp_a", sizes=None, covariates=None, slippage=None, **decl):
    """Declare an experiment and feed it shadow pairs with exactly these edge deltas (bps), variant/control fill
    sizes and covariates."""
    path = workdirs["experiments"] / f"{exp_id}.yaml"
    path.write_text(declaration(exp_id, **decl))
    sync_declarations(store, workdirs["experiments"])
    records = []
    for i, delta in enumerate(deltas):
        key = f"{exp_id}:{i}"
        vs, cs = sizes[i] if sizes is not None else (200.0, 200.0)
        extra = {"covariates": covariates[i]} if covariates is not None else {}
        records.append(fill(f"{exp_id}-c{i}", "c-slug", "live", key, edge=1.0, notional=100.0, t=i * 1000,
                            size_pusd=cs, **extra))
        if slippage is not None:
            extra["slippage_bps"] = 2.5 + float(slippage[i])
        records.append(fill(f"{exp_id}-v{i}", "v-slug", "shadow", key, edge=1.0 + float(delta) / 100.0, notional=100.0,
                            t=i * 1000 + 1, experiment_id=exp_id, size_pusd=vs, **extra))
    write_jsonl(workdirs["landing"] / f"{exp_id}.jsonl", records)
    assert ingest_landing(store, workdirs["landing"]).balanced
    record_samples(store, exp_id)
    return np.array([r["edge_delta_bps"] for r in iter_samples(store, exp_id)])


def test_variance_of_deltas_far_from_zero(store, workdirs):
    """1e8 + N(0, 1) deltas: the textbook one-pass variance of these sums is 0 or garbage; about the first
    delta it is numpy's two-pass variance."""
    rng = np.random.default_rng(3)
    stored = _feed(store, workdirs, 1e8 + rng.normal(0, 1, 300))
    reference = stored.var(ddof=1)
    assert 0.5 < reference < 2
    naive = (np.sum(stored**2) - np.sum(stored) ** 2 / stored.size) / (stored.size - 1)
    assert abs(naive - reference) > 0.5 * reference  # what summing about zero would give
    stats = st.SufficientStats(*metric_stats(store, "exp_a")["edge_delta_bps"])
    assert stats.n == 300 and stats.mean == pytest.approx(stored.mean(), rel=1e-15)
    assert stats.variance == pytest.approx(reference, rel=1e-9)
    assert stats.skewness == pytest.approx(float(((stored - stored.mean()) ** 3).mean() / stored.var() ** 1.5), abs=1e-6)
    n, s, ss, k = cumulative_delta_stats(store, "exp_a", upto=300, points=3)[-1]
    assert st.SufficientStats(n, s, ss, k).variance == pytest.approx(reference, rel=1e-9)
    evaluation = compute_intervals(store, "exp_a").evaluation
    assert evaluation["sd_bps"] == pytest.approx(np.sqrt(reference), rel=1e-5)


def test_planned_look_statistics_are_the_prefixes(store, workdirs):
    rng = np.random.default_rng(4)
    stored = _feed(store, workdirs, rng.normal(1.0, 10.0, 250))
    looks = look_delta_stats(store, "exp_a", [50, 100, 150, 300])
    assert [t[0] for t in looks] == [50, 100, 150]  # the 300-pair look is not reached
    for t in looks:
        s, prefix = st.SufficientStats(*t), stored[: t[0]]
        assert s.mean == pytest.approx(prefix.mean(), rel=1e-12)
        assert s.variance == pytest.approx(prefix.var(ddof=1), rel=1e-9)
    w = winsorized_delta_stats(store, "exp_a", 5.0, upto=100)
    ref = st.winsorize_values(stored[:100], 5.0)
    mine = st.SufficientStats(w["n"], w["total"], w["total_sq"], w["shift"], w["total_cube"])
    assert mine.mean == pytest.approx(ref.stats.mean, rel=1e-12) and w["n_clipped"] == ref.n_clipped
    assert mine.variance == pytest.approx(ref.stats.variance, rel=1e-9)


def test_fill_size_ratio_is_a_ratio_of_sums_with_delta_method_variance(store, workdirs):
    rng = np.random.default_rng(5)
    control = rng.lognormal(5, 0.6, 200)
    variant = control * rng.normal(1.05, 0.1, 200)
    _feed(store, workdirs, rng.normal(0, 5, 200), sizes=list(zip(variant, control)))
    ratio = st.RatioStats(*metric_stats(store, "exp_a")["fill_size_ratio"])
    r = variant.sum() / control.sum()
    assert ratio.n == 200 and ratio.ratio == pytest.approx(r, rel=1e-12)
    linear = (variant - r * control) / control.mean()
    assert ratio.linearized_sd == pytest.approx(linear.std(ddof=1), rel=1e-8)
    metric = compute_intervals(store, "exp_a").evaluation["metrics"]["fill_size_ratio"]
    assert metric["method"] == "ratio_delta_method" and metric["estimate"] == pytest.approx(r, rel=1e-5)
    assert metric["ci_95_low"] < r < metric["ci_95_high"] and metric["p_value"] < 0.05  # 1.05 vs neutral 1


def test_regression_adjustment_matches_statsmodels_ols(store, workdirs):
    rng = np.random.default_rng(6)
    n = 400
    x1, x2 = rng.normal(10, 3, n), rng.normal(0, 1, n)
    deltas = 1.0 + 2.0 * (x1 - 10) - 1.5 * x2 + rng.normal(0, 2, n)
    covs = [{"vol_bps": float(a), "spread_z": float(b), "category": "nfl"} for a, b in zip(x1, x2)]
    stored = _feed(store, workdirs, deltas, covariates=covs, adjust_for={"vol_bps": 10.0, "spread_z": 0.0})
    evaluation = compute_intervals(store, "exp_a").evaluation
    adj = evaluation["regression_adjustment"]
    assert adj["applied"] and adj["verdict_basis"] and sorted(adj["covariates"]) == ["spread_z", "vol_bps"]
    assert adj["pairs_missing_covariates"] == 0
    columns = {"vol_bps": x1 - 10.0, "spread_z": x2}
    ols = sm.OLS(stored, sm.add_constant(np.column_stack([columns[c] for c in adj["covariates"]]))).fit()
    assert adj["estimate_bps"] == pytest.approx(ols.params[0], rel=1e-5)
    assert adj["se_bps"] == pytest.approx(ols.bse[0], rel=1e-5)
    assert adj["coefficients"] == pytest.approx(list(ols.params[1:]), rel=1e-5)
    sem = stored.std(ddof=1) / np.sqrt(n)
    assert adj["variance_reduction"] == pytest.approx(1 - ols.bse[0] ** 2 / sem**2, rel=1e-4)
    assert adj["variance_reduction"] > 0.9
    # The verdict's interval is the adjusted one (narrower than the unadjusted always-valid interval).
    unadjusted = st.confidence_sequence(st.SufficientStats.from_values(stored), n_tune=evaluation["tuning_samples"])
    assert evaluation["ci_95_high"] - evaluation["ci_95_low"] < 0.5 * unadjusted.width
    assert evaluation["edge_delta_bps"] == pytest.approx(ols.params[0], rel=1e-5)


def test_regression_adjustment_without_centres_is_reported_only(store, workdirs):
    rng = np.random.default_rng(9)
    x = rng.normal(0, 3, 300)
    covs = [{"vol_bps": float(v)} for v in x]
    stored = _feed(store, workdirs, 2 * x + rng.normal(0, 1, 300), covariates=covs, adjust_for=["vol_bps"])
    evaluation = compute_intervals(store, "exp_a").evaluation
    adj = evaluation["regression_adjustment"]
    assert adj["applied"] and not adj["verdict_basis"] and adj["variance_reduction"] > 0.9
    ols = sm.OLS(stored, sm.add_constant(x - x.mean())).fit()
    assert adj["se_bps"] == pytest.approx(ols.bse[0], rel=1e-5)
    cs = st.confidence_sequence(st.SufficientStats.from_values(stored), n_tune=evaluation["tuning_samples"])
    assert evaluation["ci_95_low"] == pytest.approx(cs.low, rel=1e-5, abs=1e-9)  # the verdict is unadjusted


def test_regression_adjustment_not_applied_when_covariates_are_missing(store, workdirs):
    rng = np.random.default_rng(7)
    covs = [{"vol_bps": float(v)} if i % 10 else {"vol_bps": "high"} for i, v in enumerate(rng.normal(0, 1, 150))]
    _feed(store, workdirs, rng.normal(0, 1, 150), covariates=covs, adjust_for=["vol_bps"])
    adj = compute_intervals(store, "exp_a").evaluation["regression_adjustment"]
    assert adj["applied"] is False and adj["pairs_missing_covariates"] == 15 and "lack a numeric value" in adj["reason"]


def test_fixed_horizon_is_tested_once_at_the_plan(store, workdirs):
    """Pairs after the planned sample size are reported, never tested: a strong effect that appears after the
    plan does not turn the planned look's inconclusive result into a winner."""
    rng = np.random.default_rng(8)
    early = rng.normal(0, 10, 100)
    early = early - early.mean()  # exactly no effect at the planned look
    late = rng.normal(20, 1, 200)
    _feed(store, workdirs, np.concatenate([early, late]), ci_method="fixed_horizon", planned_max_samples=100)
    evaluation = compute_intervals(store, "exp_a").evaluation
    assert evaluation["verdict"] == "inconclusive" and evaluation["look_samples"] == 100
    assert "EXPERIMENT_PAST_PLANNED_SAMPLES" in evaluation["reason_codes"]
    assert evaluation["fixed_ci_95_low"] > 0  # the whole data would say otherwise; it is reported, not tested
    assert json.loads(latest_evaluation(store, "exp_a")["evaluation_json"])["look_samples"] == 100


def test_two_primary_metrics_are_judged_family_wise(store, workdirs):
    rng = np.random.default_rng(10)
    surface = {"objectives": {"primary": [{"name": "edge_delta_bps", "weight_bp": 10000},
                                          {"name": "slippage_delta_bps", "weight_bp": -5000}]}}
    _feed(store, workdirs, rng.normal(5, 10, 400), slippage=rng.normal(0, 1, 400), eval_surface=surface)
    compute_intervals(store, "exp_a")
    result = decide(store, "exp_a")
    family = result.verdict["multiple_testing"]
    assert family["correction"] == "holm" and family["family_size"] == 2
    assert {h["metric"] for h in family["hypotheses"]} == {"edge_delta_bps", "slippage_delta_bps"}
    edge = next(h for h in family["hypotheses"] if h["metric"] == "edge_delta_bps")
    assert edge["rejected"] and result.verdict["verdict"] == "variant_wins", (edge, result.verdict["verdict"])
    assert result.report["correction"] == "holm" and result.report["multiple_testing"]["family_size"] == 2


def test_non_inferiority_margin_blocks_a_winner_that_is_worse_on_a_guardrail(store, workdirs):
    rng = np.random.default_rng(11)
    _feed(store, workdirs, rng.normal(4, 10, 400), slippage=rng.normal(2.0, 1.0, 400),
          non_inferiority_margins={"slippage_delta_bps": 0.5})
    evaluation = compute_intervals(store, "exp_a").evaluation
    ni = evaluation["metrics"]["slippage_delta_bps"]["non_inferiority"]
    assert ni["status"] == "inferior" and ni["threshold"] == 0.5 and ni["lower_bound"] > 0.5
    assert evaluation["verdict"] == "variant_wins"  # on edge alone
    final = decide(store, "exp_a").verdict
    assert final["verdict"] == "guardrail_violated"
    assert "EXPERIMENT_NON_INFERIORITY_FAILED:slippage_delta_bps" in final["reason_codes"]
    assert any(r["rule"] == "harm" for r in final["stop_rules"])


def test_non_inferior_guardrail_lets_the_winner_stand(store, workdirs):
    rng = np.random.default_rng(12)
    _feed(store, workdirs, rng.normal(4, 10, 400), slippage=rng.normal(0.0, 1.0, 400),
          non_inferiority_margins={"slippage_delta_bps": 0.5})
    compute_intervals(store, "exp_a")
    final = decide(store, "exp_a").verdict
    assert final["non_inferiority_margins"]["slippage_delta_bps"]["status"] == "non_inferior"
    assert final["verdict"] == "variant_wins"
