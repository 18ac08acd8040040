"""The verdict of one experiment, assembled in one place (pure: no database, no Dagster).

``assemble_verdict`` reads as the steps a verdict goes through, all driven by the typed
:class:`~experimenttracker_pipeline.model.experiment.Experiment`:

1. the statistical verdict of the latest look (``rule.evaluate``, already in ``evaluation``) is combined with the
   causal estimates: on the AIPW basis for a limited-live experiment whose assignment was not uniformly random,
   and never a winner with a harmed segment (``combine_verdict``);
2. the goal surface judges every objective and constraint of the contract on the per-metric CIs: a winner that
   breaks a hard guardrail is not a winner (``judge_goal_surface``);
3. the contract's stop rules are evaluated (also in ``judge_goal_surface``);
4. the governance status (risk level, approvals of the current contract digest) is attached; an online
   experiment without its approvals is blocked from promotion (``attach_governance``).

The verdict stage (``decision.decide``) reads the inputs, calls this, and writes the verdict and its reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.model.experiment import Experiment
from experimenttracker_pipeline.model.numbers import to_json
from experimenttracker_pipeline.stages.governance.risk import GovernanceStatus
from experimenttracker_pipeline.stages.reporting.deciding import ADAPTIVE_BASIS, DECIDING_CI, deciding_ci
from experimenttracker_pipeline.stages.verdict.rule import (
    CONTROL_WINS,
    PLAIN_ENGLISH,
    VARIANT_WINS,
    EvaluationPolicy,
)
from experimenttracker_pipeline.stages.verdict.surface import FiredRule
from experimenttracker_pipeline.stages.verdict.surface import decide as decide_surface
from experimenttracker_pipeline.stages.verdict.surface import evaluate_stop_rules
from experimenttracker_pipeline.stages.verdict.wording import reconcile_wording

EXPERIMENT_RESULT = "EXPERIMENT_RESULT"
EXPERIMENT_INSUFFICIENT_SAMPLES = "EXPERIMENT_INSUFFICIENT_SAMPLES"
EXPERIMENT_HARMED_SEGMENT = "EXPERIMENT_HARMED_SEGMENT"
HARM_DETECTED = "harm_detected"
GUARDRAIL_VERDICTS = ("guardrail_violated", "blocked_by_guardrail")
NON_INFERIORITY_FAILED = "EXPERIMENT_NON_INFERIORITY_FAILED"
NON_INFERIORITY_UNRESOLVED = "EXPERIMENT_NON_INFERIORITY_UNRESOLVED"


@dataclass
class AssembledVerdict:
    final: dict[str, Any]  # the stored verdict document (experiment_verdicts.verdict_json)
    fired: list[FiredRule]  # the stop rules that fired
    promotion_blocked: bool  # by governance: an online experiment without the approvals it needs


def assemble_verdict(experiment: Experiment, evaluation: Mapping[str, Any], causal: Mapping[str, Any] | None,
                     governance: GovernanceStatus) -> AssembledVerdict:
    """The final verdict of one experiment from its latest look (``evaluation``), its latest causal estimates
    (``causal``, or None) and its governance status."""
    final = combine_verdict(experiment, evaluation, causal, policy_of(experiment))
    fired = judge_goal_surface(experiment, evaluation, final)
    reconcile_wording(final)  # the plain English names the stop rules and harmed segments found above
    attach_governance(final, experiment, governance)
    return AssembledVerdict(final, fired, governance.promotion_blocked)


def policy_of(experiment: Experiment) -> EvaluationPolicy:
    """The verdict rule's policy from the experiment's core fields and statistics plan."""
    plan = experiment.statistics
    # A comparison of an A/B/n experiment is one of k tests: each at alpha / k (Bonferroni), and its drift test
    # split the same way, so the chance of any false verdict or drift signal across the k stays at alpha.
    k = experiment.family_size
    return EvaluationPolicy(
        min_samples_for_decision=experiment.min_samples_for_decision, ci_method=plan.ci_method,
        expected_samples=plan.expected_samples, planned_looks=plan.planned_looks,
        planned_max_samples=plan.planned_max_samples, mde_bps=plan.mde_bps, expected_sd_bps=plan.expected_sd_bps,
        mode=experiment.mode, traffic_split_pct=experiment.srm_split_pct, winsorize_pct=plan.winsorize_pct,
        drift_margin_bps=plan.drift_margin_bps, prior_mean_bps=plan.prior_mean_bps, prior_sd_bps=plan.prior_sd_bps,
        alpha=EvaluationPolicy.alpha / k, treatments=k)


def _always_valid_from_estimate(estimate: float, se: float, n: int, policy: EvaluationPolicy) -> tuple[float, float]:
    """Widen an estimate's CI to the same always-valid footing as the paired verdict: the normal-mixture
    boundary applied to the estimator's influence-function mean (sd = se * sqrt(n))."""
    rho = st.mixture_rho(policy.tuning_samples(), policy.alpha)
    half = st.normal_mixture_halfwidth(n, se * math.sqrt(n), policy.alpha, rho)
    return estimate - half, estimate + half


