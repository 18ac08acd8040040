"""Canonical JSON, digests and export conventions for digest-bound artifacts.

Conventions (eval_goal_surface spec section 0):

* Canonicalization ``si/jcs-strict/v1``: RFC 8785 (JCS) restricted to the JSON subset our
  artifacts use. Object keys are sorted by their UTF-16 code units (the JCS rule, which differs
  from Python's code-point order only for characters outside the BMP), no insignificant
  whitespace, UTF-8 output, JCS string escaping. Numbers must be integers within the IEEE-754
  safe range (|n| <= 2**53 - 1), where JCS and plain decimal notation coincide. Floats, NaN and
  infinities are rejected outright: digest-bound artifacts carry scaled integers
  (``*_bp``, ``*_ppm``, ``*_micros``, ``*_ms``) instead. For this subset the output is
  byte-identical to RFC 8785.
* Digests are ``"sha256:<hex>"`` over the canonical bytes.
* ``bindings`` pin meaning as ``{"id": ..., "digest": ...}``.
* ``created_at`` is operational time; ``as_of`` carries ``{"time", "clock_profile"}`` with the
  ``si/clock-profile/utc/v1`` profile. Timestamps are UTC ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``.

No clock is ever read here: callers pass the times, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Mapping

CANONICALIZATION = "si/jcs-strict/v1"
CLOCK_PROFILE = "si/clock-profile/utc/v1"
DIGEST_PREFIX = "sha256:"

MAX_SAFE_INT = 2**53 - 1
MICROS = 1_000_000
BP = 10_000

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class CanonicalizationError(ValueError):
    """A value cannot be put into a digest-bound artifact (float, NaN, bad key, ...)."""


def _fail(path: str, message: str) -> None:
    raise CanonicalizationError(f"{path or '$'}: {message}")


def _check_str(value: str, path: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(path, "string contains a lone surrogate (not valid UTF-8)")
    return value


def _key_order(key: str) -> bytes:
    # JCS sorts member names by UTF-16 code units, not by code points.
    return key.encode("utf-16-be", "surrogatepass")


def _encode(value: Any, out: list[str], path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            _fail(path, f"integer {value} outside the IEEE-754 safe range required by JCS")
        out.append(str(int(value)))
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            _fail(path, f"non-finite number {value!r} is not allowed")
        _fail(path, f"float {value!r} is not allowed in a digest-bound artifact; "
                    "export a scaled integer (*_bp, *_ppm, *_micros)")
    elif isinstance(value, str):
        # json.dumps with ensure_ascii=False escapes exactly what JCS escapes:
        # '"', '\\', \b \f \n \r \t, and other C0 controls as lower-case \u00xx.
        out.append(json.dumps(_check_str(value, path), ensure_ascii=False))
    elif isinstance(value, Mapping):
        items = []
        for k in value:
            if not isinstance(k, str):
                _fail(path, f"object key {k!r} is not a string")
            _check_str(k, path)
            items.append(k)
        items.sort(key=_key_order)
        out.append("{")
        for i, k in enumerate(items):
            if i:
                out.append(",")
            out.append(json.dumps(k, ensure_ascii=False))
            out.append(":")
            _encode(value[k], out, f"{path}.{k}" if path else k)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out, f"{path}[{i}]")
        out.append("]")
    else:
        _fail(path, f"type {type(value).__name__} is not JSON (convert with to_exportable first)")


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 bytes of ``obj`` under ``si/jcs-strict/v1`` (see module docstring)."""
    out: list[str] = []
    _encode(obj, out, "")
    return "".join(out).encode("utf-8")


def digest_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of raw bytes."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def digest(obj: Any) -> str:
    """``sha256:<hex>`` over the canonical JSON encoding of ``obj``."""
    return digest_bytes(canonical_json(obj))


def is_digest(value: Any) -> bool:
    """True when ``value`` looks like ``sha256:`` followed by 64 lower-case hex digits."""
    return isinstance(value, str) and bool(_DIGEST_RE.fullmatch(value))


def binding(id: str, target: Any) -> dict[str, str]:
    """A ``{id, digest}`` binding; ``target`` is a digest string or an object to digest.

    Meaningful identities must not be digest-only, hence a non-empty ``id`` is required.
    """
    if not isinstance(id, str) or not id.strip():
        raise CanonicalizationError("binding id must be a non-empty string")
    d = target if is_digest(target) else digest(target)
    return {"id": id, "digest": d}


# -- time ------------------------------------------------------------------------------------

def format_timestamp(value: datetime | str) -> str:
    """UTC timestamp string ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``; naive datetimes are rejected."""
    if isinstance(value, str):
        value = parse_timestamp(value)
    if not isinstance(value, datetime):
        raise CanonicalizationError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise CanonicalizationError("naive datetime: timestamps must be timezone-aware (UTC)")
    v = value.astimezone(timezone.utc)
    base = v.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{v.microsecond:06d}Z" if v.microsecond else f"{base}Z"


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp with an explicit offset (``Z`` accepted) into UTC."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        raise CanonicalizationError(f"not an ISO-8601 timestamp: {value!r}") from None
    if dt.tzinfo is None:
        raise CanonicalizationError(f"timestamp {value!r} has no UTC offset")
    return dt.astimezone(timezone.utc)


