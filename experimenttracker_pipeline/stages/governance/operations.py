"""Governance over the store: contracts, approvals, assignment log, EvalTrace and persona views.

Plain functions over a :class:`~experimenttracker_pipeline.store.Store` (no Dagster); the Dagster assets and the
CLI (``cli/governance.py``) call them. The domain logic lives in ``model.contract`` and in this stage's
``risk``, ``assignment`` and ``evaltrace`` modules; this module only gathers their inputs from the tables and
writes their records back.

* The contract of an experiment is that of its stored declaration (``experiments.declaration_json``, read into
  the typed experiment by ``model.experiment_from_row``), so it is exactly the contract the declaration file
  describes; ``record_contract`` keeps each distinct contract (canonical JSON + digest) in
  ``experiment_contracts``.
* Approvals are append-only and pin the digest of the contract current when they were given; only approvals of
  the current digest count (``governance_status``).
* ``flag_unapproved`` emits ``EXPERIMENT_UNAPPROVED`` once per contract digest for an online/degraded
  experiment that lacks the approvals its risk level requires. It is an alert and a promotion block: nothing
  here stops samples from being recorded.
* ``build_trace`` is deterministic: ``as_of`` (and, unless passed, ``created_at``) is the latest time recorded
  for the experiment in the store, never the wall clock, so exporting twice gives the same bytes.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model.contract import METRICS, ExperimentContract
from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.model.numbers import finite_number
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.governance.assignment import (
    REASON_ETH_FORCED_CONTROL,
    Assignment,
    AssignmentPlan,
    summary_from_counts,
)
from experimenttracker_pipeline.stages.governance.evaltrace import (
    PERSONAS,
    EvalTrace,
    build_eval_trace,
    render_persona,
)
from experimenttracker_pipeline.stages.governance.risk import (
    REVIEWERS,
    UNAPPROVED,
    Approval,
    GovernanceStatus,
    assess_risk,
    evaluate_governance,
)
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.causal_effects.queries import latest_causal
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.governance.queries import (
    append_assignments,
    approval_rows,
    assignment_counts,
    contract_rows,
    governance_event_times,
    insert_approval,
    record_contract_row,
    stop_rule_reports,
    units_assigned_off_control,
)
from experimenttracker_pipeline.stages.intervals.queries import latest_evaluation
from experimenttracker_pipeline.stages.promotion.queries import promotions, signoffs
from experimenttracker_pipeline.stages.samples.queries import sample_head
from experimenttracker_pipeline.stages.verdict.queries import latest_verdict

__all__ = [
    "KNOWN_ROLES", "GovernanceError", "UnknownExperimentError", "InvalidApprovalError", "RecordedApproval",
    "contract_for", "record_contract", "record_approval", "approvals_for", "governance_status", "assign_units",
    "build_trace", "persona_view", "persona_views", "flag_unapproved", "unapproved_dedupe_key",
]

# Every reviewer role the risk rubric can require (lib.governance.REVIEWERS), in escalation order.
KNOWN_ROLES: tuple[str, ...] = tuple(dict.fromkeys(r for level in ("low", "medium", "high") for r in REVIEWERS[level]))
MAX_APPROVER_LENGTH = 128
MAX_NOTE_LENGTH = 2000
ETH_FORBIDDEN_UNIT_RANDOMISED = "ETH_FORBIDDEN_UNIT_RANDOMISED"


class GovernanceError(ValueError):
    """A governance request that cannot be honoured (the message says why)."""


class UnknownExperimentError(GovernanceError, LookupError):
    """No experiment with this id is recorded."""


class InvalidApprovalError(GovernanceError):
    """An approval with an unknown role, an empty approver or an over-long note."""


@dataclass(frozen=True)
class RecordedApproval:
    approval: Approval
    new: bool  # False when the same person had already approved this contract in this role
    status: GovernanceStatus  # governance status after recording


# ---- contracts -------------------------------------------------------------------------------------
def _experiment_row(store: Store, experiment_id: str) -> dict[str, Any]:
    row = experiment_row(store, experiment_id)
    if row is None:
        raise UnknownExperimentError(f"unknown experiment {experiment_id!r}")
    return row


def contract_for(store: Store, experiment_id: str) -> ExperimentContract:
    """The current contract of ``experiment_id``: that of its stored declaration.

    Raises :class:`UnknownExperimentError`, or ``model.InvalidDeclaration`` naming every invalid field.
    """
    return experiment_from_row(_experiment_row(store, experiment_id)).contract


def record_contract(store: Store, contract: ExperimentContract) -> bool:
    """Store the contract's canonical JSON, digest, risk level and required roles; True when new (idempotent)."""
    return record_contract_row(store, contract_record(contract))


