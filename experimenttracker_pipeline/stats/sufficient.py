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


class InvalidStatistics(ValueError):
    """Sufficient statistics that no data set can have (negative variance, NaN/inf sums): never a verdict."""


# Rounding headroom of the variance identity: sum of squares of the (shifted) deltas minus n * mean^2 may
# come out negative by a few ulps of the larger term; anything beyond this relative slack is impossible data.
_VARIANCE_SLACK = 1e-9


@dataclass(frozen=True)
class SufficientStats:
    """n and the power sums of the paired deltas (bps), taken about ``shift``.

    ``total = sum(d - shift)``, ``total_sq = sum((d - shift)^2)`` and, when known, ``total_cube =
    sum((d - shift)^3)``. Summing about a reference value near the data (the experiment's first delta, or its
    mean) keeps the variance exact when the deltas sit far from zero: the textbook one-pass formula loses every
    digit for 1e8 + N(0, 1) data. ``shift = 0`` gives the plain sums. Impossible or non-finite sums raise
    ``InvalidStatistics``.
    """

    n: int
    total: float
    total_sq: float
    shift: float = 0.0
    total_cube: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or int(self.n) != self.n:
            raise InvalidStatistics(f"n must be a whole number, got {self.n!r}")
        if self.n < 0:
            raise InvalidStatistics(f"n must be >= 0, got {self.n}")
        sums = {"total": self.total, "total_sq": self.total_sq, "shift": self.shift}
        if self.total_cube is not None:
            sums["total_cube"] = self.total_cube
        bad = [k for k, v in sums.items() if v is None or not math.isfinite(v)]
        if bad:
            raise InvalidStatistics(
                f"non-finite sufficient statistics ({', '.join(f'{k}={sums[k]!r}' for k in bad)}): a delta is NaN or "
                "too large to sum; no interval or verdict can be computed from them")
        if self.n == 0:
            if self.total != 0 or self.total_sq != 0 or (self.total_cube or 0) != 0:
                raise InvalidStatistics("n = 0 with non-zero sums")
            return
        if self.total_sq < 0:
            raise InvalidStatistics(f"sum of squares {self.total_sq!r} is negative")
        square_of_mean = self.total * self.total / self.n
        if self.total_sq - square_of_mean < -_VARIANCE_SLACK * max(self.total_sq, square_of_mean):
            raise InvalidStatistics(
                f"impossible sufficient statistics: n={self.n}, sum={self.total!r}, sum of squares={self.total_sq!r} "
                f"(the sum of squares must be at least sum^2/n = {square_of_mean!r})")

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray, *, shift: float | None = None) -> "SufficientStats":
        """Statistics of the given deltas, summed about ``shift`` (default: the first value)."""
        arr = np.asarray(values, dtype=float).ravel()
        if not np.all(np.isfinite(arr)):
            raise InvalidStatistics("values must be finite")
        if arr.size == 0:
            return cls.empty()
        ref = float(arr[0]) if shift is None else float(shift)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below, with its reason
            y = arr - ref
            return cls(int(arr.size), float(y.sum()), float(np.dot(y, y)), ref, float(np.dot(y * y, y)))

    @classmethod
    def from_moments(cls, n: int, mean: float, sd: float) -> "SufficientStats":
        """Statistics of n deltas with the given mean and sample sd (ddof=1), summed about the mean."""
        if n < 0 or sd < 0:
            raise ValueError("n and sd must be >= 0")
        if n == 0:
            return cls.empty()
        return cls(int(n), 0.0, (n - 1) * sd * sd, float(mean))

    @classmethod
    def empty(cls) -> "SufficientStats":
        return cls(0, 0.0, 0.0)

    def shifted(self, shift: float) -> "SufficientStats":
        """The same statistics summed about another reference value."""
        c = self.shift - shift  # d - shift = (d - self.shift) + c
        n, s1, s2 = self.n, self.total, self.total_sq
        s3 = None if self.total_cube is None else self.total_cube + 3 * c * s2 + 3 * c * c * s1 + n * c ** 3
        return SufficientStats(n, s1 + n * c, s2 + 2 * c * s1 + n * c * c, float(shift), s3)

    def merge(self, other: "SufficientStats") -> "SufficientStats":
        """Statistics of the union of two disjoint samples (sums are additive about a common reference)."""
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        o = other if other.shift == self.shift else other.shifted(self.shift)
        cube = None if self.total_cube is None or o.total_cube is None else self.total_cube + o.total_cube
        return SufficientStats(self.n + o.n, self.total + o.total, self.total_sq + o.total_sq, self.shift, cube)

    @property
    def sum(self) -> float:
        """Sum of the deltas themselves."""
        return self.total + self.n * self.shift

    @property
    def mean(self) -> float:
        return self.shift + self.total / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); NaN when n < 2."""
        if self.n < 2:
            return math.nan
        # About a reference near the data the subtraction loses no digits; a tiny negative from rounding
        # (constant data) is clamped at 0 (anything larger was refused in __post_init__).
        var = (self.total_sq - self.total * self.total / self.n) / (self.n - 1)
        return max(var, 0.0)

    @property
    def sd(self) -> float:
        v = self.variance
        return math.sqrt(v) if math.isfinite(v) else math.nan

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def skewness(self) -> float:
        """Sample skewness g1 = m3 / m2^1.5 (population moments); NaN without the sum of cubes or for n < 3."""
        if self.total_cube is None or self.n < 3:
            return math.nan
        n = self.n
        a = self.total / n
        m2 = self.total_sq / n - a * a
        if m2 <= 0:
            return 0.0
        m3 = self.total_cube / n - 3 * a * self.total_sq / n + 2 * a ** 3
        return float(m3 / m2 ** 1.5)


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