def combine_verdict(experiment: Experiment, evaluation: Mapping[str, Any], causal: Mapping[str, Any] | None,
                    policy: EvaluationPolicy) -> dict[str, Any]:
    """The final verdict: the statistical verdict, on the causal (AIPW) basis for a limited-live experiment
    whose assignment was not uniformly random, and never a winner with a harmed segment."""
    final = {key: evaluation.get(key) for key in (
        "verdict", "event_type", "ci_method", "ci_95_low", "ci_95_high", "fixed_ci_95_low", "fixed_ci_95_high",
        "edge_delta_bps", "samples", "p_value", "fixed_p_value", "power", "drift_signalled", "drift_z", "drift_bound",
        "drift_rule", "futile", "srm", "information_fraction", "gs_boundary", "plain_english", "look_samples",
        "next_look_samples", "skewness", "skew_min_samples", "non_inferiority", "bayesian", "regression_adjustment",
        "chain_head")}
    final["multiple_testing"] = evaluation.get("multiple_testing") or {"correction": "none", "family_size": 1}
    final["reason_codes"] = list(evaluation.get("reason_codes") or [])
    final["basis"] = evaluation.get("ci_method")
    if experiment.sandbox_policy is not None and causal:
        sandbox_verdict(experiment, causal, policy, final)
    verdict = final["verdict"]
    decidable = verdict in (VARIANT_WINS, CONTROL_WINS, "inconclusive")
    if causal and decidable:
        basis = causal.get("verdict_basis")
        # "naive" is the causal layer's basis only when the logged propensity is constant (plain randomisation), so
        # the paired CI stays valid; otherwise the (trimmed) AIPW estimate is the basis, never a difference of means.
        # Under adaptive allocation it is the AIPW estimate from the logged propensities ("aipw_adaptive").
        estimate = (causal.get(basis) or {}) if basis in ("aipw", "aipw_trimmed", "ipw", ADAPTIVE_BASIS) else {}
        if basis == ADAPTIVE_BASIS:
            final["adaptive_analysis"] = _adaptive_summary(causal)
            if not estimate and verdict in (VARIANT_WINS, CONTROL_WINS):
                # The paired difference is biased under changing shares: without the adaptive estimate, no winner.
                verdict = "inconclusive"
                final.update(verdict=verdict, plain_english=(
                    "Traffic shares adapt to the data, and too few fills carry a logged assignment propensity to "
                    "estimate the effect validly; no conclusion is drawn."))
        if experiment.mode == "limited_live" and estimate.get("estimate_bps") is not None and estimate.get("se"):
            # The adaptive estimate averages its scores over every arm's usable fills: its own n.
            n_fills = int((estimate.get("n") if basis == ADAPTIVE_BASIS else None) or causal.get("n")
                          or causal.get("fills") or final["samples"] or 0)
            low, high = _always_valid_from_estimate(estimate["estimate_bps"], estimate["se"], max(n_fills, 2), policy)
            verdict = VARIANT_WINS if low > 0 else CONTROL_WINS if high < 0 else "inconclusive"
            final.update(verdict=verdict, basis=f"{basis}_always_valid", ci_95_low=low, ci_95_high=high,
                         edge_delta_bps=estimate["estimate_bps"], paired_ci_95_low=evaluation.get("ci_95_low"),
                         paired_ci_95_high=evaluation.get("ci_95_high"))
            final["plain_english"] = PLAIN_ENGLISH.get(verdict, final["plain_english"])
            if causal.get("estimate_reliable") is False:
                # Poor overlap or tiny arms: a warning reason code, not a confident number.
                verdict = "inconclusive"
                final.update(verdict=verdict, plain_english=(
                    "The routing left too little overlap between variant and control fills to estimate the effect "
                    "reliably; no conclusion is drawn."))
            if verdict == CONTROL_WINS and high < -policy.drift_margin_bps:
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
    if final["verdict"] == CONTROL_WINS and (final.get("ci_95_high") is None
                                             or final["ci_95_high"] < -policy.drift_margin_bps):
        final["drift_signalled"] = True
    final["reason_codes"] = sorted(set(final["reason_codes"]))
    return final