def contract_record(contract: ExperimentContract) -> dict[str, Any]:
    """The `experiment_contracts` row of a contract (canonical JSON, digest, risk level, required roles)."""
    risk = assess_risk(contract)
    return {
        "experiment_id": contract.experiment_id, "contract_digest": contract.digest,
        "contract_json": contract.canonical_bytes.decode("utf-8"), "risk_level": risk.level,
        "required_roles": cj.canonical_json(list(risk.required_reviewers)).decode("utf-8"),
    }


# ---- approvals -------------------------------------------------------------------------------------
def _clean_text(value: Any, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidApprovalError(f"{what} must be a non-empty string")
    text = value.strip()
    if len(text) > max_length:
        raise InvalidApprovalError(f"{what} is longer than {max_length} characters")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise InvalidApprovalError(f"{what} contains control characters")
    return text


def _approval_records(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"approver": r["approver"], "role": r["role"], "contract_digest": r["contract_digest"],
             "approved_at": cj.stored_timestamp(r["approved_at"]), "experiment_id": r["experiment_id"]} for r in rows]


def approvals_for(store: Store, experiment_id: str) -> list[Approval]:
    """Every approval recorded for the experiment (all contract digests), oldest first."""
    return [Approval.of(r) for r in _approval_records(approval_rows(store, experiment_id))]


def record_approval(store: Store, experiment_id: str, approver: str, role: str,
                    note: str | None = None) -> RecordedApproval:
    """Append an approval of the experiment's CURRENT contract digest by ``approver`` in ``role``.

    ``role`` must be one of :data:`KNOWN_ROLES` (case-insensitive). Approving twice in the same role is a no-op
    (``new=False``). A changed declaration has a new digest, so earlier approvals stop counting.
    """
    role_norm = role.strip().lower() if isinstance(role, str) else role
    if role_norm not in KNOWN_ROLES:
        raise InvalidApprovalError(f"unknown role {role!r}; expected one of {', '.join(KNOWN_ROLES)}")
    who = _clean_text(approver, "approver", MAX_APPROVER_LENGTH)
    text = None
    if note is not None and (not isinstance(note, str) or note.strip()):
        text = _clean_text(note, "note", MAX_NOTE_LENGTH)
    contract = contract_for(store, experiment_id)
    record_contract(store, contract)
    row, new = insert_approval(store, {"experiment_id": experiment_id, "contract_digest": contract.digest,
                                      "approver": who, "role": role_norm, "note": text})
    approval = Approval.of(_approval_records([row])[0])
    status = evaluate_governance(contract, approvals_for(store, experiment_id))
    return RecordedApproval(approval, new, status)


def governance_status(store: Store, experiment_id: str, contract: ExperimentContract | None = None) -> GovernanceStatus:
    """Risk level, required and missing roles, flags and ``promotion_blocked`` for the current contract.

    Approvals of any other contract digest are listed but do not count.
    """
    contract = contract or contract_for(store, experiment_id)
    return evaluate_governance(contract, approvals_for(store, experiment_id))


def unapproved_dedupe_key(experiment_id: str, contract_digest: str) -> str:
    return f"{UNAPPROVED}:{experiment_id}:{contract_digest}"


