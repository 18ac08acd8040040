"""Promotion gate (spec 7, 9 step 6, 26 property test).

Rules:

* Only a ``variant_wins`` verdict can ever be promoted.
* A human sign-off is required when ``require_human_signoff`` is true or
  ``traffic_split_pct > 50`` (spec 7, EXPERIMENT_LARGE_SPLIT_WARN).
* A sign-off approves exactly one verdict report: it matches when its ``report_id`` and
  ``verdict`` equal the report being promoted (and, when both carry one, the experiment id).
  A sign-off of an earlier report does not carry over to a later one.
* While a sign-off is required and missing, nothing is promoted, whatever
  ``auto_promote_on_winning`` says. With a matching sign-off the promotion is a human
  decision and goes ahead. Without the requirement, ``auto_promote_on_winning`` decides
  (or a matching sign-off, which is an explicit human approval).

* The declaration columns of the experiment must agree with its stored declaration and that declaration with
  its stored digest (``declaration_disagreements``); otherwise nothing is promoted
  (``PROMOTION_DECLARATION_TAMPERED``), whatever the columns say.

``audit_promotions`` re-checks recorded promotions against recorded sign-offs; the
Dagster asset check on the promotion step fails when it returns any violation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "Signoff",
    "PromotionDecision",
    "Violation",
    "signoff_required",
    "matching_signoff",
    "promotion_decision",
    "audit_promotions",
    "declaration_digest",
    "declaration_disagreements",
    "LARGE_SPLIT_PCT",
]

VARIANT_WINS = "variant_wins"
LARGE_SPLIT_PCT = 50.0

PROMOTION_NOT_WINNING = "PROMOTION_NOT_WINNING"
PROMOTION_AWAITING_SIGNOFF = "PROMOTION_AWAITING_SIGNOFF"
PROMOTION_APPROVED_BY_SIGNOFF = "PROMOTION_APPROVED_BY_SIGNOFF"
PROMOTION_AUTO = "PROMOTION_AUTO"
PROMOTION_AUTO_DISABLED = "PROMOTION_AUTO_DISABLED"
PROMOTION_DECLARATION_TAMPERED = "PROMOTION_DECLARATION_TAMPERED"

# The experiments columns that restate a declared value (compared with what the stored declaration says).
DECLARED_COLUMNS = ("principal", "subject", "variant_slug", "control_slug", "mode", "traffic_split_pct",
                    "min_samples_for_decision", "auto_promote_on_winning", "require_human_signoff", "started_at_ms",
                    "caliper_seconds", "declaration_sha256", "experiment_id", "parent_experiment_id", "variant_id")


@dataclass(frozen=True)
class Signoff:
    """A human approval of one verdict report."""

    approver: str
    signed_at: datetime | str | None
    report_id: str
    verdict: str
    experiment_id: str | None = None


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason_code: str
    detail: str
    signoff_required: bool = False
    signoff: Signoff | None = None


@dataclass(frozen=True)
class Violation:
    experiment_id: str | None
    report_id: str | None
    reason: str
    promotion_id: Any = None


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _as_signoff(obj: Any) -> Signoff:
    if isinstance(obj, Signoff):
        return obj
    return Signoff(
        approver=_field(obj, "approver") or "",
        signed_at=_field(obj, "signed_at"),
        report_id=_field(obj, "report_id"),
        verdict=_field(obj, "verdict"),
        experiment_id=_field(obj, "experiment_id"),
    )


def declaration_digest(declaration_json: str) -> str:
    """sha256 of the canonical form (sorted keys, no spaces) of a stored declaration, as registered."""
    canonical = json.dumps(json.loads(declaration_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def declaration_disagreements(stored: Mapping[str, Any], declared: Mapping[str, Any] | None) -> list[str]:
    """Where a stored ``experiments`` row disagrees with its own declaration: the declaration JSON against the
    stored digest, and each declaration column against the value the declaration gives (``declared``: the row
    the stored declaration parses to, None when it cannot be parsed). Empty when they agree."""
    try:
        digest = declaration_digest(stored["declaration_json"])
    except (TypeError, ValueError):
        return ["the stored declaration_json is not valid JSON"]
    problems = []
    if digest != stored["declaration_sha256"]:
        problems.append("the stored declaration does not match its declaration_sha256 digest")
    if declared is None:
        return problems + ["the stored declaration is not a valid declaration"]
    for column in DECLARED_COLUMNS:
        if stored.get(column) != declared.get(column):
            problems.append(f"{column} is {stored[column]!r} but the stored declaration says {declared[column]!r}")
    return problems


def signoff_required(require_human_signoff: bool, traffic_split_pct: float) -> bool:
    """True when a human must sign off before promotion (config flag or split > 50%)."""
    return bool(require_human_signoff) or float(traffic_split_pct) > LARGE_SPLIT_PCT


def matching_signoff(
    signoffs: Iterable[Any],
    *,
    report_id: str | None,
    verdict: str,
    experiment_id: str | None = None,
) -> Signoff | None:
    """First sign-off by a named approver that approves exactly this report and verdict."""
    if report_id is None:
        return None
    for raw in signoffs:
        s = _as_signoff(raw)
        if not (s.approver and str(s.approver).strip()):
            continue
        if s.report_id != report_id or s.verdict != verdict:
            continue
        if experiment_id is not None and s.experiment_id is not None and s.experiment_id != experiment_id:
            continue
        return s
    return None


def promotion_decision(
    *,
    auto_promote_on_winning: bool,
    require_human_signoff: bool,
    traffic_split_pct: float,
    verdict: str,
    verdict_report_id: str | None,
    signoffs: Iterable[Any] = (),
    experiment_id: str | None = None,
    declaration_problems: Sequence[str] = (),
) -> PromotionDecision:
    """Whether the verdict report ``verdict_report_id`` may promote the variant now. ``declaration_problems``
    (from ``declaration_disagreements``) refuse it before anything else: the flags cannot be trusted."""
    required = signoff_required(require_human_signoff, traffic_split_pct)
    if declaration_problems:
        return PromotionDecision(False, PROMOTION_DECLARATION_TAMPERED,
                                 "the experiment's declaration columns disagree with its stored declaration digest: "
                                 + "; ".join(declaration_problems), True)
    if verdict != VARIANT_WINS:
        detail = f"verdict is {verdict!r}; only variant_wins can be promoted"
        return PromotionDecision(False, PROMOTION_NOT_WINNING, detail, required)
    match = matching_signoff(signoffs, report_id=verdict_report_id, verdict=verdict, experiment_id=experiment_id)
    if match is not None:
        return PromotionDecision(
            True,
            PROMOTION_APPROVED_BY_SIGNOFF,
            f"report {verdict_report_id} approved by {match.approver}",
            required,
            match,
        )
    if required:
        why = (
            "require_human_signoff is set"
            if require_human_signoff
            else f"traffic_split_pct {traffic_split_pct} > {LARGE_SPLIT_PCT:g}"
        )
        return PromotionDecision(
            False,
            PROMOTION_AWAITING_SIGNOFF,
            f"a human sign-off of report {verdict_report_id} is required ({why}); auto-promotion is blocked",
            required,
        )
    if auto_promote_on_winning:
        return PromotionDecision(True, PROMOTION_AUTO, f"auto_promote_on_winning for report {verdict_report_id}", required)
    detail = "auto_promote_on_winning is off and no sign-off was recorded"
    return PromotionDecision(False, PROMOTION_AUTO_DISABLED, detail, required)


def _before(a: Any, b: Any) -> bool | None:
    """a <= b when both are comparable timestamps, else None (unknown)."""
    if a is None or b is None:
        return None
    try:
        if isinstance(a, str):
            a = datetime.fromisoformat(a)
        if isinstance(b, str):
            b = datetime.fromisoformat(b)
        return a <= b
    except (TypeError, ValueError):
        return None


def audit_promotions(
    promotions: Iterable[Any],
    signoffs: Iterable[Any],
    configs: Mapping[str, Any],
) -> list[Violation]:
    """Every recorded promotion that the gate should not have allowed.

    ``promotions``: records (mappings or objects) with ``experiment_id``, ``report_id``,
    ``verdict`` and optionally ``promoted_at``, ``promotion_id``, ``traffic_split_pct``.
    ``signoffs``: records with the ``Signoff`` fields. ``configs``: experiment_id -> config
    with ``require_human_signoff``, ``auto_promote_on_winning``, ``traffic_split_pct``. A
    missing config or flag counts as the spec default (sign-off required, no auto-promote),
    so the check fails closed.
    """
    all_signoffs = [_as_signoff(s) for s in signoffs]
    violations: list[Violation] = []
    for p in promotions:
        exp = _field(p, "experiment_id")
        report = _field(p, "report_id")
        verdict = _field(p, "verdict")
        pid = _field(p, "promotion_id", _field(p, "id"))
        cfg = configs.get(exp) if exp is not None else None
        cfg = cfg if cfg is not None else {}
        require = _field(cfg, "require_human_signoff")
        require = True if require is None else bool(require)
        auto = bool(_field(cfg, "auto_promote_on_winning") or False)
        split = _field(p, "traffic_split_pct")
        if split is None:
            split = _field(cfg, "traffic_split_pct", 0) or 0
        if verdict != VARIANT_WINS:
            reason = f"promotion of a {verdict!r} verdict; only variant_wins can be promoted"
            violations.append(Violation(exp, report, reason, pid))
            continue
        matches = [
            s
            for s in all_signoffs
            if matching_signoff([s], report_id=report, verdict=verdict, experiment_id=exp) is not None
        ]
        # A sign-off only authorises a promotion that happened after it.
        in_time = [s for s in matches if _before(s.signed_at, _field(p, "promoted_at")) is not False]
        required = signoff_required(require, split)
        if in_time or (auto and not required):
            continue
        if required and matches:
            reason = "the matching sign-off was recorded after the promotion"
        elif required:
            reason = "promotion without a matching human sign-off of this verdict report"
        else:
            reason = "promotion without sign-off while auto_promote_on_winning is off"
        violations.append(Violation(exp, report, reason, pid))
    return violations