def stored_timestamp(value: Any) -> str | None:
    """A time as a database returns it (a PostgreSQL datetime, SQLite ISO text without an offset, or epoch
    milliseconds) as the canonical UTC timestamp string; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_timestamp(value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_timestamp(datetime.fromtimestamp(value / 1000, tz=timezone.utc))
    text = str(value).strip()
    try:
        return format_timestamp(parse_timestamp(text))
    except CanonicalizationError:
        # SQLite text written without an offset is UTC by construction (strftime).
        return format_timestamp(parse_timestamp(text.replace(" ", "T") + "Z"))


def as_of(time: datetime | str) -> dict[str, str]:
    """The ``as_of`` marker: ``{"time": <UTC timestamp>, "clock_profile": "si/clock-profile/utc/v1"}``."""
    return {"time": format_timestamp(time), "clock_profile": CLOCK_PROFILE}


# -- numbers ---------------------------------------------------------------------------------

def _to_decimal(x: Any) -> Decimal:
    if isinstance(x, bool):
        raise CanonicalizationError(f"boolean {x!r} is not a number")
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            raise CanonicalizationError(f"non-finite number {x!r}")
        # repr gives the shortest round-trip decimal, so 0.145 scales to exactly 1450.
        return Decimal(repr(x))
    if isinstance(x, (int, Decimal)):
        if isinstance(x, Decimal) and not x.is_finite():
            raise CanonicalizationError(f"non-finite number {x!r}")
        return Decimal(x)
    if isinstance(x, str):
        try:
            d = Decimal(x.strip())
        except InvalidOperation:
            raise CanonicalizationError(f"not a number: {x!r}") from None
        if not d.is_finite():
            raise CanonicalizationError(f"non-finite number {x!r}")
        return d
    raise CanonicalizationError(f"not a number: {x!r}")


def scale_int(x: Any, scale: int) -> int:
    """``round(x * scale)`` (half-even, decimal-exact) as an int; rejects NaN/inf/bool."""
    return int((_to_decimal(x) * scale).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def to_bp(ratio: Any) -> int:
    """A ratio in [0, 1] (or any real) as basis points: ``round(x * 10000)``."""
    return scale_int(ratio, BP)


def to_micros(x: Any) -> int:
    """A real value as integer millionths of its unit: ``round(x * 1e6)``."""
    return scale_int(x, MICROS)


def from_micros(n: int | None) -> float | None:
    """Inverse of :func:`to_micros` for display and computation (None stays None)."""
    return None if n is None else n / MICROS


def to_exportable(obj: Any, path: str = "") -> Any:
    """Convert free-form inputs into the strict canonical subset.

    * ``datetime`` -> UTC timestamp string; ``date`` -> ``YYYY-MM-DD``; ``timedelta`` -> int ms.
    * a float or Decimal under key ``k`` -> integer micros under key ``k_micros`` (so the unit
      change is visible in the name); a float inside a list is rejected (no key to rename).
    * tuples -> lists; NaN/inf -> error; other non-JSON types -> error.
    """
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                _fail(path, f"object key {k!r} is not a string")
            sub = f"{path}.{k}" if path else k
            if isinstance(v, (float, Decimal)) and not isinstance(v, bool):
                key = k if k.endswith("_micros") else f"{k}_micros"
                if key in obj and key != k:
                    _fail(sub, f"both {k!r} and {key!r} present")
                try:
                    out[key] = to_micros(v)
                except CanonicalizationError as e:
                    _fail(sub, str(e))
            else:
                out[k] = to_exportable(v, sub)
        return out
    if isinstance(obj, (list, tuple)):
        res = []
        for i, v in enumerate(obj):
            if isinstance(v, (float, Decimal)) and not isinstance(v, bool):
                _fail(f"{path}[{i}]", "float inside a list cannot be exported; use a keyed object")
            res.append(to_exportable(v, f"{path}[{i}]"))
        return res
    if isinstance(obj, datetime):
        return format_timestamp(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return int(obj / timedelta(milliseconds=1))
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "to_export"):
        return to_exportable(obj.to_export(), path)
    _fail(path, f"type {type(obj).__name__} cannot be exported")


# The profile document pinned by canonicalization_profile_digest: a verifier compares digests of
# this document rather than parsing prose.
CANONICALIZATION_PROFILE: dict[str, Any] = {
    "id": CANONICALIZATION,
    "base": "RFC 8785 (JSON Canonicalization Scheme)",
    "restrictions": [
        "numbers are integers with |n| <= 9007199254740991",
        "no floats, NaN or infinities; scaled integers (*_bp, *_ppm, *_micros, *_ms) instead",
        "strings are valid UTF-8",
    ],
    "key_order": "UTF-16 code units (JCS)",
    "digest": "sha256 over the canonical UTF-8 bytes, written sha256:<lower-case hex>",
    "timestamps": "UTC, YYYY-MM-DDTHH:MM:SS[.ffffff]Z",
    "clock_profile": CLOCK_PROFILE,
}
CANONICALIZATION_PROFILE_DIGEST = digest(CANONICALIZATION_PROFILE)


def provenance_fields(created_at: datetime | str, as_of_time: datetime | str | None = None) -> dict[str, Any]:
    """``created_at``, ``as_of`` and the canonicalization declaration for an exported artifact."""
    return {
        "created_at": format_timestamp(created_at),
        "as_of": as_of(as_of_time if as_of_time is not None else created_at),
        "canonicalization": CANONICALIZATION,
        "canonicalization_profile_digest": CANONICALIZATION_PROFILE_DIGEST,
    }