def flag_unapproved(store: Store, experiment_id: str, *, contract: ExperimentContract | None = None,
                    status: GovernanceStatus | None = None) -> dict[str, Any] | None:
    """Emit ``EXPERIMENT_UNAPPROVED`` (severity WARN, the alert) once per contract digest when an online/degraded
    experiment lacks the approvals its risk level requires. Returns the emitted report, or None when the
    experiment is approved, not online, or was already flagged for this digest. Samples keep being recorded;
    the flag only blocks promotion. A caller that already holds the contract and its status passes them."""
    contract = contract or contract_for(store, experiment_id)
    record_contract(store, contract)
    status = status or governance_status(store, experiment_id, contract)
    if UNAPPROVED not in status.flags:
        return None
    missing = ", ".join(status.missing_roles)
    with store.begin() as conn:
        return store.emit_report(
            conn, event_type=UNAPPROVED, severity="WARN", topic=OPERATIONS_TOPIC, experiment_id=experiment_id,
            dedupe_key=unapproved_dedupe_key(experiment_id, contract.digest),
            payload={
                "experiment_id": experiment_id, "contract_digest": contract.digest,
                "envelope_mode": contract.polb_config.envelope_mode, "mode": contract.mode,
                "risk_level": status.risk.level, "risk_score": status.risk.score,
                "required_reviewers": list(status.risk.required_reviewers), "missing_roles": list(status.missing_roles),
                "flags": list(status.flags), "promotion_blocked": status.promotion_blocked,
                "samples_recorded": True,
                "message": (f"online experiment {experiment_id} runs without the approvals its {status.risk.level} "
                            f"risk level requires (missing: {missing}); its samples are still recorded but it can "
                            "never be promoted until approved"),
            })


# ---- assignment ------------------------------------------------------------------------------------
def assign_units(store: Store, experiment_id: str, unit_ids: Sequence[str], market_ids: Sequence[str | None] | None = None,
                 principal_ids: Sequence[str | None] | None = None, log: bool = True) -> list[Assignment]:
    """Deterministic assignments of ``unit_ids`` under the current contract (ETH-forbidden units forced to
    control). With ``log`` every assignment is appended to the ``assignments`` log in one bulk insert, tied
    to the contract digest. ``market_ids``/``principal_ids`` align with ``unit_ids`` when given."""
    contract = contract_for(store, experiment_id)
    plan = AssignmentPlan.from_contract(contract)
    out = plan.assign_many(list(unit_ids), market_ids=market_ids, principal_ids=principal_ids)
    if log and out:
        record_contract(store, contract)
        digest = contract.digest
        append_assignments(store, [a.to_record(experiment_id, digest) for a in out])
    return out


