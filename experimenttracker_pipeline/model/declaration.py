"""Experiment declarations: YAML files validated into `ExperimentDeclaration` objects.

Defaults follow the ExperimentTracker spec section 8. One bad file never stops the others from loading:
`load_declarations` returns the good ones and a list of errors that each name the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULTS: dict[str, Any] = {
    "mode": "shadow_only",
    "min_samples_for_decision": 100,
    "traffic_split_pct": 10,
    "auto_promote_on_winning": False,
    "require_human_signoff": True,
}
MODES = ("shadow_only", "limited_live")
SPLIT_WARN_PCT = 50
SPLIT_HARD_PCT = 100
CI_METHODS = ("always_valid", "group_sequential", "fixed_horizon")
# Experiment ids become Dagster partition keys and file names: keep them to a safe alphabet.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
SLUG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")


class DeclarationError(ValueError):
    """One invalid field of one declaration file."""

    def __init__(self, source: str, field_name: str, message: str):
        self.source = source
        self.field = field_name
        self.message = message
        super().__init__(f"{source}: {field_name}: {message}")


@dataclass(frozen=True)
class ExperimentDeclaration:
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
    # Statistics plan (issue 3): which CI the verdict uses and how it is tuned.
    ci_method: str = "always_valid"
    expected_samples: int | None = None
    planned_looks: int | None = None
    planned_max_samples: int | None = None
    mde_bps: float | None = None
    winsorize_pct: float | None = None
    expected_sd_bps: float | None = None
    # Causal plan (issue 5): a covariate that is a valid instrument (e.g. the router's random draw), and the
    # harm margin below which a segment's corrected CI marks it harmed.
    instrument: str | None = None
    harm_margin_bps: float = 0.0
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def started_at_ms(self) -> int:
        return int(self.started_at.timestamp() * 1000)

    @property
    def large_split(self) -> bool:
        return self.traffic_split_pct > SPLIT_WARN_PCT

    def content_sha256(self) -> str:
        """Digest of the declared content (not the file name), used to detect conflicting redeclarations."""
        canonical = json.dumps(_jsonable(self.raw), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_row(self) -> dict[str, Any]:
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
            "declaration_sha256": self.content_sha256(),
            "declaration_json": json.dumps(_jsonable(self.raw), sort_keys=True),
            "source_file": self.source_file,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _require_str(raw: Mapping[str, Any], key: str, source: str, pattern: re.Pattern[str] | None = None) -> str:
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DeclarationError(source, key, "is required")
    if not isinstance(value, str):
        raise DeclarationError(source, key, f"must be a string, got {type(value).__name__}")
    if pattern is not None and not pattern.match(value):
        raise DeclarationError(source, key, f"{value!r} is not a valid identifier ({pattern.pattern})")
    return value


def _number(raw: Mapping[str, Any], key: str, source: str, default: Any, *, integer: bool = False) -> Any:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeclarationError(source, key, f"must be a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise DeclarationError(source, key, "must be finite")
    if integer:
        if int(value) != value:
            raise DeclarationError(source, key, f"must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _bool(raw: Mapping[str, Any], key: str, source: str) -> bool:
    value = raw.get(key, DEFAULTS[key])
    if not isinstance(value, bool):
        raise DeclarationError(source, key, f"must be true or false, got {value!r}")
    return value


def _timestamp(raw: Mapping[str, Any], key: str, source: str) -> datetime:
    value = raw.get(key)
    if value is None:
        raise DeclarationError(source, key, "is required (ISO-8601 UTC, e.g. '2026-05-05T00:00:00Z')")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise DeclarationError(source, key, f"{value!r} is not an ISO-8601 timestamp") from exc
    else:
        raise DeclarationError(source, key, f"must be an ISO-8601 timestamp string, got {value!r}")
    if parsed.tzinfo is None:
        raise DeclarationError(source, key, f"{value!r} has no timezone; write it in UTC with a trailing Z")
    return parsed.astimezone(timezone.utc)


def parse_declaration(raw: Any, source: str, *, default_caliper_seconds: float = 60.0) -> ExperimentDeclaration:
    """Validate one parsed YAML document; raises `DeclarationError` naming the file and field."""
    if not isinstance(raw, Mapping):
        raise DeclarationError(source, "<document>", "must be a mapping of fields")
    experiment_id = _require_str(raw, "experiment_id", source, ID_PATTERN)
    principal = _require_str(raw, "principal", source)
    variant_slug = _require_str(raw, "variant_slug", source, SLUG_PATTERN)
    control_slug = _require_str(raw, "control_slug", source, SLUG_PATTERN)
    if variant_slug == control_slug:
        raise DeclarationError(source, "variant_slug", "must differ from control_slug")
    subject = raw.get("subject") or f"strategy:{variant_slug}"
    if not isinstance(subject, str):
        raise DeclarationError(source, "subject", f"must be a string, got {subject!r}")
    mode = raw.get("mode", DEFAULTS["mode"])
    if mode not in MODES:
        raise DeclarationError(source, "mode", f"{mode!r} is not one of {', '.join(MODES)}")
    split = _number(raw, "traffic_split_pct", source, DEFAULTS["traffic_split_pct"])
    if not 0 < split <= SPLIT_HARD_PCT:
        raise DeclarationError(source, "traffic_split_pct", f"{split:g} is outside (0, {SPLIT_HARD_PCT}]")
    min_samples = _number(raw, "min_samples_for_decision", source, DEFAULTS["min_samples_for_decision"], integer=True)
    if min_samples < 2:
        raise DeclarationError(source, "min_samples_for_decision", "must be at least 2")
    caliper = _number(raw, "caliper_seconds", source, default_caliper_seconds)
    if caliper <= 0:
        raise DeclarationError(source, "caliper_seconds", "must be > 0")
    ci_method = raw.get("ci_method", "always_valid")
    if ci_method not in CI_METHODS:
        raise DeclarationError(source, "ci_method", f"{ci_method!r} is not one of {', '.join(CI_METHODS)}")
    expected = _number(raw, "expected_samples", source, None, integer=True)
    looks = _number(raw, "planned_looks", source, None, integer=True)
    max_samples = _number(raw, "planned_max_samples", source, None, integer=True)
    if ci_method == "group_sequential" and (not looks or not max_samples or looks < 1 or max_samples < 2):
        # Information fractions need a fixed denominator declared before the data arrive.
        raise DeclarationError(source, "planned_looks", "group_sequential needs planned_looks >= 1 and planned_max_samples")
    mde = _number(raw, "mde_bps", source, None)
    if mde is not None and mde <= 0:
        raise DeclarationError(source, "mde_bps", "must be > 0")
    winsor = _number(raw, "winsorize_pct", source, None)
    if winsor is not None and not 0 < winsor < 50:
        raise DeclarationError(source, "winsorize_pct", "must be a tail percentage in (0, 50), e.g. 1 clips at the 1st and 99th percentiles")
    instrument = raw.get("instrument")
    if instrument is not None and (not isinstance(instrument, str) or not instrument.strip()):
        raise DeclarationError(source, "instrument", "must name a covariate of the fills")
    harm_margin = _number(raw, "harm_margin_bps", source, 0.0)
    if harm_margin < 0:
        raise DeclarationError(source, "harm_margin_bps", "must be >= 0 (a segment is harmed below -harm_margin_bps)")
    expected_sd = _number(raw, "expected_sd_bps", source, None)
    if expected_sd is not None and expected_sd <= 0:
        raise DeclarationError(source, "expected_sd_bps", "must be > 0")
    return ExperimentDeclaration(
        experiment_id=experiment_id,
        principal=principal,
        subject=subject,
        variant_slug=variant_slug,
        control_slug=control_slug,
        mode=mode,
        traffic_split_pct=split,
        min_samples_for_decision=min_samples,
        auto_promote_on_winning=_bool(raw, "auto_promote_on_winning", source),
        require_human_signoff=_bool(raw, "require_human_signoff", source),
        started_at=_timestamp(raw, "started_at", source),
        caliper_seconds=caliper,
        source_file=source,
        ci_method=ci_method,
        expected_samples=expected,
        planned_looks=looks,
        planned_max_samples=max_samples,
        mde_bps=mde,
        winsorize_pct=winsor,
        expected_sd_bps=expected_sd,
        instrument=instrument,
        harm_margin_bps=harm_margin,
        raw=dict(raw),
    )


@dataclass
class DeclarationLoad:
    declarations: list[ExperimentDeclaration]
    errors: list[DeclarationError]


def load_declarations(folder: Path, *, default_caliper_seconds: float = 60.0) -> DeclarationLoad:
    """Load every ``*.yaml``/``*.yml`` file in ``folder`` (sorted, so the result is deterministic).

    Two files declaring the same experiment_id with different content are both rejected: the tool cannot
    know which one the desk meant. Identical duplicates load once.
    """
    good: dict[str, ExperimentDeclaration] = {}
    errors: list[DeclarationError] = []
    conflicted: set[str] = set()
    files = sorted(p for p in folder.glob("*") if p.suffix in (".yaml", ".yml") and p.is_file()) if folder.is_dir() else []
    for path in files:
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            errors.append(DeclarationError(source, "<document>", f"is not valid YAML: {exc}".splitlines()[0]))
            continue
        try:
            decl = parse_declaration(raw, source, default_caliper_seconds=default_caliper_seconds)
        except DeclarationError as exc:
            errors.append(exc)
            continue
        other = good.get(decl.experiment_id)
        if decl.experiment_id in conflicted:
            errors.append(DeclarationError(source, "experiment_id", f"{decl.experiment_id!r} is declared with different content in several files"))
        elif other is None:
            good[decl.experiment_id] = decl
        elif other.content_sha256() != decl.content_sha256():
            conflicted.add(decl.experiment_id)
            del good[decl.experiment_id]
            message = f"{decl.experiment_id!r} is declared with different content in {other.source_file} and {source}"
            errors.append(DeclarationError(source, "experiment_id", message))
            errors.append(DeclarationError(other.source_file, "experiment_id", message))
    return DeclarationLoad(declarations=list(good.values()), errors=errors)
