"""Ratio metrics by the delta method: sum of numerators over sum of denominators across pairs.

``fill_size_ratio`` is sum(variant fill size) / sum(control fill size) over the pairs, not the mean of the
per-pair ratios (which small control fills dominate). Its sampling variance comes from the linearisation
l_i = (x_i - R y_i) / mean(y): Var(R) ~ (s_xx - 2 R s_xy + R^2 s_yy) / (n mean(y)^2). The linearised values
have mean 0 and that variance, so ``RatioStats.linearized()`` returns ``SufficientStats`` with mean R and
sd sd(l), on which every interval of ``intervals`` (fixed t, confidence sequence, one-sided bounds) applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .sufficient import InvalidStatistics, SufficientStats


@dataclass(frozen=True)
class RatioStats:
    """Sums over n pairs of numerator x and denominator y, about the reference values (shift_x, shift_y)."""

    n: int
    sum_x: float
    sum_y: float
    sum_xx: float
    sum_yy: float
    sum_xy: float
    shift_x: float = 0.0
    shift_y: float = 0.0

    def __post_init__(self) -> None:
        vals = (self.sum_x, self.sum_y, self.sum_xx, self.sum_yy, self.sum_xy, self.shift_x, self.shift_y)
        if self.n < 0 or not all(v is not None and math.isfinite(v) for v in vals):
            raise InvalidStatistics(f"invalid ratio statistics (n={self.n}, sums={vals})")
        if self.n >= 2:
            cxx, cyy, cxy = self._centred()
            slack = 1e-9 * max(abs(self.sum_xx), abs(self.sum_yy), 1e-300)
            if cxx < -slack or cyy < -slack or cxy * cxy > (max(cxx, 0) * max(cyy, 0)) * (1 + 1e-9) + slack * slack:
                raise InvalidStatistics("impossible ratio statistics (negative variance or |correlation| > 1)")

    @classmethod
    def from_values(cls, x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> "RatioStats":
        xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
        if xa.shape != ya.shape:
            raise ValueError("numerator and denominator need the same length")
        if xa.size == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        a, b = float(xa[0]), float(ya[0])
        u, v = xa - a, ya - b
        return cls(int(xa.size), float(u.sum()), float(v.sum()), float(u @ u), float(v @ v), float(u @ v), a, b)

    def _centred(self) -> tuple[float, float, float]:
        n = self.n
        return (self.sum_xx - self.sum_x**2 / n, self.sum_yy - self.sum_y**2 / n,
                self.sum_xy - self.sum_x * self.sum_y / n)

    @property
    def mean_x(self) -> float:
        return self.shift_x + self.sum_x / self.n if self.n else math.nan

    @property
    def mean_y(self) -> float:
        return self.shift_y + self.sum_y / self.n if self.n else math.nan

    @property
    def ratio(self) -> float:
        return self.mean_x / self.mean_y if self.n and self.mean_y != 0 else math.nan

    @property
    def linearized_sd(self) -> float:
        """sd of l_i = (x_i - R y_i) / mean(y) (ddof 1): the delta-method sd of one pair's contribution."""
        if self.n < 2 or not math.isfinite(self.ratio):
            return math.nan
        cxx, cyy, cxy = self._centred()
        r = self.ratio
        var = (cxx - 2 * r * cxy + r * r * cyy) / (self.n - 1) / self.mean_y**2
        return math.sqrt(max(var, 0.0))

    @property
    def se(self) -> float:
        return self.linearized_sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    def linearized(self) -> SufficientStats:
        """``SufficientStats`` with mean R and the delta-method sd, for the interval functions."""
        if self.n == 0:
            return SufficientStats.empty()
        if not math.isfinite(self.ratio):
            raise InvalidStatistics("ratio metric with a zero denominator total")
        if self.n == 1:
            return SufficientStats(1, 0.0, 0.0, self.ratio)
        return SufficientStats.from_moments(self.n, self.ratio, self.linearized_sd)
