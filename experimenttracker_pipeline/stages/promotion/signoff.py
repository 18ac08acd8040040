"""The promotion gate over stored verdicts, human sign-offs of one verdict report, and the promotions audit."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from experimenttracker_pipeline.model.experiment import Experiment, experiment_from_row
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC, AnchorKey, SettingsError, anchor_key
from experimenttracker_pipeline.stages.promotion.gate import (
    Violation,
    audit_promotions,
    declaration_disagreements,
    promotion_decision,
)
from experimenttracker_pipeline.stages.verdict.assembly import EXPERIMENT_RESULT
from experimenttracker_pipeline.store import Store, advisory_lock
from experimenttracker_pipeline.stages.declarations.queries import comparison_rows, experiment_row, experiment_rows
from experimenttracker_pipeline.stages.promotion.queries import (
    insert_promotion,
    insert_signoff,
    promotions,
    signoffs,
)
from experimenttracker_pipeline.stages.samples.anchoring import signoff_hmac, signoff_problem
from experimenttracker_pipeline.stages.samples.recording import verify_samples
from experimenttracker_pipeline.stages.verdict.decision import experiment_overall
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id, latest_verdict

log = logging.getLogger(__name__)

EXPERIMENT_PROMOTED = "EXPERIMENT_PROMOTED"
PROMOTION_CHECKS_FAILING = "PROMOTION_CHECKS_FAILING"
# A/B/n: an experiment promotes one variant, its overall winner.
PROMOTION_NOT_OVERALL_WINNER = "PROMOTION_NOT_OVERALL_WINNER"
PROMOTION_OTHER_VARIANT_PROMOTED = "PROMOTION_OTHER_VARIANT_PROMOTED"
# Advisory-lock namespace of an A/B/n experiment's promotions (see store.advisory_lock).
PROMOTION_WORK = 7423006

class SignoffError(ValueError):
    """A sign-off that cannot be recorded (unknown experiment or report, report of another experiment, failing
    blocking checks)."""


@dataclass
class PromotionResult:
    experiment_id: str
    state: str
    reason_code: str
    detail: str
    promoted_now: bool


def promotion_state(store: Store, experiment_id: str, *, apply: bool = False) -> PromotionResult:
    """Run the promotion gate on the latest verdict report; with ``apply`` record a promotion it allows."""
    exp = experiment_row(store, experiment_id)
    report_id = latest_result_report_id(store, experiment_id)
    report = store.report(report_id) if report_id else None
    if exp is None or report is None:
        return PromotionResult(experiment_id, "no_verdict", "PROMOTION_NO_VERDICT", "no verdict report yet", False)
    if any(p["report_id"] == report_id for p in promotions(store, experiment_id)):
        return PromotionResult(experiment_id, "promoted", "PROMOTION_RECORDED", f"promoted on report {report_id}", False)
    latest = latest_verdict(store, experiment_id)
    governance = (json.loads(latest["verdict_json"]).get("governance") or {}) if latest else {}
    if governance.get("promotion_blocked"):
        missing = ", ".join(governance.get("missing_roles") or []) or "risk above the PoLB maximum"
        return PromotionResult(experiment_id, "blocked_by_governance", "EXPERIMENT_UNAPPROVED",
                               f"contract {governance.get('contract_digest')} lacks approvals: {missing}", False)
    problems = declaration_problems(exp)
    if problems:  # the declaration cannot be trusted: decided on before its flags are read
        decision = promotion_decision(auto_promote_on_winning=False, require_human_signoff=True, traffic_split_pct=0,
                                      verdict=report.get("verdict"), verdict_report_id=report_id,
                                      declaration_problems=problems)
        return PromotionResult(experiment_id, "declaration_tampered", decision.reason_code, decision.detail, False)
    experiment = experiment_from_row(exp)
    if experiment.is_comparison and report.get("verdict") == "variant_wins":
        refused = one_variant_problem(store, experiment)
        if refused is not None:
            return PromotionResult(experiment_id, "not_promotable", refused[0], refused[1], False)
    recorded_signoffs = signoffs(store, experiment_id)
    decision = promotion_decision(
        # A sandbox verdict rests on logs alone (spec section 6: going live needs accountable people): it is
        # promoted only on a human sign-off of its report, never automatically.
        auto_promote_on_winning=experiment.auto_promote_on_winning,
        require_human_signoff=experiment.require_human_signoff or experiment.sandbox_policy is not None,
        traffic_split_pct=experiment.traffic_split_pct, verdict=report.get("verdict"), verdict_report_id=report_id,
        signoffs=[{**s, "signed_at": str(s["signed_at"])} for s in recorded_signoffs], experiment_id=experiment_id)
    if not decision.promote:
        state = "awaiting_signoff" if decision.reason_code.endswith("AWAITING_SIGNOFF") else "not_promotable"
        return PromotionResult(experiment_id, state, decision.reason_code, decision.detail, False)
    if not apply:
        return PromotionResult(experiment_id, "promotable", decision.reason_code, decision.detail, False)
    # Only when a promotion would be recorded (once per report): the full chain check is a scan of the samples.
    failing = failing_checks(store, experiment_id)
    if failing:
        return PromotionResult(experiment_id, "blocked_by_checks", PROMOTION_CHECKS_FAILING,
                               "the experiment's blocking checks fail: " + "; ".join(failing), False)
    signoff_id = next((s["id"] for s in recorded_signoffs if decision.signoff and s["report_id"] == report_id
                       and s["approver"] == decision.signoff.approver), None)
    # The variants of one A/B/n experiment are promoted one at a time, each after seeing the others' promotions:
    # two passes can never both record one.
    with _one_variant_at_a_time(store, experiment):
        refused = one_variant_problem(store, experiment) if experiment.is_comparison else None
        if refused is not None:
            return PromotionResult(experiment_id, "not_promotable", refused[0], refused[1], False)
        with store.begin() as conn:
            promoted = insert_promotion(conn, {"experiment_id": experiment_id, "report_id": report_id,
                                               "variant_slug": experiment.variant_slug, "verdict": report["verdict"],
                                               "signoff_id": signoff_id})
            if promoted:
                store.emit_report(conn, event_type=EXPERIMENT_PROMOTED, severity="INFO",
                                  dedupe_key=f"{EXPERIMENT_PROMOTED}:{report_id}", experiment_id=experiment_id,
                                  topic=OPERATIONS_TOPIC,
                                  payload={"experiment_id": experiment_id, "variant_slug": experiment.variant_slug,
                                           "verdict_report_id": report_id, "reason_code": decision.reason_code,
                                           "detail": decision.detail})
    return PromotionResult(experiment_id, "promoted", decision.reason_code, decision.detail, promoted)


def _one_variant_at_a_time(store: Store, experiment: Experiment):
    """The lock under which a comparison of an A/B/n experiment is promoted (none for other experiments). Taken
    after the pass's per-comparison lock, always in that order, so passes never wait on each other in a cycle."""
    if not experiment.is_comparison:
        return contextlib.nullcontext()
    return advisory_lock(store, PROMOTION_WORK, experiment.parent.experiment_id)