SANDBOX_BASIS = "off_policy_dr_always_valid"


def sandbox_verdict(experiment: Experiment, causal: Mapping[str, Any], policy: EvaluationPolicy,
                    final: dict[str, Any]) -> None:
    """A sandbox experiment has no pairs: its verdict is on the DR estimate of candidate - logged from the
    control's usable logs (``min_samples_for_decision`` counts them), widened to always-valid like the AIPW
    basis, and inconclusive when the weights' overlap gates fail. Updates ``final``."""
    logs = causal.get("sandbox") or {}
    n = int(logs.get("logs") or 0)
    dr = (logs.get("difference") or {}).get("dr") or {}
    estimate, se = dr.get("estimate_bps"), dr.get("se")
    final.update(samples=n, basis=SANDBOX_BASIS, p_value=None, power=None, futile=False, srm=None,
                 information_fraction=None, gs_boundary=None, look_samples=None, next_look_samples=None,
                 skewness=None, skew_min_samples=None, non_inferiority=None, bayesian=None, regression_adjustment=None,
                 edge_delta_bps=estimate, fixed_ci_95_low=dr.get("ci_95_low"), fixed_ci_95_high=dr.get("ci_95_high"),
                 fixed_p_value=math.erfc(abs(estimate / se) / math.sqrt(2)) if estimate is not None and se else None,
                 ci_95_low=None, ci_95_high=None, drift_signalled=False)
    final["reason_codes"] = [c for c in final["reason_codes"] if c != EXPERIMENT_INSUFFICIENT_SAMPLES]
    where = f"{n} logged fills of {experiment.control_slug}"
    if estimate is not None and se:
        final["ci_95_low"], final["ci_95_high"] = _always_valid_from_estimate(estimate, se, max(n, 2), policy)
    if n < policy.min_samples_for_decision or final["ci_95_low"] is None:
        final.update(verdict="insufficient_samples", event_type=EXPERIMENT_INSUFFICIENT_SAMPLES, plain_english=(
            f"Only {where} carry the propensities needed to value policy {experiment.sandbox_policy} offline "
            f"({policy.min_samples_for_decision} needed); no conclusion yet."))
        return
    low, high = final["ci_95_low"], final["ci_95_high"]
    verdict = VARIANT_WINS if low > 0 else CONTROL_WINS if high < 0 else "inconclusive"
    text = {VARIANT_WINS: "would have earned more edge than", CONTROL_WINS: "would have earned less edge than",
            "inconclusive": "cannot yet be told apart from"}[verdict]
    plain = (f"Valued offline from {where}, candidate policy {experiment.sandbox_policy} {text} the logging "
             "policy (doubly robust estimate; no live exposure).")
    if causal.get("estimate_reliable") is False:
        verdict = "inconclusive"
        plain = (f"The logging policy rarely took the actions candidate policy {experiment.sandbox_policy} would "
                 f"take ({where}): too little overlap to value it reliably; no conclusion is drawn.")
    final.update(verdict=verdict, event_type=EXPERIMENT_RESULT, plain_english=plain)


def _adaptive_summary(causal: Mapping[str, Any]) -> dict[str, Any]:
    """What the verdict says about an analysis under adaptive allocation: fills used and excluded (and why)."""
    block = causal.get("adaptive") or {}
    return {"basis": ADAPTIVE_BASIS, "fills": block.get("fills"), "fills_used": block.get("fills_used"),
            "excluded": block.get("excluded"), "method": block.get("method")}


