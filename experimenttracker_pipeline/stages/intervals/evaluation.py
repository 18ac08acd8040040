"""One evaluation (a look) of an experiment: confidence intervals, power and SRM from sufficient statistics aggregated in SQL."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.model.contract import METRICS
from experimenttracker_pipeline.model.experiment import Experiment, experiment_from_row
from experimenttracker_pipeline.model.numbers import to_json
from experimenttracker_pipeline.stages.verdict.assembly import policy_of
from experimenttracker_pipeline.stages.verdict.rule import (
    EvaluationPolicy,
    evaluate,
)
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.intervals.queries import (
    METRIC_EXPRESSIONS,
    RATIO_METRICS,
    arm_fill_counts,
    covariate_stats,
    insert_evaluation,
    look_delta_stats,
    metric_stats,
    winsorized_delta_stats,
)
from experimenttracker_pipeline.stages.samples.queries import pairing_state
from experimenttracker_pipeline.stages.samples.recording import anchor_head

log = logging.getLogger(__name__)


MS_PER_DAY = 86_400_000

# Which way each surface metric is better, for non-inferiority margins ("not worse than control by more than m").
METRIC_BETTER = {name: spec.better for name, spec in METRICS.items()}


def _non_inferiority(stats: st.SufficientStats, neutral: float, margin: float, better: str,
                     policy: EvaluationPolicy) -> dict[str, Any]:
    """One-sided always-valid check that the variant is not worse than control by more than ``margin``.

    ``non_inferior``: the one-sided bound on the bad side clears neutral -/+ margin (time-uniform, level
    drift_alpha); ``inferior``: the bound on the good side is beyond it (shown worse by more than the margin);
    else ``unresolved``."""
    n_tune = policy.tuning_samples()
    lo = st.one_sided_cs_bound(stats, policy.drift_alpha, n_tune=n_tune, side="lower")
    hi = st.one_sided_cs_bound(stats, policy.drift_alpha, n_tune=n_tune, side="upper")
    if better == "higher":
        edge = neutral - margin
        status = "non_inferior" if lo > edge else "inferior" if hi < edge else "unresolved"
    else:
        edge = neutral + margin
        status = "non_inferior" if hi < edge else "inferior" if lo > edge else "unresolved"
    return {"margin": margin, "better": better, "threshold": edge, "lower_bound": lo, "upper_bound": hi,
            "alpha": policy.drift_alpha, "status": status}


def _metric_interval(name: str, stats: st.SufficientStats, policy: EvaluationPolicy, *,
                     margin: float | None = None, method: str = "mean") -> dict[str, Any]:
    """The per-metric CI the goal surface judges objectives and guardrails on: the same always-valid footing as
    the verdict, with its always-valid p-value against the metric's neutral value (for the family-wise test of
    several primary metrics). Held (no CI) below the always-valid floor or while the metric is too skewed."""
    neutral = float(METRICS[name].neutral) if name in METRICS else 0.0
    needed = max(st.ALWAYS_VALID_MIN_SAMPLES, st.skew_min_samples(stats))
    base = {"estimate": stats.mean if stats.n else None, "n": stats.n, "method": method, "neutral": neutral,
            "skewness": stats.skewness if math.isfinite(stats.skewness) else None}
    if stats.n < needed or not math.isfinite(stats.variance):
        return {**base, "ci_95_low": None, "ci_95_high": None, "p_value": None, "held_until_samples": needed}
    cs = st.confidence_sequence(stats, policy.alpha, n_tune=policy.tuning_samples(), null=neutral)
    fixed = st.fixed_ci(stats, policy.alpha)
    out = {**base, "estimate": cs.estimate, "ci_95_low": cs.low, "ci_95_high": cs.high, "p_value": cs.p_value,
           "se": stats.se, "fixed_ci_95_low": fixed.low, "fixed_ci_95_high": fixed.high}
    if margin is not None:
        out["non_inferiority"] = _non_inferiority(stats, neutral, margin, METRIC_BETTER[name], policy)
    return out


def _regression(store: Store, experiment_id: str, experiment: Experiment, edge: st.SufficientStats
                ) -> tuple[st.AdjustedEstimate | None, dict[str, Any] | None]:
    """The declared regression adjustment of the deltas, and its report.

    The adjusted estimate is the verdict's basis only when every covariate has a declared centre (its known
    mean): then it estimates the population effect with the variance the covariates explain removed. Centred
    at the sample's own means it estimates the effect on the experiment's observed mix of pairs, which differs
    from the population effect when the effect varies with the covariates; that read-out is reported, never the
    basis. Returns (estimate for the basis or None, report or None)."""
    adjust_for = experiment.statistics.adjust_for
    if not adjust_for:
        return None, None
    names = list(adjust_for)
    centres = [adjust_for[c] for c in names]
    cov = covariate_stats(store, experiment_id, names)
    report: dict[str, Any] = {"covariates": names, "centres": centres, "pairs_missing_covariates": cov["missing"],
                              "applied": False, "verdict_basis": False}
    if cov["missing"]:
        report["reason"] = f"{cov['missing']} of {cov['pairs']} pairs lack a numeric value for a declared covariate"
        return None, report
    if cov["stats"] is None or cov["stats"]["n"] != edge.n:
        report["reason"] = "no pairs yet"
        return None, report
    adjusted = st.regression_adjusted(st.RegressionStats(**cov["stats"]), centres)
    if adjusted is None:
        report["reason"] = (f"needs at least {st.regression.MIN_PAIRS_PER_COVARIATE} pairs per covariate and "
                            "covariates that vary and are not collinear")
        return None, report
    report["applied"] = True
    if all(c is not None for c in centres):
        report["verdict_basis"] = True
        return adjusted, report
    report.update(estimate_bps=adjusted.estimate, se_bps=adjusted.se, se_unadjusted_bps=adjusted.se_unadjusted,
                  variance_reduction=adjusted.variance_reduction, coefficients=list(adjusted.coefficients),
                  reason="covariates without a declared centre: the adjusted interval is for the experiment's own mix "
                         "of pairs and is reported only")
    return None, report


# ---- confidence intervals (one look) -----------------------------------------------------------------
@dataclass
class IntervalsResult:
    experiment_id: str
    evaluation_id: int
    evaluation: dict[str, Any]


def _winsorized(store: Store, experiment_id: str, pct: float, upto: int | None = None) -> st.SufficientStats | None:
    w = winsorized_delta_stats(store, experiment_id, pct, upto=upto)
    if w is None:
        return None
    return st.SufficientStats(w["n"], w["total"], w["total_sq"], w["shift"], w["total_cube"])


def compute_intervals(store: Store, experiment_id: str) -> IntervalsResult:
    """One evaluation ("look") of an experiment from sufficient statistics aggregated in SQL; recorded in
    `experiment_evaluations` (append-only). Planned looks of a group-sequential or fixed-horizon design are
    analysed on their own first n_k pairs (one grouped aggregate), so their result never changes and data past
    the plan are not tested again. Impossible or non-finite statistics raise ``InvalidStatistics``."""
    exp = experiment_row(store, experiment_id)
    if exp is None:
        raise KeyError(f"experiment {experiment_id!r} is not registered")
    experiment = experiment_from_row(exp)
    plan = experiment.statistics
    policy = policy_of(experiment)
    metric_sums = metric_stats(store, experiment_id)
    edge = st.SufficientStats(*metric_sums["edge_delta_bps"])
    winsorized = None
    if plan.winsorize_pct:
        winsorized = _winsorized(store, experiment_id, plan.winsorize_pct)
    design = policy.design()
    look_stats: list[st.SufficientStats] = []
    raw_looks: list[st.SufficientStats] | None = None
    if design is not None:
        reached = design.look_samples[:design.looks_reached(edge.n)]
        raw_looks = [st.SufficientStats(*t) for t in look_delta_stats(store, experiment_id, reached)]
        look_stats = raw_looks
        if plan.winsorize_pct:
            look_stats = [_winsorized(store, experiment_id, plan.winsorize_pct, upto=m) for m in reached]
    adjusted, adjustment_report = _regression(store, experiment_id, experiment, edge)
    variant_count = control_count = None
    adaptive = experiment.contract.adaptive_allocation is not None
    if experiment.mode == "limited_live" and not adaptive:
        # Under adaptive allocation the shares change by design, so the declared split is no reference: the causal
        # stage checks the logged propensities instead (CAUSAL_ADAPTIVE_PROPENSITY_MISMATCH).
        variant_count, control_count = arm_fill_counts(store, exp)
    # Pairing keeps MAX(recorded_at_ms) in experiment_pairing_state: no scan of the samples for it.
    last_ms = (pairing_state(store, experiment_id) or {}).get("last_sample_at_ms")
    samples_per_day = None
    started_ms = experiment.started_at_ms
    if last_ms is not None and edge.n and last_ms > started_ms:
        samples_per_day = edge.n / ((last_ms - started_ms) / MS_PER_DAY)
    evaluation = evaluate(edge, policy, look_stats=look_stats, raw_look_stats=raw_looks,
                          variant_count=variant_count, control_count=control_count,
                          samples_per_day=samples_per_day, winsorized_stats=winsorized, adjusted=adjusted).to_dict()
    if adjustment_report is not None:
        evaluation["regression_adjustment"] = to_json(
            {**adjustment_report, **(evaluation.get("regression_adjustment") or {})})
    margins = dict(plan.non_inferiority_margins)
    metrics = {name: _metric_interval(name, st.SufficientStats(*metric_sums[name]), policy, margin=margins.get(name))
               for name in METRIC_EXPRESSIONS}
    for name in RATIO_METRICS:
        ratio = st.RatioStats(*metric_sums[name])
        metrics[name] = {**_metric_interval(name, ratio.linearized(), policy, margin=margins.get(name),
                                            method="ratio_delta_method"),
                         "numerator_mean": ratio.mean_x if ratio.n else None,
                         "denominator_mean": ratio.mean_y if ratio.n else None}
    evaluation["metrics"] = to_json(metrics)
    if adaptive:
        evaluation["srm_note"] = ("adaptive allocation: shares change by design; the logged propensities are checked "
                                  "instead (causal estimates)")
    evaluation["samples_per_day"] = samples_per_day
    evaluation["last_sample_at_ms"] = last_ms
    # The chain head this look used (its first edge.n samples), anchored with a key the store does not hold.
    head = anchor_head(store, experiment_id, edge.n, exp["declaration_sha256"])
    evaluation["chain_head"] = head.to_report() if head is not None else None
    evaluation_id = insert_evaluation(store, experiment_id, evaluation)
    return IntervalsResult(experiment_id, evaluation_id, evaluation)
