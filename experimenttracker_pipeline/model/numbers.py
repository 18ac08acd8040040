"""Numbers made safe for JSON reports: the one place that cleans floats.

Reports, stored result documents and asset metadata never carry NaN or infinities (``json.dumps`` would
write the non-standard ``NaN``) nor numpy scalars (not serialisable). ``to_json`` turns a nested result into
plain Python: finite floats (rounded to ``sig`` significant digits when asked), ``None`` for NaN/inf, numpy
scalars and arrays as Python numbers and lists, dates as ISO-8601 text. Significant digits, not decimals: a
p-value of 3e-15 must not be reported as 0.
"""

from __future__ import annotations

import math
from datetime import date
from decimal import Decimal
from typing import Any, Mapping

__all__ = ["REPORT_DIGITS", "finite_float", "finite_number", "to_json"]

# Significant digits of the floats in reports and stored verdict/evaluation documents.
REPORT_DIGITS = 6


def finite_float(x: Any, sig: int | None = None) -> float | None:
    """``x`` as a Python float, rounded to ``sig`` significant digits when given; None for None, NaN, inf
    and anything that is not a number (booleans included)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    return float(f"{v:.{sig}g}") if sig is not None else v


def finite_number(value: Any) -> float | int | None:
    """A stored or computed number as a finite Python number: ints stay ints; numpy scalars, Decimals and
    numeric strings become floats; None, booleans, non-numbers, NaN and inf become None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if hasattr(value, "dtype") and hasattr(value, "item"):  # numpy scalar
        return finite_number(value.item())
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def to_json(value: Any, sig: int | None = REPORT_DIGITS) -> Any:
    """``value`` as plain JSON-ready Python (see the module docstring); ``sig=None`` keeps full precision."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, (float, Decimal)):
        return finite_float(value, sig)
    if isinstance(value, Mapping):
        return {str(k): to_json(v, sig) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, sig) for v in value]
    if isinstance(value, date):  # datetime is a date
        return value.isoformat()
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalar (-> Python scalar) or array (-> list)
        return to_json(value.tolist(), sig)
    if hasattr(value, "to_dict"):
        return to_json(value.to_dict(), sig)
    return value