def one_variant_problem(store: Store, comparison: Experiment) -> tuple[str, str] | None:
    """Why a winning comparison of an A/B/n experiment may not be promoted: another of its variants is promoted
    already, or this variant is not the overall winner (the best-ranked winning treatment); None when it may."""
    parent_id = comparison.parent.experiment_id
    for sibling in comparison_rows(store, parent_id):
        if sibling["experiment_id"] != comparison.experiment_id and promotions(store, sibling["experiment_id"]):
            return (PROMOTION_OTHER_VARIANT_PROMOTED,
                    f"{sibling['experiment_id']} is promoted already: an experiment promotes one variant")
    overall = experiment_overall(store, parent_id)
    if overall is not None and overall["winning_variant"] != comparison.variant_id:
        return (PROMOTION_NOT_OVERALL_WINNER,
                f"variant {comparison.variant_id} beat the control, but the overall winner of {parent_id} is "
                f"{overall['winning_variant']} (ranking {', '.join(overall['ranking'])})")
    return None


def record_signoff(store: Store, experiment_id: str, approver: str, report_id: str, note: str | None = None) -> dict[str, Any]:
    """Record that ``approver`` approves the verdict report ``report_id`` (that report only, not a later one)."""
    if not approver or not approver.strip():
        raise SignoffError("--approver must name a person")
    if experiment_row(store, experiment_id) is None:
        raise SignoffError(f"unknown experiment {experiment_id!r}")
    report = store.report(report_id)
    if report is None:
        raise SignoffError(f"unknown report {report_id!r}")
    if report.get("experiment_id") != experiment_id or report.get("event_type") != EXPERIMENT_RESULT:
        raise SignoffError(f"report {report_id} is not an EXPERIMENT_RESULT of {experiment_id}")
    if any(s["report_id"] == report_id and s["approver"] == approver.strip() for s in signoffs(store, experiment_id)):
        raise SignoffError(f"{approver} has already signed off report {report_id}")
    failing = failing_checks(store, experiment_id)
    if failing:
        raise SignoffError(f"{experiment_id} cannot be signed off or promoted while its blocking checks fail: "
                           + "; ".join(failing))
    try:
        key = anchor_key()
    except SettingsError as exc:
        raise SignoffError(f"a sign-off is certified with the anchor key, which cannot be read: {exc}") from exc
    certificate = signoff_hmac(key, experiment_id, report_id, report["verdict"], approver.strip(), note)
    return insert_signoff(store, experiment_id, report_id, report["verdict"], approver.strip(), note, certificate)


