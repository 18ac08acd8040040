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
REPORT_DUPLICATE_KEY = "REPORT_DUPLICATE_KEY"
# A landing-folder entry that is not read at all (a symbolic link): recorded with line number 0.
REPORT_SOURCE_REFUSED = "REPORT_SOURCE_REFUSED"
# A line or message that validation or the database could not handle (an unexpected error); `detail` holds it.
REPORT_UNPROCESSABLE = "REPORT_UNPROCESSABLE"

QUARANTINE_REASONS = (
    REPORT_EMPTY_LINE, REPORT_LINE_TOO_LONG, REPORT_INVALID_ENCODING, REPORT_INVALID_JSON, REPORT_NOT_OBJECT,
    REPORT_MISSING_FIELD, REPORT_INVALID_TYPE, REPORT_NON_FINITE_NUMBER, REPORT_NON_POSITIVE_AMOUNT,
    REPORT_OUT_OF_RANGE, REPORT_UNKNOWN_MODE, REPORT_UNSUPPORTED_KIND, REPORT_FIELD_TOO_LONG,
    REPORT_CONTROL_CHARACTERS, REPORT_CONFLICTING_REDELIVERY, REPORT_DUPLICATE_KEY, REPORT_SOURCE_REFUSED,
    REPORT_UNPROCESSABLE,
)

MODES = ("live", "shadow", "replay")
MAX_LINE_BYTES = 64 * 1024
MAX_ID_LENGTH = 128
MAX_COVARIATES = 32
# Off-policy logs: at most this many candidate policies per fill, each named like a contract's variant ids.
MAX_CANDIDATE_POLICIES = 16
POLICY_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
MAX_RAW_TEXT = 4096
# Seconds-scale timestamps are almost always a unit bug upstream: demand epoch milliseconds after 2001-09-09.
MIN_EPOCH_MS = 1_000_000_000_000
MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01
# Bounds on every number, so that every value derived from a report stays finite: the largest edge delta is
# 2 * MAX_ABS_PUSD / MIN_AMOUNT_PUSD * 10^4 = 2e22 bps, and sums of squares over billions of pairs stay far
# below the float range. Subnormal or astronomically large amounts are producer bugs, not fills.
MIN_AMOUNT_PUSD = 1e-6
MAX_ABS_PUSD = 1e12  # size, notional and |edge|
MAX_ABS_SLIPPAGE_BPS = 1e6
MAX_ABS_COVARIATE = 1e12
NUMBER_BOUNDS = {"size_pusd": (MIN_AMOUNT_PUSD, MAX_ABS_PUSD), "notional_pusd": (MIN_AMOUNT_PUSD, MAX_ABS_PUSD),
                 "edge_pusd": (-MAX_ABS_PUSD, MAX_ABS_PUSD),
                 "slippage_bps": (-MAX_ABS_SLIPPAGE_BPS, MAX_ABS_SLIPPAGE_BPS)}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Lone UTF-16 surrogates arrive only as JSON escapes ("\ud800"); no database driver can encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")
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
    behavior_propensity: float | None = None
    candidate_propensities_json: str | None = None

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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all distinct: with a repeated key, which value counts is parser-dependent."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Invalid(REPORT_DUPLICATE_KEY, f"key {repeated[:40]!r} appears more than once in one object")
    return obj


# One decoder for every line: json.loads with options would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def parse_report_json(text: str) -> Any:
    """The JSON value of one report line: NaN/Infinity and repeated keys raise ``_Invalid``, other syntax errors
    ``ValueError`` (or ``RecursionError`` for absurd nesting)."""
    return _DECODER.decode(text)


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
    if may_have_control and _SURROGATE.search(value):
        raise _Invalid(REPORT_INVALID_ENCODING, f"{key} contains a lone UTF-16 surrogate escape")
    return value


def _raw_number(obj: dict, key: str, *, required: bool = True) -> int | float | None:
    """The field as the JSON parser gave it (an int or a finite float), never converted: a 400-digit integer
    stays an int here, so comparing it is exact and cannot overflow."""
    value = obj.get(key)
    if value is None:
        if required:
            raise _Invalid(REPORT_MISSING_FIELD, f"missing field {key}")
        return None
    # bool is an int in Python; a boolean amount is a producer bug, not 0/1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(REPORT_INVALID_TYPE, f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(REPORT_NON_FINITE_NUMBER, f"{key} is not finite")
    return value


def _number(obj: dict, key: str, lo: float, hi: float, *, required: bool = True) -> float | None:
    value = _raw_number(obj, key, required=required)
    if value is None:
        return None
    if not lo <= value <= hi:
        raise _Invalid(REPORT_OUT_OF_RANGE, f"{key}={_short(value)} is outside [{lo:g}, {hi:g}]")
    return float(value)


