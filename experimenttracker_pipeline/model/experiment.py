"""The experiment as one typed object, parsed and validated once.

An :class:`Experiment` is everything a declaration says: its core fields (who, what, which two strategies, how
much traffic, when a decision may be taken), its statistics plan, its causal plan and its contract (goal
surface, population envelope, stop rules, governance terms). ``parse_experiment`` is the one validator: one set
of defaults (:data:`DEFAULTS`, spec section 8), one set of field checks (``model.fields``), and every problem of
a file collected into one ``InvalidDeclaration`` whose issues each name the file and the field.

Stages get the experiment of a stored ``experiments`` row with :func:`experiment_from_row`, which parses each
distinct stored declaration once per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any, Mapping

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model import fields as f
from experimenttracker_pipeline.model.contract import (
    PRINCIPAL_KINDS,
    SUBJECT_KINDS,
    ExperimentContract,
    build_contract,
)
from experimenttracker_pipeline.model.numbers import to_json
from experimenttracker_pipeline.model.plans import (
    CausalPlan,
    StatisticsPlan,
    causal_plan,
    check_min_samples,
    statistics_plan,
)

__all__ = [
    "DEFAULTS", "CORE_FIELDS", "MODES", "Experiment", "parse_experiment", "experiment_from_row",
]

# Defaults of the core fields (spec section 8). caliper_seconds defaults to the pipeline's setting.
DEFAULTS: dict[str, Any] = {
    "mode": "shadow_only",
    "traffic_split_pct": 10,
    "min_samples_for_decision": 100,
    "auto_promote_on_winning": False,
    "require_human_signoff": True,
    "caliper_seconds": 60.0,
}
CORE_FIELDS = ("experiment_id", "principal", "subject", "variant_slug", "control_slug", "mode", "traffic_split_pct",
               "min_samples_for_decision", "auto_promote_on_winning", "require_human_signoff", "started_at",
               "caliper_seconds")
MODES = ("shadow_only", "limited_live")
SPLIT_WARN_PCT = 50
SPLIT_HARD_PCT = 100
# The limited_live pairing window: beyond 30 days two fills are not a matched pair.
MAX_CALIPER_SECONDS = 30 * 86_400
# Experiment ids become Dagster partition keys and file names: keep them to a safe alphabet.
# Matched with fullmatch (``$`` alone would accept a trailing newline).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
SLUG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}")


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    principal: str
    subject: str
    variant_slug: str
    control_slug: str
    mode: str
    traffic_split_pct: float
    min_samples_for_decision: int
    auto_promote_on_winning: bool
    require_human_signoff: bool
    started_at: datetime
    caliper_seconds: float
    source_file: str
    statistics: StatisticsPlan
    causal: CausalPlan
    contract: ExperimentContract
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    # A treatment comparison of an A/B/n experiment (see `comparisons`): the experiment it belongs to, the
    # treatment's variant id, and how many treatments share the family-wise error rate.
    parent: "Experiment | None" = field(default=None, compare=False, hash=False, repr=False)
    variant_id: str | None = None
    family_size: int = 1

    @property
    def started_at_ms(self) -> int:
        return int(self.started_at.timestamp() * 1000)

    @property
    def sandbox_policy(self) -> str | None:
        """The candidate policy a sandbox experiment values from the control's logs (None for other envelopes)."""
        if self.contract.polb_config.envelope_mode != "sandbox":
            return None
        return self.contract.treatments[0].policy

    @property
    def large_split(self) -> bool:
        return self.traffic_split_pct > SPLIT_WARN_PCT

    @cached_property
    def declaration_json(self) -> str:
        """The declared content as stored (``experiments.declaration_json``)."""
        return json.dumps(to_json(self.raw, sig=None), sort_keys=True)

    @cached_property
    def declaration_sha256(self) -> str:
        """Digest of the declared content (not the file name), used to detect conflicting redeclarations."""
        canonical = json.dumps(to_json(self.raw, sig=None), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def is_comparison(self) -> bool:
        return self.parent is not None

    @property
    def governing(self) -> "Experiment":
        """The experiment whose contract and approvals govern this one (a comparison's parent, else itself)."""
        return self.parent or self

    @property
    def has_comparisons(self) -> bool:
        """An A/B/n experiment: several treatments, each evaluated as its own comparison against the control."""
        return self.parent is None and len(self.contract.treatments) > 1

    @property
    def srm_split_pct(self) -> float:
        """The variant's expected share of the fills of this comparison's two arms (the sample-ratio check)."""
        if self.parent is None:
            return self.traffic_split_pct
        mine = self.contract.treatments[0].traffic_share_bp
        return 100.0 * mine / (mine + self.contract.control.traffic_share_bp)

    def comparisons(self) -> tuple["Experiment", ...]:
        """One comparison per treatment of an A/B/n experiment (none for one treatment): that treatment against
        the shared control, with id ``<experiment_id>/<variant_id>``. Each is evaluated at alpha / k (Bonferroni
        over the k treatments), so the chance of any false verdict across them stays at the declared level."""
        if not self.has_comparisons:
            return ()
        return tuple(self.comparison(v.id) for v in self.contract.treatments)

    def comparison(self, variant_id: str) -> "Experiment":
        """The comparison of treatment ``variant_id`` against the control (see `comparisons`)."""
        treatment = self.contract.variant(variant_id)
        if treatment.is_control:
            raise KeyError(f"{variant_id!r} is the control, not a treatment")
        comparison_id = f"{self.experiment_id}/{variant_id}"
        contract = dataclasses.replace(
            self.contract, experiment_id=comparison_id, variant_slug=treatment.slug,
            traffic_split_bp=treatment.traffic_share_bp, variants=(self.contract.control, treatment))
        subject = f"strategy:{treatment.slug}" if self.contract.subject_kind == "strategy" else self.subject
        return dataclasses.replace(
            self, experiment_id=comparison_id, variant_slug=treatment.slug, subject=subject,
            traffic_split_pct=treatment.traffic_share_bp / 100.0, contract=contract, parent=self,
            variant_id=variant_id, family_size=len(self.contract.treatments))

    def to_row(self) -> dict[str, Any]:
        """The ``experiments`` row that registers this experiment."""
        return {
            "experiment_id": self.experiment_id,
            "principal": self.principal,
            "subject": self.subject,
            "variant_slug": self.variant_slug,
            "control_slug": self.control_slug,
            "mode": self.mode,
            "traffic_split_pct": float(self.traffic_split_pct),
            "min_samples_for_decision": self.min_samples_for_decision,
            "auto_promote_on_winning": bool(self.auto_promote_on_winning),
            "require_human_signoff": bool(self.require_human_signoff),
            "started_at_ms": self.started_at_ms,
            "caliper_seconds": float(self.caliper_seconds),
            "declaration_sha256": self.declaration_sha256,
            "declaration_json": self.declaration_json,
            "source_file": self.source_file,
            "parent_experiment_id": self.parent.experiment_id if self.parent is not None else None,
            "variant_id": self.variant_id,
        }


def _or_default(raw: Mapping[str, Any], key: str, default: Any) -> Any:
    """An optional field written as null takes its default, as if it were left out."""
    value = raw.get(key)
    return default if value is None else value


def parse_experiment(raw: Any, source: str, *,
                     default_caliper_seconds: float = DEFAULTS["caliper_seconds"]) -> Experiment:
    """Validate one parsed YAML declaration into an :class:`Experiment`.

    Raises ``InvalidDeclaration`` listing every problem of the file, each naming the file and the field.
    """
    issues = f.Issues(source)
    if not isinstance(raw, Mapping):
        issues.add(f.DOCUMENT, "must be a mapping of fields")
        issues.raise_if_any()
    defaults: list[str] = []

    experiment_id = f.required_text(issues, raw.get("experiment_id"), "experiment_id", ID_PATTERN)
    principal = f.kind_id(issues, raw.get("principal"), "principal", PRINCIPAL_KINDS,
                          "on whose behalf (the desk or fund whose capital is at risk)")
    variant_slug = f.required_text(issues, raw.get("variant_slug"), "variant_slug", SLUG_PATTERN)
    control_slug = f.required_text(issues, raw.get("control_slug"), "control_slug", SLUG_PATTERN)
    if variant_slug is not None and variant_slug == control_slug:
        issues.add("variant_slug", f"must differ from control_slug {control_slug!r}: nothing to compare")
    if raw.get("subject") is None:
        subject = f"strategy:{variant_slug}" if variant_slug else None
        defaults.append("subject")
    else:
        subject = f.kind_id(issues, raw["subject"], "subject", SUBJECT_KINDS, "what is evaluated")
    mode = f.enum(issues, _or_default(raw, "mode", DEFAULTS["mode"]), "mode", MODES)

    split = f.number(issues, _or_default(raw, "traffic_split_pct", DEFAULTS["traffic_split_pct"]),
                     "traffic_split_pct")
    split_bp = None
    if split is not None and not 0 < split <= SPLIT_HARD_PCT:
        issues.add("traffic_split_pct", f"{split:g} is outside (0, {SPLIT_HARD_PCT}]")
        split = None
    if split is not None:
        split_bp = cj.scale_int(split, 100)
        if split_bp < 1:
            issues.add("traffic_split_pct", f"{split:g} is below the smallest split, 0.01")
            split, split_bp = None, None
    min_samples = f.integer(issues, _or_default(raw, "min_samples_for_decision", DEFAULTS["min_samples_for_decision"]),
                            "min_samples_for_decision", 2, whole_float=True)
    auto_promote = f.boolean(issues, _or_default(raw, "auto_promote_on_winning", DEFAULTS["auto_promote_on_winning"]),
                             "auto_promote_on_winning")
    signoff = f.boolean(issues, _or_default(raw, "require_human_signoff", DEFAULTS["require_human_signoff"]),
                        "require_human_signoff")
    started_at = f.timestamp(issues, raw.get("started_at"), "started_at")
    caliper = f.number(issues, _or_default(raw, "caliper_seconds", default_caliper_seconds), "caliper_seconds",
                       0.0, MAX_CALIPER_SECONDS)
    caliper_ms = None
    if caliper is not None:
        caliper_ms = cj.scale_int(caliper, 1000)
        if caliper_ms <= 0:
            issues.add("caliper_seconds", f"must be > 0 (at least 0.001), got {caliper:g}")
            caliper = None

    statistics = statistics_plan(issues, raw)
    check_min_samples(issues, statistics, min_samples)
    causal = causal_plan(issues, raw)
    core = {
        "experiment_id": experiment_id, "principal": principal, "subject": subject, "variant_slug": variant_slug,
        "control_slug": control_slug, "mode": mode, "traffic_split_bp": split_bp,
        "min_samples_for_decision": min_samples, "auto_promote_on_winning": auto_promote,
        "require_human_signoff": signoff, "started_at": started_at, "caliper_ms": caliper_ms,
    }
    contract = build_contract(issues, raw, core, statistics, defaults)
    issues.raise_if_any()
    assert contract is not None and statistics is not None  # no issues: every field is valid
    return Experiment(
        experiment_id=experiment_id, principal=principal, subject=subject, variant_slug=variant_slug,
        control_slug=control_slug, mode=mode, traffic_split_pct=split, min_samples_for_decision=min_samples,
        auto_promote_on_winning=auto_promote, require_human_signoff=signoff, started_at=started_at,
        caliper_seconds=caliper, source_file=source, statistics=statistics, causal=causal, contract=contract,
        raw=dict(raw),
    )


def experiment_from_row(row: Mapping[str, Any]) -> Experiment:
    """The :class:`Experiment` of a stored ``experiments`` row: its stored declaration, parsed with the caliper
    default it was registered with. Each distinct stored declaration is parsed once per process. A comparison's row
    stores its experiment's declaration: the comparison is derived from it."""
    experiment = _stored_experiment(row["declaration_json"], row["source_file"], float(row["caliper_seconds"]))
    if row.get("variant_id") is not None:
        return experiment.comparison(row["variant_id"])
    return experiment


@lru_cache(maxsize=1024)
def _stored_experiment(declaration_json: str, source_file: str, caliper_seconds: float) -> Experiment:
    # Experiments are frozen, so one instance can serve every stage that asks for the same declaration.
    return parse_experiment(json.loads(declaration_json), source_file, default_caliper_seconds=caliper_seconds)