# ---- EvalTrace -------------------------------------------------------------------------------------
def _loads(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _text_binding(table: str, row_id: Any, text: str) -> dict[str, str]:
    """Pin a stored JSON document by the sha256 of its exact stored text."""
    return {"id": f"{table}/{row_id}", "digest": cj.digest_bytes(text.encode("utf-8"))}


def _ci(value: Any, default_n: int | None) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    est, lo, hi = (finite_number(value.get(k)) for k in ("estimate", "ci_95_low", "ci_95_high"))
    if est is None or lo is None or hi is None:
        return None
    n = finite_number(value.get("n"))
    return {"estimate": est, "ci_95_low": lo, "ci_95_high": hi,
            "n": int(n) if n is not None else int(default_n or 0)}


def _metric_cis(per_metric: Any, default_n: int | None) -> dict[str, Any]:
    if not isinstance(per_metric, Mapping):
        return {}
    out = {}
    for metric, value in per_metric.items():
        ci = _ci(value, default_n) if metric in METRICS else None
        if ci is not None:
            out[metric] = ci
    return out


def _outcomes(contract: ExperimentContract, verdict_row: Mapping[str, Any] | None,
              evaluation_row: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Per-variant metric CIs and statistical verdicts from the latest verdict / evaluation rows.

    Metric CIs: an ``outcomes`` object ``{variant_id: {metric: {estimate, ci_95_low, ci_95_high, n}}}`` or a
    ``metrics`` object ``{metric: {...}}`` (single treatment) in verdict_json, else in evaluation_json. With one
    treatment the final verdict row (or, before the first verdict, the evaluation row) then supplies the
    edge-delta CI it decided on (e.g. the AIPW basis of a limited-live verdict) and the statistical verdict, so the
    surface never contradicts the recorded verdict. Metrics without a finite CI are left out: the surface reports
    their constraints as having no data rather than inventing numbers.
    """
    treatments = [v.id for v in contract.treatments]
    single = treatments[0] if len(treatments) == 1 else None
    per_variant: dict[str, dict[str, Any]] = {}
    stat_verdicts: dict[str, str] = {}
    for row, key in ((verdict_row, "verdict_json"), (evaluation_row, "evaluation_json")):
        if row is None:
            continue
        doc = _loads(row.get(key))
        n = finite_number(row.get("samples"))
        if not stat_verdicts and isinstance(doc.get("stat_verdicts"), Mapping):
            stat_verdicts = {k: v for k, v in doc["stat_verdicts"].items() if k in treatments and isinstance(v, str)}
        if per_variant:
            continue
        if isinstance(doc.get("outcomes"), Mapping):
            found = {vid: _metric_cis(per, n) for vid, per in doc["outcomes"].items() if vid in treatments}
            per_variant = {k: v for k, v in found.items() if v}
        if not per_variant and single and isinstance(doc.get("metrics"), Mapping):
            cis = _metric_cis(doc["metrics"], n)
            per_variant = {single: cis} if cis else {}
    decided = verdict_row if verdict_row is not None else evaluation_row
    if single is not None and decided is not None:
        ci = _ci({"estimate": decided.get("edge_delta_bps"), "ci_95_low": decided.get("ci_95_low"),
                  "ci_95_high": decided.get("ci_95_high"), "n": decided.get("samples")}, None)
        if ci is not None:
            per_variant.setdefault(single, {})["edge_delta_bps"] = ci
        if not stat_verdicts and isinstance(decided.get("verdict"), str):
            stat_verdicts = {single: decided["verdict"]}
    return per_variant, stat_verdicts


def _verdict_section(verdict_row: Mapping[str, Any] | None, evaluation_row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if verdict_row is not None:
        doc = _loads(verdict_row.get("verdict_json"))
        out: dict[str, Any] = {
            "source": "experiment_verdicts", "id": int(verdict_row["id"]), "verdict": verdict_row["verdict"],
            "basis": verdict_row.get("basis"), "samples": int(verdict_row["samples"]),
            "edge_delta_bps": finite_number(verdict_row.get("edge_delta_bps")), "ci_95_low": finite_number(verdict_row.get("ci_95_low")),
            "ci_95_high": finite_number(verdict_row.get("ci_95_high")), "drift": bool(verdict_row.get("drift")),
            "report_id": verdict_row.get("report_id"), "recorded_at": cj.stored_timestamp(verdict_row.get("created_at")),
        }
    elif evaluation_row is not None:
        doc = _loads(evaluation_row.get("evaluation_json"))
        out = {
            "source": "experiment_evaluations", "id": int(evaluation_row["id"]), "verdict": evaluation_row["verdict"],
            "ci_method": evaluation_row.get("ci_method"), "samples": int(evaluation_row["samples"]),
            "edge_delta_bps": finite_number(evaluation_row.get("edge_delta_bps")),
            "ci_95_low": finite_number(evaluation_row.get("ci_95_low")), "ci_95_high": finite_number(evaluation_row.get("ci_95_high")),
            "p_value": finite_number(evaluation_row.get("p_value")), "power": finite_number(evaluation_row.get("power")),
            "drift": bool(evaluation_row.get("drift_signalled")), "recorded_at": cj.stored_timestamp(evaluation_row.get("evaluated_at")),
        }
    else:
        return None
    for key in ("ci_method", "plain_english", "event_type"):
        if isinstance(doc.get(key), str) and key not in out:
            out[key] = doc[key]
    codes = doc.get("reason_codes")
    if isinstance(codes, list) and all(isinstance(c, str) for c in codes):
        out["reason_codes"] = list(codes)
    return out


def _harmed_segments(causal_row: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    doc = _loads(causal_row.get("result_json")) if causal_row else {}
    labels = doc.get("harmed_segments")
    if not isinstance(labels, list):
        return []
    segments = {f"{s.get('covariate')}={s.get('value')}": s for s in doc.get("segments") or [] if isinstance(s, Mapping)}
    out = []
    for label in labels:
        if not isinstance(label, str):
            continue
        seg = segments.get(label, {})
        rec: dict[str, Any] = {"segment": label}
        if seg:
            rec.update(covariate=str(seg.get("covariate")), value=str(seg.get("value")), n=finite_number(seg.get("n")),
                       estimate_bps=finite_number(seg.get("estimate_bps")), ci_95_low=finite_number(seg.get("ci_95_low")),
                       ci_95_high=finite_number(seg.get("ci_95_high")))
        out.append(rec)
    return out


def _assignment_summary(store: Store, contract: ExperimentContract,
                        plan: AssignmentPlan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary for the trace, ETH findings) from the assignments log, counted in SQL."""
    by_variant: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    forced_kind: Counter[str] = Counter()
    other = 0
    findings: list[dict[str, Any]] = []
    for r in assignment_counts(store, contract.experiment_id):
        n = int(r["n"])
        if r["reason"] == REASON_ETH_FORCED_CONTROL:
            findings.append({"finding": "eth_forced_control", "detail": r["detail"], "count": n,
                             "contract_digest": r["contract_digest"]})
        if r["contract_digest"] != contract.digest:
            other += n
            continue
        by_variant[r["variant"]] += n
        by_reason[r["reason"]] += n
        if r["reason"] == REASON_ETH_FORCED_CONTROL and r["detail"]:
            forced_kind[r["detail"].split(":", 1)[0]] += n
    summary = summary_from_counts(by_variant, by_reason, plan)
    summary["eth_forced_control_by_kind"] = dict(sorted(forced_kind.items()))
    summary["contract_digest"] = contract.digest
    summary["expected_share_bp"] = {v.id: v.traffic_share_bp for v in contract.variants}
    summary["logged_under_other_contracts"] = other
    forbidden = contract.eth_constraints.forbid_units
    if forbidden:
        for r in units_assigned_off_control(store, contract.experiment_id, sorted(forbidden), contract.control.id):
            findings.append({"finding": "eth_forbidden_unit_randomised", "reason_code": ETH_FORBIDDEN_UNIT_RANDOMISED,
                             "unit_id": r["unit_id"], "variant": r["variant"], "count": int(r["n"]),
                             "contract_digest": r["contract_digest"]})
    for statement in sorted(set(contract.eth_constraints.forbid_statements)):
        findings.append({"finding": "eth_statement_not_machine_enforced", "statement": statement})
    return summary, findings


def _stop_rules_fired(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    out = []
    for r in stop_rule_reports(store, experiment_id):
        doc = _loads(r["payload_json"])
        detail = doc.get("detail")
        out.append({"rule": doc.get("rule"), "reason_code": r["event_type"], "action": doc.get("action", "stop"),
                    "message": doc.get("message") if isinstance(doc.get("message"), str) else "",
                    "detail": [str(d) for d in detail] if isinstance(detail, list) else [],
                    "report_id": r["report_id"], "at": cj.stored_timestamp(r["created_at"])})
    return out


def _latest_time(contract: ExperimentContract, times: Mapping[str, Any]) -> str:
    stamps = [cj.format_timestamp(contract.started_at)]
    stamps += [cj.stored_timestamp(v) for v in times.values() if v is not None]
    # Canonical UTC strings of equal shape sort as times once the fraction is normalised.
    return max(stamps, key=lambda s: cj.parse_timestamp(s))


def build_trace(store: Store, experiment_id: str, *, created_at: datetime | str | None = None) -> EvalTrace:
    """The EvalTrace of one experiment from what the store holds; the same store state gives the same bytes.

    ``as_of`` is the latest time recorded for the experiment (registration, samples, contracts, approvals,
    assignments, evaluations, causal estimates, verdicts, sign-offs, promotions, reports); ``created_at``
    defaults to it.
    """
    row = _experiment_row(store, experiment_id)
    experiment = experiment_from_row(row)
    # A comparison of an A/B/n experiment is traced under its experiment's contract (what approvals pin and the
    # router assigns by), with this comparison's evidence as its treatment's outcomes.
    governing_id = experiment.governing.experiment_id
    contract = experiment.governing.contract
    plan = AssignmentPlan.from_contract(contract)
    as_of = _latest_time(contract, governance_event_times(store, experiment_id))

    evaluation_row = latest_evaluation(store, experiment_id)
    verdict_row = latest_verdict(store, experiment_id)
    causal_row = latest_causal(store, experiment_id)
    outcomes, stat_verdicts = _outcomes(experiment.contract, verdict_row, evaluation_row)

    bindings: dict[str, Any] = {}
    head = sample_head(store, experiment_id)
    if head is not None:
        bindings["samples"] = {"id": f"experiment_samples/{experiment_id}/{int(head['sample_n'])}",
                               "digest": cj.DIGEST_PREFIX + head["sample_hash"]}
    for name, r, key, table in (("evaluation", evaluation_row, "evaluation_json", "experiment_evaluations"),
                                ("verdict", verdict_row, "verdict_json", "experiment_verdicts"),
                                ("causal", causal_row, "result_json", "causal_estimates")):
        if r is not None and r.get(key):
            bindings[name] = _text_binding(table, r["id"], r[key])

    assignments, eth_findings = _assignment_summary(store, contract, plan)
    history: list[dict[str, Any]] = [{
        "at": cj.format_timestamp(contract.started_at), "event": "experiment_started",
        "envelope_mode": contract.polb_config.envelope_mode, "mode_name": contract.polb_config.mode_name,
        "rollout_strategy": contract.polb_config.rollout_strategy,
        "max_population_share_bp": contract.polb_config.max_population_share_bp}]
    for c in contract_rows(store, governing_id):
        polb = _loads(c["contract_json"]).get("polb_config") or {}
        history.append({"at": cj.stored_timestamp(c["recorded_at"]), "event": "contract_recorded", "contract_digest": c["contract_digest"],
                        "risk_level": c["risk_level"], "envelope_mode": polb.get("envelope_mode"),
                        "current": c["contract_digest"] == contract.digest})
    for p in promotions(store, experiment_id):
        history.append({"at": cj.stored_timestamp(p["promoted_at"]), "event": "promoted", "variant_slug": p["variant_slug"],
                        "verdict": p["verdict"], "report_id": p["report_id"]})
    history.append({"at": as_of, "event": "status", "status": row["status"]})

    signed = [{"approver": s["approver"], "verdict": s["verdict"], "report_id": s["report_id"], "note": s["note"],
                 "signed_at": cj.stored_timestamp(s["signed_at"])} for s in signoffs(store, experiment_id)]
    head_n = int(head["sample_n"]) if head is not None else 0
    return build_eval_trace(
        contract, as_of=as_of, created_at=created_at, outcomes=outcomes or None,
        window=f"sample_n 1..{head_n}" if head_n else None, stat_verdicts=stat_verdicts or None,
        verdict=_verdict_section(verdict_row, evaluation_row), assignments=assignments,
        stop_rules_fired=_stop_rules_fired(store, experiment_id), eth_findings=eth_findings,
        harmed_segments=_harmed_segments(causal_row), approvals=approvals_for(store, governing_id),
        signoffs=signed, polb_history=history, bindings=bindings,
    )


def persona_view(store: Store, experiment_id: str, persona: str) -> str:
    """The trace rendered for ``trader``, ``risk`` or ``governance`` (markdown)."""
    if persona not in PERSONAS:
        raise GovernanceError(f"unknown persona {persona!r}; expected one of {', '.join(PERSONAS)}")
    return render_persona(build_trace(store, experiment_id), persona)


def persona_views(store: Store, experiment_id: str) -> dict[str, str]:
    """All persona views from one trace (for asset metadata): ``{persona: markdown}``."""
    trace = build_trace(store, experiment_id)
    return {p: render_persona(trace, p) for p in PERSONAS}
