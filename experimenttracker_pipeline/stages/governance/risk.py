"""Experiment governance: risk rubric (spec 18.2), required reviewers (18.1 stage 3, 18.3) and
approval status pinned to the contract digest.

Risk score (spec 18.2): envelope online/degraded +3, shadow +1, sandbox 0; domain medical,
city_critical or finance +3 (trading capital is finance, the default domain); population share
above 2500 bp +2; no hard constraint on the eval surface +2; declared vulnerable/restricted
populations +3. Score <= 3 low, <= 7 medium, else high.

Reviewers: low -> technical_lead; medium -> + domain_expert; high -> + ethics_board, legal (and a
formal ethics committee approval). Vulnerable populations always add ethics_board (spec 18.3).

An approval counts only for the contract digest it names: a changed contract needs new approvals.
Each required role must be covered by a different person (four-eyes), so one approver holding
two roles does not satisfy both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import experimenttracker_pipeline.model.canonical as cj

LOW, MEDIUM, HIGH = "low", "medium", "high"
RISK_ORDER = ("low", "medium", "high", "emergency")
HIGH_RISK_DOMAINS = frozenset({"medical", "city_critical", "finance"})
REVIEWERS: dict[str, tuple[str, ...]] = {
    LOW: ("technical_lead",),
    MEDIUM: ("technical_lead", "domain_expert"),
    HIGH: ("technical_lead", "domain_expert", "ethics_board", "legal"),
}

UNAPPROVED = "EXPERIMENT_UNAPPROVED"
RISK_ABOVE_POLB_MAX = "EXPERIMENT_RISK_ABOVE_POLB_MAX"
APPROVAL_STALE = "EXPERIMENT_APPROVAL_STALE"


@dataclass(frozen=True)
class RiskAssessment:
    level: str  # low | medium | high
    score: int
    factors: tuple[tuple[str, int], ...]  # (factor, points), only the ones that scored
    required_reviewers: tuple[str, ...]
    ethics_committee: bool  # formal ethics committee review required (spec 18.3)
    exceeds_max_risk_level: bool  # assessed level above polb_config.max_risk_level

    def to_export(self) -> dict[str, Any]:
        return {"level": self.level, "score": self.score,
                "factors": [{"factor": f, "points": p} for f, p in self.factors],
                "required_reviewers": list(self.required_reviewers),
                "ethics_committee": self.ethics_committee,
                "exceeds_max_risk_level": self.exceeds_max_risk_level}


def assess_risk(contract: Any) -> RiskAssessment:
    """Coarse risk level of an experiment contract per the rubric in the module docstring."""
    polb = contract.polb_config
    scope = contract.eval_surface.scope
    factors: list[tuple[str, int]] = []
    env = polb.envelope_mode
    if env in ("online", "degraded"):
        factors.append((f"envelope_mode={env}", 3))
    elif env == "shadow":
        factors.append(("envelope_mode=shadow", 1))
    if scope.domain in HIGH_RISK_DOMAINS:
        factors.append((f"domain={scope.domain}", 3))
    if polb.max_population_share_bp > 2500:
        factors.append((f"max_population_share_bp={polb.max_population_share_bp}>2500", 2))
    if not contract.eval_surface.hard:
        factors.append(("no_hard_constraints", 2))
    if scope.vulnerable_populations:
        factors.append(("vulnerable_populations=" + ",".join(scope.vulnerable_populations), 3))
    score = sum(p for _, p in factors)
    level = LOW if score <= 3 else MEDIUM if score <= 7 else HIGH
    reviewers = list(REVIEWERS[level])
    if scope.vulnerable_populations and "ethics_board" not in reviewers:
        reviewers.append("ethics_board")
    return RiskAssessment(
        level=level, score=score, factors=tuple(factors), required_reviewers=tuple(reviewers),
        ethics_committee=level == HIGH or bool(scope.vulnerable_populations),
        exceeds_max_risk_level=RISK_ORDER.index(level) > RISK_ORDER.index(polb.max_risk_level),
    )


@dataclass(frozen=True)
class Approval:
    """One append-only approval record: who, in which role, when, of which contract digest."""
    approver: str
    role: str
    contract_digest: str
    approved_at: str  # UTC timestamp string
    experiment_id: str | None = None

    @classmethod
    def of(cls, v: Any) -> "Approval":
        """From an Approval, a mapping or an object with the same field names."""
        if isinstance(v, Approval):
            return v
        get = v.get if isinstance(v, Mapping) else (lambda k, d=None: getattr(v, k, d))
        approver, role, dg = get("approver"), get("role"), get("contract_digest")
        for name, val in (("approver", approver), ("role", role), ("contract_digest", dg)):
            if not isinstance(val, str) or not val.strip():
                raise ValueError(f"approval record needs a non-empty {name}, got {val!r}")
        at = get("approved_at")
        return cls(approver.strip(), role.strip().lower(), dg.strip(),
                   cj.format_timestamp(at) if isinstance(at, (datetime, str)) and at else "",
                   get("experiment_id"))

    def to_export(self) -> dict[str, Any]:
        return {"approver": self.approver, "role": self.role,
                "contract_digest": self.contract_digest, "approved_at": self.approved_at}


def _match_roles(required: Sequence[str], approvals: Sequence[Approval]) -> dict[str, str]:
    """Max matching role -> distinct approver (augmenting paths; a handful of roles)."""
    candidates = {r: sorted({a.approver for a in approvals if a.role == r}) for r in required}
    owner: dict[str, str] = {}  # approver -> role

    def place(role: str, seen: set[str]) -> bool:
        for person in candidates[role]:
            if person in seen:
                continue
            seen.add(person)
            if person not in owner or place(owner[person], seen):
                owner[person] = role
                return True
        return False

    for r in required:
        place(r, set())
    return {role: person for person, role in owner.items()}


def approval_status(contract_digest: str, risk: RiskAssessment | str | Sequence[str],
                    approvals: Iterable[Any]) -> tuple[bool, tuple[str, ...]]:
    """``(approved, missing_roles)``: whether approvals of *this* digest cover every required role.

    ``risk`` is a :class:`RiskAssessment`, a level name, or the list of required roles.
    Approvals of another (older) contract digest are ignored.
    """
    if isinstance(risk, RiskAssessment):
        required = tuple(risk.required_reviewers)
    elif isinstance(risk, str):
        required = REVIEWERS[risk]
    else:
        required = tuple(risk)
    valid = [a for a in map(Approval.of, approvals) if a.contract_digest == contract_digest]
    matched = _match_roles(required, valid)
    missing = tuple(r for r in required if r not in matched)
    return (not missing, missing)


@dataclass(frozen=True)
class GovernanceStatus:
    contract_digest: str
    risk: RiskAssessment
    approved: bool
    missing_roles: tuple[str, ...]
    approvals: tuple[Approval, ...]  # all records, in (approved_at, approver, role) order
    counted: tuple[Approval, ...]  # the ones for this contract digest
    flags: tuple[str, ...]  # reason codes
    online: bool

    @property
    def promotion_blocked(self) -> bool:
        """An online experiment lacking approvals (or over its PoLB risk cap) is never promoted."""
        return self.online and (not self.approved or self.risk.exceeds_max_risk_level)

    def to_export(self) -> dict[str, Any]:
        return {"contract_digest": self.contract_digest, "risk": self.risk.to_export(),
                "approved": self.approved, "missing_roles": list(self.missing_roles),
                "approvals": [dict(a.to_export(), counts=a in self.counted) for a in self.approvals],
                "flags": list(self.flags), "promotion_blocked": self.promotion_blocked}


def evaluate_governance(contract: Any, approvals: Iterable[Any] = ()) -> GovernanceStatus:
    """Risk, approval status and flags for a contract.

    Flags: EXPERIMENT_UNAPPROVED (online/degraded envelope without the approvals its risk level
    requires), EXPERIMENT_RISK_ABOVE_POLB_MAX (assessed risk above ``max_risk_level``),
    EXPERIMENT_APPROVAL_STALE (approvals exist but only for other contract digests).
    Samples of a flagged experiment are still recorded; only promotion is blocked.
    """
    risk = assess_risk(contract)
    recs = sorted(map(Approval.of, approvals), key=lambda a: (a.approved_at, a.approver, a.role,
                                                              a.contract_digest))
    d = contract.digest
    approved, missing = approval_status(d, risk, recs)
    counted = tuple(a for a in recs if a.contract_digest == d)
    online = contract.polb_config.is_online
    flags = []
    if online and not approved:
        flags.append(UNAPPROVED)
    if risk.exceeds_max_risk_level:
        flags.append(RISK_ABOVE_POLB_MAX)
    if recs and not counted:
        flags.append(APPROVAL_STALE)
    return GovernanceStatus(d, risk, approved, missing, tuple(recs), counted, tuple(flags), online)
