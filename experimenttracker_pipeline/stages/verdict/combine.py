"""Combine the statistical verdict with the causal estimates (pure): the deciding basis, harm, the EXPERIMENT_RESULT payload."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.stages.verdict.rule import (
    CONTROL_WINS,
    PLAIN_ENGLISH,
    VARIANT_WINS,
    EvaluationPolicy,
)

log = logging.getLogger(__name__)


EXPERIMENT_RESULT = "EXPERIMENT_RESULT"
EXPERIMENT_INSUFFICIENT_SAMPLES = "EXPERIMENT_INSUFFICIENT_SAMPLES"

EXPERIMENT_HARMED_SEGMENT = "EXPERIMENT_HARMED_SEGMENT"
HARM_DETECTED = "harm_detected"

def _always_valid_from_estimate(estimate: float, se: float, n: int, policy: EvaluationPolicy) -> tuple[float, float]:
    """Widen an estimate's CI to the same always-valid footing as the paired verdict: the normal-mixture
    boundary applied to the estimator's influence-function mean (sd = se * sqrt(n))."""
    rho = st.mixture_rho(policy.tuning_samples(), policy.alpha)
    half = st.normal_mixture_halfwidth(n, se * math.sqrt(n), policy.alpha, rho)
    return estimate - half, estimate + half


def combine_verdict(exp: Mapping[str, Any], evaluation: Mapping[str, Any], causal: Mapping[str, Any] | None,
                    policy: EvaluationPolicy) -> dict[str, Any]:
    """The final verdict: the statistical verdict, on the causal (AIPW) basis for a limited-live experiment
    whose assignment was not uniformly random, and never a winner with a harmed segment."""
    final = {key: evaluation.get(key) for key in (
        "verdict", "event_type", "ci_method", "ci_95_low", "ci_95_high", "fixed_ci_95_low", "fixed_ci_95_high",
        "edge_delta_bps", "samples", "p_value", "fixed_p_value", "power", "drift_signalled", "drift_z", "drift_bound",
        "drift_rule", "futile", "srm", "information_fraction", "gs_boundary", "plain_english")}
    final["reason_codes"] = list(evaluation.get("reason_codes") or [])
    final["basis"] = evaluation.get("ci_method")
    verdict = final["verdict"]
    decidable = verdict in (VARIANT_WINS, CONTROL_WINS, "inconclusive")
    if causal and decidable:
        basis = causal.get("verdict_basis")
        # "naive" is the causal layer's basis only when the logged propensity is constant (plain randomisation), so
        # the paired CI stays valid; otherwise the (trimmed) AIPW estimate is the basis, never a difference of means.
        estimate = (causal.get(basis) or {}) if basis in ("aipw", "aipw_trimmed", "ipw") else {}
        if exp["mode"] == "limited_live" and estimate.get("estimate_bps") is not None and estimate.get("se"):
            n_fills = int(causal.get("n") or causal.get("fills") or final["samples"] or 0)
            low, high = _always_valid_from_estimate(estimate["estimate_bps"], estimate["se"], max(n_fills, 2), policy)
            verdict = VARIANT_WINS if low > 0 else CONTROL_WINS if high < 0 else "inconclusive"
            final.update(verdict=verdict, basis=f"{basis}_always_valid", ci_95_low=low, ci_95_high=high,
                         edge_delta_bps=estimate["estimate_bps"], paired_ci_95_low=evaluation.get("ci_95_low"),
                         paired_ci_95_high=evaluation.get("ci_95_high"))
            final["plain_english"] = PLAIN_ENGLISH.get(verdict, final["plain_english"])
            if causal.get("estimate_reliable") is False:
                # Poor overlap or tiny arms: a warning reason code, not a confident number (issue 5).
                verdict = "inconclusive"
                final.update(verdict=verdict, plain_english=(
                    "The routing left too little overlap between variant and control fills to estimate the effect "
                    "reliably; no conclusion is drawn."))
            if verdict == CONTROL_WINS:
                final["drift_signalled"] = True
        harmed = list(causal.get("harmed_segments") or [])
        final["harmed_segments"] = harmed
        if harmed:
            final["reason_codes"].append(EXPERIMENT_HARMED_SEGMENT)
            if verdict == VARIANT_WINS:
                final["verdict"] = HARM_DETECTED
                final["plain_english"] = ("The new strategy version did better on average but measurably worse for "
                                          f"{', '.join(harmed)}; it will not be promoted.")
        for code in causal.get("warnings") or []:
            final["reason_codes"].append(code)
    if final["verdict"] == CONTROL_WINS:
        final["drift_signalled"] = True
    final["reason_codes"] = sorted(set(final["reason_codes"]))
    return final


def _result_payload(exp: Mapping[str, Any], final: Mapping[str, Any], evaluation_id: int) -> dict[str, Any]:
    """EXPERIMENT_RESULT in the spec section 13 shape (the outbox adds report_id, bot_id, report_kind, topic),
    plus the method, the fixed-horizon CI and the evidence."""
    payload = {
        "experiment_id": exp["experiment_id"], "variant_slug": exp["variant_slug"], "control_slug": exp["control_slug"],
        "samples": final["samples"], "edge_delta_bps": final["edge_delta_bps"], "ci_95_low": final["ci_95_low"],
        "ci_95_high": final["ci_95_high"], "verdict": final["verdict"], "ci_method": final["basis"],
        "fixed_ci_95_low": final["fixed_ci_95_low"], "fixed_ci_95_high": final["fixed_ci_95_high"],
        "p_value": final["p_value"], "fixed_p_value": final["fixed_p_value"], "power": final["power"],
        "drift_signalled": bool(final["drift_signalled"]), "reason_codes": final["reason_codes"],
        "plain_english": final["plain_english"], "evaluation_id": evaluation_id,
    }
    # Six significant digits (not decimals): a p-value of 3e-15 must not be reported as 0.
    return {k: (float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v))
            for k, v in payload.items()}


