"""Sufficient statistics of paired deltas (n, sum, sum of squares) and the result containers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from experimenttracker_pipeline.model.numbers import to_json

# ---------------------------------------------------------------------------
# Sufficient statistics and result containers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SufficientStats:
    """n, sum and sum of squares of the paired deltas (bps)."""

    n: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray) -> "SufficientStats":
        arr = np.asarray(values, dtype=float).ravel()
        if not np.all(np.isfinite(arr)):
            raise ValueError("values must be finite")
        return cls(int(arr.size), float(arr.sum()), float(np.dot(arr, arr)))

    @classmethod
    def from_moments(cls, n: int, mean: float, sd: float) -> "SufficientStats":
        """Statistics of n deltas with the given mean and sample sd (ddof=1)."""
        if n < 0 or sd < 0:
            raise ValueError("n and sd must be >= 0")
        return cls(int(n), n * mean, (n - 1) * sd * sd + n * mean * mean if n > 0 else 0.0)

    @classmethod
    def empty(cls) -> "SufficientStats":
        return cls(0, 0.0, 0.0)

    def merge(self, other: "SufficientStats") -> "SufficientStats":
        """Statistics of the union of two disjoint samples (sums are additive)."""
        return SufficientStats(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); NaN when n < 2."""
        if self.n < 2:
            return math.nan
        # Textbook one-pass formula; the subtraction can go slightly negative by rounding when
        # all deltas are (nearly) equal, so clamp at 0.
        var = (self.total_sq - self.total * self.total / self.n) / (self.n - 1)
        return max(var, 0.0)

    @property
    def sd(self) -> float:
        v = self.variance
        return math.sqrt(v) if math.isfinite(v) else math.nan

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan


@dataclass(frozen=True)
class Interval:
    """A two-sided interval for the mean paired delta, with its test of mean = 0.

    ``critical_value`` is the multiplier of the standard error (t quantile, mixture boundary
    in SE units, or group-sequential z bound). ``information_fraction`` and ``look`` are set
    for group-sequential intervals only.
    """

    low: float
    high: float
    estimate: float
    se: float
    p_value: float
    method: str
    alpha: float
    critical_value: float = math.nan
    information_fraction: float | None = None
    look: int | None = None

    @property
    def width(self) -> float:
        return self.high - self.low

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return to_json(asdict(self), sig=10)


@dataclass(frozen=True)
class SRMResult:
    chi2: float
    p_value: float
    mismatch: bool
    observed_share: float
    expected_share: float
    n_variant: int
    n_control: int
    alpha: float

    def to_dict(self) -> dict:
        return to_json(asdict(self), sig=10)


@dataclass(frozen=True)
class WinsorizedStats:
    stats: SufficientStats
    pct: float
    low_clip: float
    high_clip: float
    n_clipped: int


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _infinite_interval(stats: SufficientStats, method: str, alpha: float) -> Interval:
    return Interval(-math.inf, math.inf, stats.mean, math.nan, 1.0, method, alpha)


