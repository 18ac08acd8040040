"""Field checks for experiment declarations: the one set of helpers and the two error types.

Every check takes the file's :class:`Issues` collector, the value and the field's path, records a message
that names the file and the field when the value is invalid, and returns the cleaned value (or None). All
problems of one file are collected, then raised together as :class:`InvalidDeclaration`.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Mapping, Sequence

__all__ = [
    "DeclarationError", "InvalidDeclaration", "Issues", "describe", "required_text", "text", "integer", "number",
    "boolean", "enum", "mapping", "str_list", "kind_id", "timestamp",
]

DOCUMENT = "<document>"
# Bounds of every declared number unless its field says narrower: every value derived from a declaration stays
# finite, exports as integer micros within 64 bits (1e12 * 1e6 < 2^63) and fits the store's columns.
MAX_ABS_REAL = 1e12
MAX_COUNT = 1_000_000_000


class DeclarationError(ValueError):
    """One invalid field of one declaration file: ``source`` (the file), ``field`` (its path), ``message``."""

    def __init__(self, source: str, field_name: str, message: str):
        self.source = source
        self.field = field_name
        self.message = message
        super().__init__(f"{source}: {field_name}: {message}")

    @property
    def file(self) -> str:
        return self.source

    @property
    def path(self) -> str:
        return self.field

    def __reduce__(self):  # picklable across processes (Dagster runs) despite the 3-argument constructor
        return (DeclarationError, (self.source, self.field, self.message))


class InvalidDeclaration(ValueError):
    """Every problem of one declaration file; ``issues`` lists them as :class:`DeclarationError`."""

    def __init__(self, file: str, issues: Sequence[DeclarationError]):
        self.file = file
        self.issues = list(issues)
        lines = "\n".join(f"  {i.path}: {i.message}" for i in self.issues)
        super().__init__(f"{file}: invalid experiment declaration ({len(self.issues)} error(s)):\n{lines}")

    @property
    def paths(self) -> list[str]:
        return [i.path for i in self.issues]

    def __reduce__(self):
        return (InvalidDeclaration, (self.file, self.issues))


class Issues:
    """The problems found so far in one file."""

    def __init__(self, file: str):
        self.file = file
        self.items: list[DeclarationError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(DeclarationError(self.file, path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidDeclaration(self.file, self.items)


def describe(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def required_text(issues: Issues, v: Any, path: str, pattern: re.Pattern[str] | None = None) -> str | None:
    """A required string (matching ``pattern`` when given)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        issues.add(path, "is required")
        return None
    if not isinstance(v, str):
        issues.add(path, f"must be a string, got {describe(v)}")
        return None
    if pattern is not None and not pattern.fullmatch(v):  # fullmatch: "$" would let a trailing newline through
        issues.add(path, f"{v!r} is not a valid identifier ({pattern.pattern})")
        return None
    return v


def text(issues: Issues, v: Any, path: str) -> str | None:
    """A non-empty string, stripped."""
    if not isinstance(v, str) or not v.strip():
        issues.add(path, f"must be a non-empty string, got {describe(v)}")
        return None
    return v.strip()


def integer(issues: Issues, v: Any, path: str, lo: int | None = None, hi: int | None = None, unit: str = "", *,
            whole_float: bool = False) -> int | None:
    """An integer in ``lo..hi`` (``hi`` defaults to MAX_COUNT). Scaled integers (``*_bp``, days) must be written
    as integers: bool is an int subclass and 1000.0 a float, both rejected because the exported form is exact.
    Counts of the statistics plan accept a whole float (``whole_float``), as YAML writes ``1e3``."""
    if hi is None:
        hi = MAX_COUNT
    if whole_float and isinstance(v, float) and not isinstance(v, bool):
        if not math.isfinite(v):
            issues.add(path, "must be finite")
            return None
        if not v.is_integer():
            issues.add(path, f"must be a whole number, got {v!r}")
            return None
        if abs(v) > 2 * MAX_COUNT:  # before int(): 1e308 is a 309-digit integer
            issues.add(path, f"must be in {lo if lo is not None else ''}..{hi}, got {v:g}")
            return None
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        hint = f" ({unit})" if unit else ""
        issues.add(path, f"must be an integer{hint}, got {describe(v)}")
        return None
    if lo is not None and v < lo or v > hi:
        rng = f"{lo}..{hi}" if lo is not None else f"<= {hi}"
        shown = v if abs(v) < 10 ** 15 else f"an integer of {len(str(abs(v)))} digits"
        issues.add(path, f"must be in {rng}, got {shown}")
        return None
    return v