def judge_goal_surface(experiment: Experiment, evaluation: Mapping[str, Any], final: dict[str, Any]) -> list[FiredRule]:
    """Judge every objective and constraint of the contract on its per-metric CIs (a winner that breaks a hard
    guardrail is not a winner) and evaluate the stop rules. Updates ``final``; returns the stop rules that fired."""
    contract = experiment.contract
    # Metrics without a CI (no data yet) are left out: the surface then reports their constraints as NO_DATA.
    metrics = {name: ci for name, ci in (evaluation.get("metrics") or {}).items()
               if ci.get("estimate") is not None and ci.get("ci_95_low") is not None and ci.get("ci_95_high") is not None}
    family_wise = len(contract.eval_surface.primary) * len(contract.treatments) > 1
    if final.get("ci_95_low") is not None and not family_wise:
        # The one primary metric on the verdict's own basis (e.g. AIPW, a planned look). Several primary metrics
        # are judged together on their always-valid intervals instead (Holm on their always-valid p-values).
        metrics["edge_delta_bps"] = {"estimate": final["edge_delta_bps"], "ci_95_low": final["ci_95_low"],
                                     "ci_95_high": final["ci_95_high"], "n": final["samples"]}
    treatment = contract.treatments[0].id
    stat_verdict = final["verdict"] if final["verdict"] in (VARIANT_WINS, CONTROL_WINS, "inconclusive", "insufficient_samples") else "inconclusive"
    overrides = None if family_wise and stat_verdict != "insufficient_samples" else {treatment: stat_verdict}
    surface = decide_surface(contract, {treatment: metrics}, stat_verdicts=overrides,
                             alpha=float(evaluation.get("alpha") or 0.05))
    variant = surface.variant(treatment)
    final["multiple_testing"] = dict(surface.multiple_testing) if family_wise else {
        "correction": "none", "family_size": 1, "alpha": evaluation.get("alpha")}
    if experiment.family_size > 1:
        # The comparison's intervals are already at alpha / k: together they are simultaneous at alpha.
        final["multiple_testing"] = {**final["multiple_testing"], "correction": "bonferroni_across_treatments",
                                     "family_size": experiment.family_size * final["multiple_testing"]["family_size"],
                                     "treatments": experiment.family_size, "family_alpha": EvaluationPolicy.alpha,
                                     "alpha": evaluation.get("alpha")}
    if family_wise and final["verdict"] in (VARIANT_WINS, CONTROL_WINS, "inconclusive"):
        final["edge_verdict"] = final["verdict"]
        final["verdict"] = variant.stat_verdict
        final["plain_english"] = PLAIN_ENGLISH.get(variant.stat_verdict, final["plain_english"])
        if variant.stat_verdict == CONTROL_WINS:
            final["drift_signalled"] = True
    _apply_non_inferiority(evaluation, final)
    final["surface"] = surface.to_export(include_metrics=False)
    final["reason_codes"] = sorted(set(final["reason_codes"]) | set(variant.reason_codes) - {EXPERIMENT_INSUFFICIENT_SAMPLES}
                                   | ({EXPERIMENT_INSUFFICIENT_SAMPLES} if final["verdict"] == "insufficient_samples" else set()))
    if final["verdict"] == VARIANT_WINS and variant.verdict in GUARDRAIL_VERDICTS:
        final["verdict"] = variant.verdict
        final["plain_english"] = ("The new strategy version did better on edge but did not hold a declared guardrail "
                                  f"({', '.join(c for c in variant.reason_codes if 'HARD' in c)}); it will not be promoted.")
    harmed = list(final.get("harmed_segments") or [])
    inferior = [m for m, r in (final.get("non_inferiority_margins") or {}).items() if r["status"] == "inferior"]
    last_ms = evaluation.get("last_sample_at_ms")
    elapsed = timedelta(milliseconds=max(0, (last_ms or experiment.started_at_ms) - experiment.started_at_ms))
    conditional = evaluation.get("conditional_power")
    fired = evaluate_stop_rules(
        contract, elapsed=elapsed, efficacy_boundary_crossed=final["verdict"] == VARIANT_WINS,
        futile=bool(evaluation.get("futile")), harm=bool(harmed) or surface.harm or bool(inferior),
        harm_reasons=[f"harmed segment {h}" for h in harmed] + list(surface.harm_reasons)
        + [f"{NON_INFERIORITY_FAILED}:{m}" for m in inferior], decision=surface,
        primary_ci=metrics.get("edge_delta_bps"),
        conditional_power_bp=int(round(conditional * 10_000)) if isinstance(conditional, (int, float)) else None)
    final["stop_rules"] = [rule.to_export() for rule in fired]
    final["reason_codes"] = sorted(set(final["reason_codes"]) | {r.reason_code for r in fired if r.action == "stop"})
    return fired


