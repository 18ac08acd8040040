"""The promotion gate over stored verdicts, human sign-offs of one verdict report, and the promotions audit."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.promotion.gate import (
    audit_promotions,
    promotion_decision,
)
from experimenttracker_pipeline.stages.verdict.assembly import EXPERIMENT_RESULT
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.declarations.queries import experiment_row, experiment_rows
from experimenttracker_pipeline.stages.promotion.queries import (
    insert_promotion,
    insert_signoff,
    promotions,
    signoffs,
)
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id, latest_verdict

log = logging.getLogger(__name__)

EXPERIMENT_PROMOTED = "EXPERIMENT_PROMOTED"

class SignoffError(ValueError):
    """A sign-off that cannot be recorded (unknown experiment or report, report of another experiment)."""


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
    experiment = experiment_from_row(exp)
    recorded_signoffs = signoffs(store, experiment_id)
    decision = promotion_decision(
        auto_promote_on_winning=experiment.auto_promote_on_winning, require_human_signoff=experiment.require_human_signoff,
        traffic_split_pct=experiment.traffic_split_pct, verdict=report.get("verdict"), verdict_report_id=report_id,
        signoffs=[{**s, "signed_at": str(s["signed_at"])} for s in recorded_signoffs], experiment_id=experiment_id)
    if not decision.promote:
        state = "awaiting_signoff" if decision.reason_code.endswith("AWAITING_SIGNOFF") else "not_promotable"
        return PromotionResult(experiment_id, state, decision.reason_code, decision.detail, False)
    if not apply:
        return PromotionResult(experiment_id, "promotable", decision.reason_code, decision.detail, False)
    signoff_id = next((s["id"] for s in recorded_signoffs if decision.signoff and s["report_id"] == report_id
                       and s["approver"] == decision.signoff.approver), None)
    with store.begin() as conn:
        promoted = insert_promotion(conn, {"experiment_id": experiment_id, "report_id": report_id,
                                                 "variant_slug": experiment.variant_slug, "verdict": report["verdict"],
                                                 "signoff_id": signoff_id})
        if promoted:
            store.emit_report(conn, event_type=EXPERIMENT_PROMOTED, severity="INFO", dedupe_key=f"{EXPERIMENT_PROMOTED}:{report_id}",
                              experiment_id=experiment_id, topic=OPERATIONS_TOPIC,
                              payload={"experiment_id": experiment_id, "variant_slug": experiment.variant_slug,
                                       "verdict_report_id": report_id, "reason_code": decision.reason_code,
                                       "detail": decision.detail})
    return PromotionResult(experiment_id, "promoted", decision.reason_code, decision.detail, promoted)


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
    return insert_signoff(store, experiment_id, report_id, report["verdict"], approver.strip(), note)


def promotion_violations(store: Store, experiment_id: str | None = None) -> list[Any]:
    """Promotions recorded without the sign-off their experiment requires (the blocking check's audit), of every
    experiment or of one."""
    if experiment_id is None:
        configs = {e["experiment_id"]: e for e in experiment_rows(store)}
    else:
        row = experiment_row(store, experiment_id)
        configs = {experiment_id: row} if row else {}
    promoted = [{**p, "promoted_at": str(p["promoted_at"]), "traffic_split_pct": configs.get(p["experiment_id"], {}).get("traffic_split_pct")}
                for p in promotions(store, experiment_id)]
    signed = [{**s, "signed_at": str(s["signed_at"])} for s in signoffs(store, experiment_id)]
    return audit_promotions(promoted, signed, configs)




def awaiting_signoff(store: Store) -> list[str]:
    """The experiments whose latest verdict report waits for a human sign-off."""
    return [e["experiment_id"] for e in experiment_rows(store)
            if promotion_state(store, e["experiment_id"]).state == "awaiting_signoff"]
