"""Validation of raw fill reports (one JSON object per line on the report bus archive).

`validate_line` turns one line into either a `Fill` (accepted) or a `Rejection` carrying a quarantine reason
code. It never raises on bad input: every line read is accounted for.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Quarantine reason codes (the README lists them with their meaning).
REPORT_EMPTY_LINE = "REPORT_EMPTY_LINE"
REPORT_LINE_TOO_LONG = "REPORT_LINE_TOO_LONG"
REPORT_INVALID_ENCODING = "REPORT_INVALID_ENCODING"
REPORT_INVALID_JSON = "REPORT_INVALID_JSON"
REPORT_NOT_OBJECT = "REPORT_NOT_OBJECT"
REPORT_MISSING_FIELD = "REPORT_MISSING_FIELD"
REPORT_INVALID_TYPE = "REPORT_INVALID_TYPE"
REPORT_NON_FINITE_NUMBER = "REPORT_NON_FINITE_NUMBER"
REPORT_NON_POSITIVE_AMOUNT = "REPORT_NON_POSITIVE_AMOUNT"
REPORT_OUT_OF_RANGE = "REPORT_OUT_OF_RANGE"
REPORT_UNKNOWN_MODE = "REPORT_UNKNOWN_MODE"
REPORT_UNSUPPORTED_KIND = "REPORT_UNSUPPORTED_KIND"
REPORT_FIELD_TOO_LONG = "REPORT_FIELD_TOO_LONG"
REPORT_CONTROL_CHARACTERS = "REPORT_CONTROL_CHARACTERS"
REPORT_CONFLICTING_REDELIVERY = "REPORT_CONFLICTING_REDELIVERY"

QUARANTINE_REASONS = (
    REPORT_EMPTY_LINE, REPORT_LINE_TOO_LONG, REPORT_INVALID_ENCODING, REPORT_INVALID_JSON, REPORT_NOT_OBJECT,
    REPORT_MISSING_FIELD, REPORT_INVALID_TYPE, REPORT_NON_FINITE_NUMBER, REPORT_NON_POSITIVE_AMOUNT,
    REPORT_OUT_OF_RANGE, REPORT_UNKNOWN_MODE, REPORT_UNSUPPORTED_KIND, REPORT_FIELD_TOO_LONG,
    REPORT_CONTROL_CHARACTERS, REPORT_CONFLICTING_REDELIVERY,
)

MODES = ("live", "shadow", "replay")
MAX_LINE_BYTES = 64 * 1024
MAX_ID_LENGTH = 128
MAX_COVARIATES = 32
MAX_RAW_TEXT = 4096
# Seconds-scale timestamps are almost always a unit bug upstream: demand epoch milliseconds after 2001-09-09.
MIN_EPOCH_MS = 1_000_000_000_000
MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ID_FIELDS = ("report_id", "topic", "bot_id", "strategy_slug", "pair_key", "market_id")
NUMBER_FIELDS = ("size_pusd", "notional_pusd", "edge_pusd", "slippage_bps")
REQUIRED = ("report_id", "report_kind", "event_type", "topic", "bot_id", "strategy_slug", "mode", "pair_key",
            "market_id", "size_pusd", "notional_pusd", "edge_pusd", "slippage_bps", "recorded_at_ms")


@dataclass(frozen=True)
class Fill:
    report_id: str
    report_kind: str
    event_type: str
    topic: str
    bot_id: str
    strategy_slug: str
    mode: str
    pair_key: str
    market_id: str
    size_pusd: float
    notional_pusd: float
    edge_pusd: float
    slippage_bps: float
    recorded_at_ms: int
    experiment_id: str | None
    fill_quality: float | None
    assignment_propensity: float | None
    covariates_json: str | None
    content_sha256: str

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FILL_COLUMNS}


FILL_COLUMNS = tuple(Fill.__dataclass_fields__)


@dataclass(frozen=True)
class Rejection:
    reason_code: str
    detail: str
    report_id: str | None = None


class _Invalid(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _reject_constant(name: str) -> float:
    raise _Invalid(REPORT_NON_FINITE_NUMBER, f"JSON constant {name} is not a finite number")


def _text(obj: dict, key: str, *, required: bool = True, max_len: int = MAX_ID_LENGTH, may_have_control: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Invalid(REPORT_MISSING_FIELD, f"missing field {key}")
        return None
    if not isinstance(value, str):
        raise _Invalid(REPORT_INVALID_TYPE, f"{key} must be a string, got {type(value).__name__}")
    if not value:
        raise _Invalid(REPORT_MISSING_FIELD, f"{key} is empty")
    if len(value) > max_len:
        raise _Invalid(REPORT_FIELD_TOO_LONG, f"{key} is {len(value)} characters (max {max_len})")
    if may_have_control and _CONTROL.search(value):
        raise _Invalid(REPORT_CONTROL_CHARACTERS, f"{key} contains control characters")
    return value


def _number(obj: dict, key: str, *, required: bool = True) -> float | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Invalid(REPORT_MISSING_FIELD, f"missing field {key}")
        return None
    # bool is an int in Python; a boolean amount is a producer bug, not 0/1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(REPORT_INVALID_TYPE, f"{key} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise _Invalid(REPORT_NON_FINITE_NUMBER, f"{key} is not finite")
    return value


def _unit_interval(obj: dict, key: str) -> float | None:
    value = _number(obj, key, required=False)
    if value is not None and not 0.0 <= value <= 1.0:
        raise _Invalid(REPORT_OUT_OF_RANGE, f"{key}={value:g} is outside [0, 1]")
    return value


def _covariates(obj: dict) -> str | None:
    value = obj.get("covariates")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(REPORT_INVALID_TYPE, "covariates must be an object")
    if len(value) > MAX_COVARIATES:
        raise _Invalid(REPORT_FIELD_TOO_LONG, f"covariates has {len(value)} keys (max {MAX_COVARIATES})")
    clean: dict[str, Any] = {}
    for key, item in value.items():
        if len(key) > MAX_ID_LENGTH or _CONTROL.search(key) or not key:
            raise _Invalid(REPORT_INVALID_TYPE, f"covariate name {key[:40]!r} is empty, too long or has control characters")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _Invalid(REPORT_INVALID_TYPE, f"covariate {key} must be a string or a number")
        if isinstance(item, float) and not math.isfinite(item):
            raise _Invalid(REPORT_NON_FINITE_NUMBER, f"covariate {key} is not finite")
        if isinstance(item, str) and (len(item) > MAX_ID_LENGTH or _CONTROL.search(item)):
            raise _Invalid(REPORT_FIELD_TOO_LONG if len(item) > MAX_ID_LENGTH else REPORT_CONTROL_CHARACTERS,
                           f"covariate {key} value is too long or has control characters")
        clean[key] = item
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


def _validate_object(obj: dict, may_have_control: bool = True) -> Fill:
    for key in REQUIRED:
        if obj.get(key) is None:
            raise _Invalid(REPORT_MISSING_FIELD, f"missing field {key}")
    ids = {key: _text(obj, key, may_have_control=may_have_control) for key in ID_FIELDS}
    report_kind = _text(obj, "report_kind")
    event_type = _text(obj, "event_type")
    if report_kind != "OperationsReport" or event_type != "FILL":
        raise _Invalid(REPORT_UNSUPPORTED_KIND, f"report_kind={report_kind!r} event_type={event_type!r}; expected OperationsReport/FILL")
    mode = _text(obj, "mode")
    if mode not in MODES:
        raise _Invalid(REPORT_UNKNOWN_MODE, f"mode {mode!r} is not one of {', '.join(MODES)}")
    numbers = {key: _number(obj, key) for key in NUMBER_FIELDS}
    for key in ("size_pusd", "notional_pusd"):
        if numbers[key] <= 0:
            raise _Invalid(REPORT_NON_POSITIVE_AMOUNT, f"{key}={numbers[key]:g} must be > 0")
    recorded = obj.get("recorded_at_ms")
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)):
        raise _Invalid(REPORT_INVALID_TYPE, "recorded_at_ms must be an integer (epoch milliseconds)")
    if isinstance(recorded, float) and (not math.isfinite(recorded) or recorded != int(recorded)):
        raise _Invalid(REPORT_INVALID_TYPE, "recorded_at_ms must be a whole number of milliseconds")
    recorded = int(recorded)
    if not MIN_EPOCH_MS <= recorded <= MAX_EPOCH_MS:
        raise _Invalid(REPORT_OUT_OF_RANGE, f"recorded_at_ms={recorded} is not epoch milliseconds between 2001 and 2100")
    experiment_id = _text(obj, "experiment_id", required=False, may_have_control=may_have_control)
    fill_quality = _unit_interval(obj, "fill_quality")
    propensity = _unit_interval(obj, "assignment_propensity")
    covariates_json = _covariates(obj)
    # Two deliveries are "the same report" when every stored field is equal (key order, whitespace and 1 vs 1.0
    # do not matter), so the digest is taken over the validated values rather than the raw bytes.
    canonical = repr((report_kind, event_type, ids["topic"], ids["bot_id"], ids["strategy_slug"], mode, ids["pair_key"],
                      ids["market_id"], numbers["size_pusd"], numbers["notional_pusd"], numbers["edge_pusd"],
                      numbers["slippage_bps"], recorded, experiment_id, fill_quality, propensity, covariates_json))
    return Fill(
        report_id=ids["report_id"], report_kind=report_kind, event_type=event_type, topic=ids["topic"],
        bot_id=ids["bot_id"], strategy_slug=ids["strategy_slug"], mode=mode, pair_key=ids["pair_key"],
        market_id=ids["market_id"], size_pusd=numbers["size_pusd"], notional_pusd=numbers["notional_pusd"],
        edge_pusd=numbers["edge_pusd"], slippage_bps=numbers["slippage_bps"], recorded_at_ms=recorded,
        experiment_id=experiment_id, fill_quality=fill_quality, assignment_propensity=propensity,
        covariates_json=covariates_json,
        content_sha256=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
    )


_FINITE = math.isfinite


def _fast_fill(obj: dict, may_have_control: bool) -> Fill | None:
    """The common case, checked in one pass: a fully valid fill. Returns None at the first doubt, and the
    detailed validator then names the reason (so both paths must agree on what is valid)."""
    g = obj.get
    ids = [g(k) for k in ID_FIELDS]
    for value in ids:
        if type(value) is not str or not 0 < len(value) <= MAX_ID_LENGTH:
            return None
    if g("report_kind") != "OperationsReport" or g("event_type") != "FILL" or g("mode") not in MODES:
        return None
    nums = [g(k) for k in NUMBER_FIELDS]
    for value in nums:
        if type(value) not in (int, float) or not _FINITE(value):
            return None
    size, notional, edge, slippage = (float(v) for v in nums)
    recorded = g("recorded_at_ms")
    if type(recorded) is not int or not MIN_EPOCH_MS <= recorded <= MAX_EPOCH_MS or size <= 0 or notional <= 0:
        return None
    experiment_id, quality, propensity, covariates = g("experiment_id"), g("fill_quality"), g("assignment_propensity"), g("covariates")
    if experiment_id is not None and (type(experiment_id) is not str or not 0 < len(experiment_id) <= MAX_ID_LENGTH):
        return None
    for value in (quality, propensity):
        if value is not None and (type(value) not in (int, float) or not 0.0 <= value <= 1.0):
            return None
    if may_have_control:
        return None
    covariates_json = None
    if covariates is not None:
        if type(covariates) is not dict or len(covariates) > MAX_COVARIATES:
            return None
        for key, value in covariates.items():
            kind = type(value)
            if not 0 < len(key) <= MAX_ID_LENGTH:
                return None
            if kind is str:
                if len(value) > MAX_ID_LENGTH:
                    return None
            elif kind not in (int, float) or not _FINITE(value):
                return None
        covariates_json = json.dumps(covariates, sort_keys=True, separators=(",", ":"))
    report_id, topic, bot_id, slug, pair_key, market_id = ids
    quality = float(quality) if quality is not None else None
    propensity = float(propensity) if propensity is not None else None
    canonical = repr(("OperationsReport", "FILL", topic, bot_id, slug, g("mode"), pair_key, market_id, size, notional,
                      edge, slippage, recorded, experiment_id, quality, propensity, covariates_json))
    return Fill(report_id, "OperationsReport", "FILL", topic, bot_id, slug, g("mode"), pair_key, market_id, size,
                notional, edge, slippage, recorded, experiment_id, quality, propensity, covariates_json,
                hashlib.sha256(canonical.encode("utf-8")).hexdigest())


def validate_line(raw: bytes | str) -> Fill | Rejection:
    """Validate one line of the report archive (without its newline)."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_LINE_BYTES:
            return Rejection(REPORT_LINE_TOO_LONG, f"line is {len(raw)} bytes (max {MAX_LINE_BYTES})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection(REPORT_INVALID_ENCODING, f"not UTF-8: {exc.reason} at byte {exc.start}")
    else:
        text = raw
        if len(text.encode("utf-8")) > MAX_LINE_BYTES:
            return Rejection(REPORT_LINE_TOO_LONG, f"line longer than {MAX_LINE_BYTES} bytes")
    if not text.strip():
        return Rejection(REPORT_EMPTY_LINE, "empty line")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except _Invalid as exc:
        return Rejection(exc.code, exc.detail)
    except (ValueError, RecursionError) as exc:
        return Rejection(REPORT_INVALID_JSON, f"not JSON: {str(exc)[:200]}")
    if not isinstance(obj, dict):
        return Rejection(REPORT_NOT_OBJECT, f"a JSON {type(obj).__name__}, not an object")
    report_id = obj.get("report_id") if isinstance(obj.get("report_id"), str) else None
    if report_id is not None and (len(report_id) > MAX_ID_LENGTH or _CONTROL.search(report_id)):
        report_id = None  # never store an unbounded or control-laden id in the quarantine's id column
    # JSON forbids raw control characters in strings, so they can only arrive escaped (a backslash) or as DEL.
    may_have_control = "\\" in text or "\x7f" in text
    fast = _fast_fill(obj, may_have_control)
    if fast is not None:
        return fast
    try:
        return _validate_object(obj, may_have_control)
    except _Invalid as exc:
        return Rejection(exc.code, exc.detail, report_id)


def bounded_raw_text(raw: bytes | str) -> str:
    """The quarantined line as text, cut to MAX_RAW_TEXT characters and safe for any text column."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    # NUL is not storable in PostgreSQL text; keep it visible instead of losing the row.
    return text[:MAX_RAW_TEXT].replace("\x00", "\\u0000")