def declaration_problems(exp: dict[str, Any]) -> list[str]:
    """Where the stored experiments row disagrees with its stored declaration or that declaration's digest."""
    try:
        declared = experiment_from_row(exp).to_row()
    except Exception:  # noqa: BLE001 - any unreadable declaration is reported, never raised
        declared = None
    return declaration_disagreements(exp, declared)


def promotion_violations(store: Store, experiment_id: str | None = None) -> list[Any]:
    """Promotions recorded without the sign-off their experiment requires, and experiments whose declaration
    columns disagree with their stored declaration (the blocking sign-off check's audit). The audit reads each
    experiment's flags from its stored declaration, never from the columns alone."""
    if experiment_id is None:
        rows = experiment_rows(store)
    else:
        rows = [e for e in [experiment_row(store, experiment_id)] if e is not None]
    configs: dict[str, Any] = {}
    violations: list[Any] = []
    for e in rows:
        problems = declaration_problems(e)
        if problems:
            # No config: the audit then fails closed (sign-off required, no auto-promotion).
            violations.append(Violation(e["experiment_id"], None, "declaration tampered: " + "; ".join(problems)))
        else:
            configs[e["experiment_id"]] = experiment_from_row(e).to_row()
    promoted = [{**p, "promoted_at": str(p["promoted_at"]),
                 "traffic_split_pct": (configs.get(p["experiment_id"]) or {}).get("traffic_split_pct")}
                for p in promotions(store, experiment_id)]
    recorded = signoffs(store, experiment_id)
    keys: list[AnchorKey | SettingsError] = []  # read once, and only when a sign-off carries an HMAC
    for s in recorded:
        if s["anchor_hmac"] is not None and not keys:
            try:
                keys.append(anchor_key())
            except SettingsError as exc:
                keys.append(exc)
        problem = signoff_certificate_problem(store, s, keys[0] if keys else None)
        if problem:
            violations.append(Violation(s["experiment_id"], s["report_id"], problem, None))
    signed = [{**s, "signed_at": str(s["signed_at"])} for s in recorded]
    return violations + audit_promotions(promoted, signed, configs)


def signoff_certificate_problem(store: Store, signoff: dict[str, Any], key: AnchorKey | SettingsError | None) -> str | None:
    """Why a stored sign-off is not vouched for by its HMAC (``key``: the anchor key, or why it cannot be read). A
    sign-off without one passes only when its report has no anchored chain head (recorded before tamper evidence
    existed)."""
    if signoff["anchor_hmac"] is None:
        report = store.report(signoff["report_id"]) or {}
        if report.get("chain_head") is None:
            return None
        return f"sign-off {signoff['id']} by {signoff['approver']!r} carries no HMAC (certificate removed)"
    if not isinstance(key, AnchorKey):
        return f"sign-off {signoff['id']} cannot be verified: {key}"
    return signoff_problem(key, signoff)


def failing_checks(store: Store, experiment_id: str) -> list[str]:
    """Why the experiment's blocking checks (samples_hash_chain_intact, promotions_have_signoff) fail now; empty
    when both pass. Sign-off and promotion are refused while this is not empty."""
    failing = []
    _, broken = verify_samples(store, experiment_id)
    if broken is not None:
        failing.append(f"samples_hash_chain_intact: sample_n {broken.sample_n}: {broken.problem}")
    failing += [f"promotions_have_signoff: {v.reason}" for v in promotion_violations(store, experiment_id)]
    return failing


def awaiting_signoff(store: Store) -> list[str]:
    """The experiments whose latest verdict report waits for a human sign-off."""
    return [e["experiment_id"] for e in experiment_rows(store)
            if promotion_state(store, e["experiment_id"]).state == "awaiting_signoff"]
