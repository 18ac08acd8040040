"""One evaluation (a look) of an experiment: confidence intervals, power and SRM from sufficient statistics aggregated in SQL."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.stages.verdict.assembly import policy_of
from experimenttracker_pipeline.stages.verdict.rule import (
    EvaluationPolicy,
    evaluate,
)
from experimenttracker_pipeline.store import METRIC_COLUMNS, Store

log = logging.getLogger(__name__)


MS_PER_DAY = 86_400_000

def _metric_interval(stats: st.SufficientStats, policy: EvaluationPolicy) -> dict[str, Any]:
    """The per-metric CI the goal surface judges guardrails on: the same always-valid footing as the verdict."""
    if stats.n < 2 or not math.isfinite(stats.variance):
        return {"estimate": stats.mean if stats.n else None, "ci_95_low": None, "ci_95_high": None, "n": stats.n}
    cs = st.confidence_sequence(stats, policy.alpha, n_tune=policy.tuning_samples())
    fixed = st.fixed_ci(stats, policy.alpha)
    return {"estimate": cs.estimate, "ci_95_low": cs.low, "ci_95_high": cs.high, "n": stats.n,
            "fixed_ci_95_low": fixed.low, "fixed_ci_95_high": fixed.high}


# ---- confidence intervals (one look) -----------------------------------------------------------------
@dataclass
class IntervalsResult:
    experiment_id: str
    evaluation_id: int
    evaluation: dict[str, Any]


def compute_intervals(store: Store, experiment_id: str) -> IntervalsResult:
    """One evaluation ("look") of an experiment from sufficient statistics aggregated in SQL; recorded in
    `experiment_evaluations` (append-only; its sample counts are the group-sequential look history)."""
    exp = store.get_experiment_row(experiment_id)
    if exp is None:
        raise KeyError(f"experiment {experiment_id!r} is not registered")
    experiment = experiment_from_row(exp)
    policy = policy_of(experiment)
    metric_sums = store.metric_stats(experiment_id)
    edge = st.SufficientStats(*metric_sums["edge_delta_bps"])
    winsorized = None
    if experiment.statistics.winsorize_pct:
        w = store.winsorized_delta_stats(experiment_id, experiment.statistics.winsorize_pct)
        if w is not None:
            winsorized = st.SufficientStats(w["n"], w["total"], w["total_sq"])
    variant_count = control_count = None
    if experiment.mode == "limited_live":
        variant_count, control_count = store.arm_fill_counts(exp)
    # Pairing keeps MAX(recorded_at_ms) in experiment_pairing_state: no scan of the samples for it.
    last_ms = (store.pairing_states_for(experiment_id) or {}).get("last_sample_at_ms")
    samples_per_day = None
    started_ms = experiment.started_at_ms
    if last_ms is not None and edge.n and last_ms > started_ms:
        samples_per_day = edge.n / ((last_ms - started_ms) / MS_PER_DAY)
    evaluation = evaluate(edge, policy, look_sample_counts=store.look_sample_counts(experiment_id),
                          variant_count=variant_count, control_count=control_count,
                          samples_per_day=samples_per_day, winsorized_stats=winsorized).to_dict()
    evaluation["metrics"] = {name: _metric_interval(st.SufficientStats(*metric_sums[name]), policy) for name in METRIC_COLUMNS}
    evaluation["samples_per_day"] = samples_per_day
    evaluation["last_sample_at_ms"] = last_ms
    evaluation_id = store.insert_evaluation(experiment_id, evaluation)
    return IntervalsResult(experiment_id, evaluation_id, evaluation)