def _apply_non_inferiority(evaluation: Mapping[str, Any], final: dict[str, Any]) -> None:
    """Declared non-inferiority margins act as guardrails: a winner must be shown not worse than control by more
    than each margin (one-sided always-valid); shown worse by more is a guardrail violation (harm). Updates
    ``final``."""
    results = {name: ci["non_inferiority"] for name, ci in (evaluation.get("metrics") or {}).items()
               if ci.get("non_inferiority")}
    if not results:
        return
    final["non_inferiority_margins"] = results
    inferior = sorted(m for m, r in results.items() if r["status"] == "inferior")
    unresolved = sorted(m for m, r in results.items() if r["status"] != "non_inferior")
    codes = [f"{NON_INFERIORITY_FAILED}:{m}" for m in inferior]
    if inferior and final["verdict"] == VARIANT_WINS:
        final["verdict"] = "guardrail_violated"
    elif final["verdict"] == VARIANT_WINS and unresolved:
        final["verdict"] = "blocked_by_guardrail"
        codes += [f"{NON_INFERIORITY_UNRESOLVED}:{m}" for m in unresolved]
    if final["verdict"] in GUARDRAIL_VERDICTS:
        final["plain_english"] = ("The new strategy version did better on edge but was not shown to stay within a "
                                  "declared non-inferiority margin; it will not be promoted.")
    final["reason_codes"] = sorted(set(final["reason_codes"]) | set(codes))


def attach_governance(final: dict[str, Any], experiment: Experiment, status: GovernanceStatus) -> None:
    """Record the governance status of the current contract in ``final``; a promotion block adds its flags."""
    final["governance"] = {"risk_level": status.risk.level, "approved": status.approved,
                           "missing_roles": list(status.missing_roles), "promotion_blocked": status.promotion_blocked,
                           "contract_digest": experiment.governing.contract.digest}
    if status.promotion_blocked:
        final["reason_codes"] = sorted(set(final["reason_codes"]) | set(status.flags or []))


def result_payload(experiment: Experiment, final: Mapping[str, Any], evaluation_id: int) -> dict[str, Any]:
    """EXPERIMENT_RESULT in the spec section 13 shape (the outbox adds report_id, bot_id, report_kind, topic),
    plus the method, the fixed-horizon CI and the evidence; floats at report precision."""
    payload = {
        "experiment_id": experiment.experiment_id, "variant_slug": experiment.variant_slug,
        "control_slug": experiment.control_slug,
        "samples": final["samples"], "edge_delta_bps": final["edge_delta_bps"], "ci_95_low": final["ci_95_low"],
        "ci_95_high": final["ci_95_high"], "verdict": final["verdict"], "ci_method": final["basis"],
        "fixed_ci_95_low": final["fixed_ci_95_low"], "fixed_ci_95_high": final["fixed_ci_95_high"],
        "p_value": final["p_value"], "fixed_p_value": final["fixed_p_value"], "power": final["power"],
        "drift_signalled": bool(final["drift_signalled"]), "reason_codes": final["reason_codes"],
        "plain_english": final["plain_english"], "evaluation_id": evaluation_id,
        # Added fields (the ones above keep their names): the family-wise correction, the Bayesian read-out,
        # the variance reduction of a regression adjustment, and the non-inferiority results.
        "correction": (final.get("multiple_testing") or {}).get("correction", "none"),
        "multiple_testing": final.get("multiple_testing"),
        "bayesian": final.get("bayesian"),
        "variance_reduction": (final.get("regression_adjustment") or {}).get("variance_reduction"),
        "regression_adjustment": final.get("regression_adjustment"),
        "non_inferiority": final.get("non_inferiority"),
        "non_inferiority_margins": final.get("non_inferiority_margins"),
        "look_samples": final.get("look_samples"),
        # Under adaptive allocation: the fills the logged-propensity analysis used and excluded (and why).
        "adaptive_analysis": final.get("adaptive_analysis"),
        # The anchored chain head the verdict rests on: once published, a copy outside the store.
        "chain_head": final.get("chain_head"),
        # The interval the verdict was decided on, named as on every other surface, and why it is the one.
        DECIDING_CI: {k: v for k, v in deciding_ci(final).items() if k != "name"},
    }
    if experiment.is_comparison:
        # One treatment of an A/B/n experiment: its experiment and variant, and the family it is tested in.
        payload.update(parent_experiment_id=experiment.parent.experiment_id, variant_id=experiment.variant_id,
                       treatments=experiment.family_size)
    return to_json(payload)