def _short(value: int | float) -> str:
    if isinstance(value, int) and abs(value) >= 10 ** 15:
        return f"<integer of {len(str(abs(value)))} digits>"
    return f"{value:g}"


def _unit_interval(obj: dict, key: str) -> float | None:
    return _number(obj, key, 0.0, 1.0, required=False)


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
        if _SURROGATE.search(key) or (isinstance(item, str) and _SURROGATE.search(item)):
            raise _Invalid(REPORT_INVALID_ENCODING, f"covariate {key[:40]!r} contains a lone UTF-16 surrogate escape")
        if len(key) > MAX_ID_LENGTH or _CONTROL.search(key) or not key:
            raise _Invalid(REPORT_INVALID_TYPE, f"covariate name {key[:40]!r} is empty, too long or has control characters")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _Invalid(REPORT_INVALID_TYPE, f"covariate {key} must be a string or a number")
        if isinstance(item, float) and not math.isfinite(item):
            raise _Invalid(REPORT_NON_FINITE_NUMBER, f"covariate {key} is not finite")
        if not isinstance(item, str) and not -MAX_ABS_COVARIATE <= item <= MAX_ABS_COVARIATE:
            raise _Invalid(REPORT_OUT_OF_RANGE, f"covariate {key}={_short(item)} is outside ±{MAX_ABS_COVARIATE:g}")
        if isinstance(item, str) and (len(item) > MAX_ID_LENGTH or _CONTROL.search(item)):
            raise _Invalid(REPORT_FIELD_TOO_LONG if len(item) > MAX_ID_LENGTH else REPORT_CONTROL_CHARACTERS,
                           f"covariate {key} value is too long or has control characters")
        clean[key] = item
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


def _behavior_propensity(obj: dict) -> float | None:
    """P(the logging policy took the logged action): in (0, 1], since a logged action had a chance."""
    value = _raw_number(obj, "behavior_propensity", required=False)
    if value is not None and not 0 < value <= 1:
        raise _Invalid(REPORT_OUT_OF_RANGE, f"behavior_propensity={_short(value)} is outside (0, 1]")
    return None if value is None else float(value)


def _candidate_propensities(obj: dict) -> str | None:
    """Candidate policy name -> P(that policy would have taken the logged action), as canonical JSON."""
    value = obj.get("candidate_propensities")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(REPORT_INVALID_TYPE, "candidate_propensities must be an object of policy name -> probability")
    if len(value) > MAX_CANDIDATE_POLICIES:
        raise _Invalid(REPORT_FIELD_TOO_LONG, f"candidate_propensities has {len(value)} policies (max {MAX_CANDIDATE_POLICIES})")
    clean: dict[str, float] = {}
    for name, p in value.items():
        if not POLICY_NAME.fullmatch(name):
            raise _Invalid(REPORT_INVALID_TYPE, f"candidate policy name {name[:40]!r} must match [a-z][a-z0-9_-]{{0,63}}")
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise _Invalid(REPORT_INVALID_TYPE, f"candidate_propensities.{name} must be a number")
        if isinstance(p, float) and not math.isfinite(p):
            raise _Invalid(REPORT_NON_FINITE_NUMBER, f"candidate_propensities.{name} is not finite")
        if not 0 <= p <= 1:
            raise _Invalid(REPORT_OUT_OF_RANGE, f"candidate_propensities.{name}={_short(p)} is outside [0, 1]")
        clean[name] = float(p)
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


def _content_digest(fields: tuple, behavior: float | None, candidates: str | None) -> str:
    """sha256 of the validated values. The off-policy fields join the tuple only when present, so a report
    without them keeps the digest it had before they existed (redelivery and dedupe unchanged)."""
    if behavior is not None or candidates is not None:
        fields = fields + (behavior, candidates)
    return hashlib.sha256(repr(fields).encode("utf-8")).hexdigest()


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
    for key in NUMBER_FIELDS:
        value = _raw_number(obj, key)
        if key in ("size_pusd", "notional_pusd") and value <= 0:
            raise _Invalid(REPORT_NON_POSITIVE_AMOUNT, f"{key}={_short(value)} must be > 0")
    numbers = {key: _number(obj, key, *NUMBER_BOUNDS[key]) for key in NUMBER_FIELDS}
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
    behavior = _behavior_propensity(obj)
    candidates = _candidate_propensities(obj)
    # Two deliveries are "the same report" when every stored field is equal (key order, whitespace and 1 vs 1.0
    # do not matter), so the digest is taken over the validated values rather than the raw bytes.
    fields = (report_kind, event_type, ids["topic"], ids["bot_id"], ids["strategy_slug"], mode, ids["pair_key"],
              ids["market_id"], numbers["size_pusd"], numbers["notional_pusd"], numbers["edge_pusd"],
              numbers["slippage_bps"], recorded, experiment_id, fill_quality, propensity, covariates_json)
    return Fill(
        report_id=ids["report_id"], report_kind=report_kind, event_type=event_type, topic=ids["topic"],
        bot_id=ids["bot_id"], strategy_slug=ids["strategy_slug"], mode=mode, pair_key=ids["pair_key"],
        market_id=ids["market_id"], size_pusd=numbers["size_pusd"], notional_pusd=numbers["notional_pusd"],
        edge_pusd=numbers["edge_pusd"], slippage_bps=numbers["slippage_bps"], recorded_at_ms=recorded,
        experiment_id=experiment_id, fill_quality=fill_quality, assignment_propensity=propensity,
        covariates_json=covariates_json, content_sha256=_content_digest(fields, behavior, candidates),
        behavior_propensity=behavior, candidate_propensities_json=candidates,
    )