def number(issues: Issues, v: Any, path: str, lo: float = -MAX_ABS_REAL, hi: float = MAX_ABS_REAL) -> float | None:
    """A finite real number (int, float or Decimal; not bool) in [``lo``, ``hi``] (by default +/- MAX_ABS_REAL)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
        issues.add(path, f"must be a number, got {v!r}")
        return None
    if isinstance(v, (float, Decimal)) and not math.isfinite(v):
        issues.add(path, "must be finite")
        return None
    # Compared before float(): a 400-digit integer is out of range, not an OverflowError.
    if not lo <= v <= hi:
        shown = f"{v:g}" if not isinstance(v, int) or abs(v) < 10 ** 15 else f"an integer of {len(str(abs(v)))} digits"
        issues.add(path, f"must be in [{lo:g}, {hi:g}], got {shown}")
        return None
    return float(v)


def boolean(issues: Issues, v: Any, path: str) -> bool | None:
    if not isinstance(v, bool):
        issues.add(path, f"must be true or false, got {describe(v)}")
        return None
    return v


def enum(issues: Issues, v: Any, path: str, allowed: Sequence[str]) -> str | None:
    if not isinstance(v, str) or v not in allowed:
        issues.add(path, f"must be one of {', '.join(allowed)}; got {v!r}")
        return None
    return v


def mapping(issues: Issues, v: Any, path: str, allowed: Sequence[str]) -> Mapping[str, Any] | None:
    """A mapping with only ``allowed`` keys; an absent (None) section is an empty mapping."""
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        issues.add(path, f"must be a mapping, got {describe(v)}")
        return None
    for k in v:
        if k not in allowed:
            issues.add(f"{path}.{k}", f"unknown key; allowed: {', '.join(allowed)}")
    return v


def str_list(issues: Issues, v: Any, path: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str) or not isinstance(v, Sequence):
        issues.add(path, f"must be a list of strings, got {describe(v)}")
        return []
    out = []
    for i, item in enumerate(v):
        s = text(issues, item, f"{path}[{i}]")
        if s is not None:
            out.append(s)
    return out


_KIND_ID_RE = re.compile(r"^([a-z][a-z0-9_]*):(\S+)$")

# Names that say nothing about who or what: rejected as principal/subject names (spec 3).
VAGUE_NAMES = frozenset({
    "", "tbd", "todo", "tba", "unknown", "none", "null", "n/a", "na", "any", "anyone", "all",
    "everyone", "everybody", "default", "someone", "somebody", "misc", "general", "various",
    "whatever", "xxx", "x", "?", "-", "new", "old", "variant", "control", "strategy", "model",
    "the new model", "new model", "desk", "fund", "us", "we", "me",
})


def _is_vague(name: str) -> bool:
    n = name.strip().lower()
    return n in VAGUE_NAMES or not any(c.isalnum() for c in n)


def kind_id(issues: Issues, v: Any, path: str, kinds: Sequence[str], what: str) -> str | None:
    """A ``<kind>:<name>`` reference whose kind is one of ``kinds`` and whose name is not vague."""
    if v is None or (isinstance(v, str) and not v.strip()):
        issues.add(path, f"is missing: declare {what} as \"<kind>:<name>\" with kind one of {', '.join(kinds)}")
        return None
    if not isinstance(v, str):
        issues.add(path, f"must be a string \"<kind>:<name>\", got {describe(v)}")
        return None
    m = _KIND_ID_RE.match(v.strip())
    if not m:
        issues.add(path, f"{v!r} is vague: expected \"<kind>:<name>\" with kind one of "
                         f"{', '.join(kinds)} (spec 3: say exactly {what})")
        return None
    kind, name = m.groups()
    if kind not in kinds:
        issues.add(path, f"{v!r}: unknown kind {kind!r}; expected one of {', '.join(kinds)}")
        return None
    if _is_vague(name):
        issues.add(path, f"{v!r} is vague: {name!r} does not identify {what}")
        return None
    return v.strip()


def timestamp(issues: Issues, v: Any, path: str) -> datetime | None:
    """A required timezone-aware ISO-8601 timestamp (a string, or a datetime YAML already parsed), in UTC."""
    if v is None:
        issues.add(path, "is required (ISO-8601 UTC, e.g. '2026-05-05T00:00:00Z')")
        return None
    if isinstance(v, datetime):
        parsed = v
    elif isinstance(v, str):
        try:
            parsed = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            issues.add(path, f"{v!r} is not an ISO-8601 timestamp")
            return None
    else:
        issues.add(path, f"must be an ISO-8601 timestamp string, got {v!r}")
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        issues.add(path, f"{v!r} has no timezone; write it in UTC with a trailing Z")
        return None
    return parsed.astimezone(timezone.utc)
