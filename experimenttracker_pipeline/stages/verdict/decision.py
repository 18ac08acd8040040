"""The verdict stage: the latest look and causal estimates judged on the goal surface, stop rules and governance; EXPERIMENT_RESULT when it changes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

from experimenttracker_pipeline.model.contract import build_contract
from experimenttracker_pipeline.model.declaration import (
    ExperimentDeclaration,
)
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.governance import operations as governance_ops
from experimenttracker_pipeline.stages.verdict.rule import (
    CONTROL_WINS,
    VARIANT_WINS,
    materially_changed,
)
from experimenttracker_pipeline.stages.verdict.surface import decide as decide_surface
from experimenttracker_pipeline.stages.verdict.surface import evaluate_stop_rules
from experimenttracker_pipeline.store import Store

log = logging.getLogger(__name__)
from experimenttracker_pipeline.stages.intervals.evaluation import (
    declaration_of,
    policy_of,
)
from experimenttracker_pipeline.stages.verdict.combine import (
    EXPERIMENT_RESULT,
    _result_payload,
    combine_verdict,
)


@dataclass
class VerdictResult:
    experiment_id: str
    verdict_id: int
    verdict: dict[str, Any]
    report: dict[str, Any] | None


def decide(store: Store, experiment_id: str) -> VerdictResult:
    """Combine the latest look with the latest causal estimates into the verdict; emit EXPERIMENT_RESULT (or
    EXPERIMENT_INSUFFICIENT_SAMPLES) only when the verdict or the evidence changed materially."""
    exp = store.get_experiment_row(experiment_id)
    evaluation_row = store.latest_row("experiment_evaluations", experiment_id)
    if exp is None or evaluation_row is None:
        raise KeyError(f"experiment {experiment_id!r} has no evaluation yet; materialize confidence_intervals first")
    evaluation = json.loads(evaluation_row["evaluation_json"])
    causal_row = store.latest_row("causal_estimates", experiment_id)
    causal = json.loads(causal_row["result_json"]) if causal_row else None
    decl = declaration_of(exp)
    final = combine_verdict(exp, evaluation, causal, policy_of(decl))
    fired = apply_goal_surface(store, exp, decl, evaluation, final)
    previous = store.last_reported_verdict(experiment_id)
    report = None
    with store.begin() as conn:
        if materially_changed(previous, final):
            event = final["event_type"]  # EXPERIMENT_RESULT, EXPERIMENT_INSUFFICIENT_SAMPLES or EXPERIMENT_SRM_DETECTED
            report = store.emit_report(
                conn, event_type=event, severity="WARN" if event != EXPERIMENT_RESULT else "INFO",
                dedupe_key=f"{event}:{experiment_id}:{evaluation_row['id']}", experiment_id=experiment_id,
                topic=OPERATIONS_TOPIC, payload=_result_payload(exp, final, evaluation_row["id"]))
        for rule in fired:  # each fired stop rule is a reason code and an OperationsReport, once per rule
            if rule.action == "stop":
                store.emit_report(conn, event_type=rule.reason_code, severity="WARN",
                                  dedupe_key=f"{rule.reason_code}:{experiment_id}", experiment_id=experiment_id,
                                  topic=OPERATIONS_TOPIC, payload=rule.to_report(experiment_id))
        verdict_id = store.insert_verdict(conn, {
            "experiment_id": experiment_id, "evaluation_id": evaluation_row["id"],
            "causal_id": causal_row["id"] if causal_row else None, "samples": final["samples"],
            "verdict": final["verdict"], "basis": final["basis"], "ci_95_low": final["ci_95_low"],
            "ci_95_high": final["ci_95_high"], "edge_delta_bps": final["edge_delta_bps"],
            "drift": bool(final["drift_signalled"]), "report_id": report["report_id"] if report else None,
            "verdict_json": json.dumps(final, sort_keys=True, default=str)})
    return VerdictResult(experiment_id, verdict_id, final, report)


# ---- goal surface, stop rules, governance (issue 6) ---------------------------------------------------------
GUARDRAIL_VERDICTS = ("guardrail_violated", "blocked_by_guardrail")


def apply_goal_surface(store: Store, exp: Mapping[str, Any], decl: ExperimentDeclaration, evaluation: Mapping[str, Any],
                       final: dict[str, Any]) -> list[Any]:
    """Judge every objective and constraint of the experiment's contract on its per-metric CIs (a winner that
    breaks a hard guardrail is not a winner), evaluate the stop rules, and attach the governance status.
    Mutates ``final``; returns the stop rules that fired."""
    contract = build_contract(decl)
    # Metrics without a CI (no data yet) are left out: the surface then reports their constraints as NO_DATA.
    metrics = {name: ci for name, ci in (evaluation.get("metrics") or {}).items()
               if ci.get("estimate") is not None and ci.get("ci_95_low") is not None and ci.get("ci_95_high") is not None}
    if final.get("ci_95_low") is not None:  # the primary metric on the verdict's own basis (e.g. AIPW)
        metrics["edge_delta_bps"] = {"estimate": final["edge_delta_bps"], "ci_95_low": final["ci_95_low"],
                                     "ci_95_high": final["ci_95_high"], "n": final["samples"]}
    treatment = contract.treatments[0].id
    stat_verdict = final["verdict"] if final["verdict"] in (VARIANT_WINS, CONTROL_WINS, "inconclusive", "insufficient_samples") else "inconclusive"
    surface = decide_surface(contract, {treatment: metrics}, stat_verdicts={treatment: stat_verdict})
    variant = surface.variant(treatment)
    final["surface"] = surface.to_export(include_metrics=False)
    final["reason_codes"] = sorted(set(final["reason_codes"]) | set(variant.reason_codes) - {"EXPERIMENT_INSUFFICIENT_SAMPLES"}
                                   | ({"EXPERIMENT_INSUFFICIENT_SAMPLES"} if final["verdict"] == "insufficient_samples" else set()))
    if final["verdict"] == VARIANT_WINS and variant.verdict in GUARDRAIL_VERDICTS:
        final["verdict"] = variant.verdict
        final["plain_english"] = ("The new strategy version did better on edge but did not hold a declared guardrail "
                                  f"({', '.join(c for c in variant.reason_codes if 'HARD' in c)}); it will not be promoted.")
    harmed = list(final.get("harmed_segments") or [])
    last_ms = evaluation.get("last_sample_at_ms")
    elapsed = timedelta(milliseconds=max(0, (last_ms or exp["started_at_ms"]) - exp["started_at_ms"]))
    conditional = evaluation.get("conditional_power")
    fired = evaluate_stop_rules(
        contract, elapsed=elapsed, efficacy_boundary_crossed=final["verdict"] == VARIANT_WINS,
        futile=bool(evaluation.get("futile")), harm=bool(harmed) or surface.harm,
        harm_reasons=[f"harmed segment {h}" for h in harmed] + list(surface.harm_reasons), decision=surface,
        primary_ci=metrics.get("edge_delta_bps"),
        conditional_power_bp=int(round(conditional * 10_000)) if isinstance(conditional, (int, float)) else None)
    final["stop_rules"] = [rule.to_export() for rule in fired]
    final["reason_codes"] = sorted(set(final["reason_codes"]) | {r.reason_code for r in fired if r.action == "stop"})
    status = governance_ops.governance_status(store, exp["experiment_id"], contract)
    final["governance"] = {"risk_level": status.risk.level, "approved": status.approved,
                           "missing_roles": list(status.missing_roles), "promotion_blocked": status.promotion_blocked,
                           "contract_digest": contract.digest}
    if status.promotion_blocked:
        governance_ops.flag_unapproved(store, exp["experiment_id"])
        final["reason_codes"] = sorted(set(final["reason_codes"]) | set(status.flags or []))
    return fired


