"""Winsorization of paired deltas (the reference implementation of the SQL version)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .sufficient import SufficientStats, WinsorizedStats

# ---------------------------------------------------------------------------
# Winsorization (reference implementation of the SQL version)
# ---------------------------------------------------------------------------


def winsorize_values(values: Sequence[float] | np.ndarray, pct: float) -> WinsorizedStats:
    """Clip deltas at the ``pct`` and ``100 - pct`` percentiles, return their statistics.

    Percentiles use linear interpolation (numpy's default), which is PostgreSQL's
    ``percentile_cont``, so the SQL aggregate gives the same numbers.
    """
    if not 0 <= pct < 50:
        raise ValueError("pct must be in [0, 50)")
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return WinsorizedStats(SufficientStats.empty(), pct, math.nan, math.nan, 0)
    lo, hi = np.percentile(arr, [pct, 100 - pct])
    clipped = np.clip(arr, lo, hi)
    n_clipped = int(np.count_nonzero((arr < lo) | (arr > hi)))
    return WinsorizedStats(SufficientStats.from_values(clipped), pct, float(lo), float(hi), n_clipped)