_BOM = b"\xef\xbb\xbf"
_BOUNDS = tuple(NUMBER_BOUNDS[key] for key in NUMBER_FIELDS)


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
    for value, (lo, hi) in zip(nums, _BOUNDS):
        # A range test is also the finiteness test (NaN compares false) and never converts a huge int.
        if type(value) not in (int, float) or not lo <= value <= hi:
            return None
    size, notional, edge, slippage = (float(v) for v in nums)
    recorded = g("recorded_at_ms")
    if type(recorded) is not int or not MIN_EPOCH_MS <= recorded <= MAX_EPOCH_MS:
        return None
    experiment_id, quality, propensity, covariates = g("experiment_id"), g("fill_quality"), g("assignment_propensity"), g("covariates")
    if experiment_id is not None and (type(experiment_id) is not str or not 0 < len(experiment_id) <= MAX_ID_LENGTH):
        return None
    for value in (quality, propensity):
        if value is not None and (type(value) not in (int, float) or not 0.0 <= value <= 1.0):
            return None
    if may_have_control or g("behavior_propensity") is not None or g("candidate_propensities") is not None:
        return None  # off-policy logs take the detailed path
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
            elif kind not in (int, float) or not -MAX_ABS_COVARIATE <= value <= MAX_ABS_COVARIATE:
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
    """Validate one line of the report archive (without its newline). A leading UTF-8 byte-order mark (editors
    and some Windows tools write one at the start of a file) is not part of the report and is dropped."""
    if isinstance(raw, bytes):
        if raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        if len(raw) > MAX_LINE_BYTES:
            return Rejection(REPORT_LINE_TOO_LONG, f"line is {len(raw)} bytes (max {MAX_LINE_BYTES})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection(REPORT_INVALID_ENCODING, f"not UTF-8: {exc.reason} at byte {exc.start}")
    else:
        text = raw[1:] if raw.startswith("\ufeff") else raw
        if len(text.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
            return Rejection(REPORT_LINE_TOO_LONG, f"line longer than {MAX_LINE_BYTES} bytes")
    if not text.strip():
        return Rejection(REPORT_EMPTY_LINE, "empty line")
    try:
        obj = parse_report_json(text)
    except _Invalid as exc:
        return Rejection(exc.code, exc.detail)
    except (ValueError, RecursionError) as exc:
        return Rejection(REPORT_INVALID_JSON, f"not JSON: {str(exc)[:200]}")
    if not isinstance(obj, dict):
        return Rejection(REPORT_NOT_OBJECT, f"a JSON {type(obj).__name__}, not an object")
    report_id = obj.get("report_id") if isinstance(obj.get("report_id"), str) else None
    if report_id is not None and (len(report_id) > MAX_ID_LENGTH or _CONTROL.search(report_id) or _SURROGATE.search(report_id)):
        report_id = None  # never store an unbounded, control-laden or unencodable id in the quarantine's id column
    # JSON forbids raw control characters in strings, so they can only arrive escaped (a backslash) or as DEL.
    may_have_control = "\\" in text or "\x7f" in text
    fast = _fast_fill(obj, may_have_control)
    if fast is not None:
        return fast
    try:
        return _validate_object(obj, may_have_control)
    except _Invalid as exc:
        return Rejection(exc.code, exc.detail, report_id)
    except Exception as exc:  # a case the checks above missed: still a quarantine row, never a stopped ingestion
        return Rejection(REPORT_UNPROCESSABLE, f"validation failed: {type(exc).__name__}: {exc}"[:1000]
                         .encode("utf-8", "backslashreplace").decode("utf-8"), report_id)


def bounded_raw_text(raw: bytes | str) -> str:
    """The quarantined line as text, cut to MAX_RAW_TEXT characters and safe for any text column."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    # NUL is not storable in PostgreSQL text, nor a lone surrogate in any database: keep both visible as escapes.
    text = text[:MAX_RAW_TEXT].encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\u0000")
