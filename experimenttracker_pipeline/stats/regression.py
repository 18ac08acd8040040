"""Regression adjustment of paired deltas on pre-declared covariates (CUPED-style variance reduction).

The paired deltas d_i are regressed on the pair's covariates x_i (known before the fills, so not affected by
the variant): d_i = theta + beta'(x_i - c) + e_i, by ordinary least squares from sufficient statistics
(n, sum d, sum d^2, sum x, sum x x', sum x d), which the database aggregates. ``c`` is the declared centre of
each covariate (its known mean, e.g. 0 for a difference that the pairing balances) or, by default, the
sample mean of the experiment's pairs; theta-hat is then the OLS intercept and its standard error is
statsmodels' ``OLS(d, [1, x - c]).fit().bse[0]``. With sample-mean centring the estimate equals the plain
mean of the deltas and the interval is for the effect on the experiment's own mix of pairs (the covariates
held at their observed values): what shrinks is the noise the covariates explain, reported as
``variance_reduction`` = 1 - se_adjusted^2 / se_unadjusted^2.

Validity under continuous monitoring: beta is fitted on all pairs so far and plugged into the same
normal-mixture boundary; the fitted beta converges to the true one at rate sqrt(log log n / n), so the
plug-in changes the estimate by o(width) and the sequence keeps its asymptotic time-uniform coverage
(Waudby-Smith et al. 2023, asymptotic confidence sequences). The residual variance uses n - p - 1 degrees of
freedom, and at least ``min_pairs_per_covariate`` pairs per covariate are required before adjusting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .sufficient import InvalidStatistics, SufficientStats

MIN_PAIRS_PER_COVARIATE = 10


@dataclass(frozen=True)
class RegressionStats:
    """Sums over n pairs of the delta d and covariates x (p of them), about the reference values."""

    n: int
    sum_d: float
    sum_dd: float
    sum_x: tuple[float, ...]
    sum_xx: tuple[tuple[float, ...], ...]
    sum_xd: tuple[float, ...]
    shift_d: float = 0.0
    shift_x: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        p = len(self.sum_x)
        if len(self.sum_xd) != p or len(self.sum_xx) != p or any(len(r) != p for r in self.sum_xx):
            raise InvalidStatistics("regression statistics of inconsistent dimensions")
        if self.shift_x and len(self.shift_x) != p:
            raise InvalidStatistics("one shift per covariate")
        flat = [self.sum_d, self.sum_dd, self.shift_d, *self.sum_x, *self.sum_xd, *self.shift_x,
                *(v for r in self.sum_xx for v in r)]
        if self.n < 0 or not all(v is not None and math.isfinite(v) for v in flat):
            raise InvalidStatistics("non-finite regression statistics")

    @classmethod
    def from_values(cls, d: Sequence[float] | np.ndarray, x: Sequence[Sequence[float]] | np.ndarray) -> "RegressionStats":
        da = np.asarray(d, dtype=float).ravel()
        xa = np.asarray(x, dtype=float).reshape(da.size, -1)
        if da.size == 0:
            p = xa.shape[1]
            return cls(0, 0.0, 0.0, (0.0,) * p, tuple((0.0,) * p for _ in range(p)), (0.0,) * p, 0.0, (0.0,) * p)
        sd, sx = float(da[0]), xa[0].astype(float)
        u, v = da - sd, xa - sx
        return cls(int(da.size), float(u.sum()), float(u @ u), tuple(v.sum(axis=0)), tuple(map(tuple, v.T @ v)),
                   tuple(v.T @ u), sd, tuple(float(s) for s in sx))

    @property
    def covariates(self) -> int:
        return len(self.sum_x)

    def unadjusted(self) -> SufficientStats:
        return SufficientStats(self.n, self.sum_d, self.sum_dd, self.shift_d)


@dataclass(frozen=True)
class AdjustedEstimate:
    estimate: float
    se: float
    se_unadjusted: float
    variance_reduction: float  # 1 - se^2 / se_unadjusted^2 (negative if the covariates only cost df)
    coefficients: tuple[float, ...]
    residual_sd: float
    n: int
    covariates: int

    def as_stats(self) -> SufficientStats:
        """``SufficientStats`` with this estimate and standard error, for the interval functions."""
        return SufficientStats.from_moments(self.n, self.estimate, self.se * math.sqrt(self.n))


def regression_adjusted(
    stats: RegressionStats, centre: Sequence[float | None] | None = None, *,
    min_pairs_per_covariate: int = MIN_PAIRS_PER_COVARIATE,
) -> AdjustedEstimate | None:
    """OLS intercept of the deltas on the covariates centred at ``centre`` (None entries: the sample mean).

    None when there are too few pairs (< ``min_pairs_per_covariate`` per covariate, or n <= p + 1) or the
    covariates are collinear or constant.
    """
    n, p = stats.n, stats.covariates
    if p == 0 or n < max(min_pairs_per_covariate * p, p + 2):
        return None
    sx = np.array(stats.sum_x, dtype=float)
    sxx = np.array(stats.sum_xx, dtype=float)
    sxd = np.array(stats.sum_xd, dtype=float)
    cxx = sxx - np.outer(sx, sx) / n
    cxd = sxd - sx * stats.sum_d / n
    cdd = stats.sum_dd - stats.sum_d**2 / n
    scale = np.sqrt(np.clip(np.diag(cxx), 0, None))
    if np.any(scale <= 1e-12 * (1 + np.abs(sx / n))):
        return None
    corr = cxx / np.outer(scale, scale)
    if np.linalg.cond(corr) > 1e10:
        return None
    beta = np.linalg.solve(cxx, cxd)
    rss = max(float(cdd - beta @ cxd), 0.0)
    sigma2 = rss / (n - p - 1)
    shift_x = np.array(stats.shift_x or (0.0,) * p, dtype=float)
    xbar = shift_x + sx / n
    c = np.array([xbar[j] if centre is None or centre[j] is None else float(centre[j]) for j in range(p)])
    dbar = stats.shift_d + stats.sum_d / n
    gap = xbar - c
    estimate = float(dbar - beta @ gap)
    se = math.sqrt(sigma2 * (1 / n + float(gap @ np.linalg.solve(cxx, gap))))
    se_un = math.sqrt(max(cdd, 0.0) / (n - 1) / n)
    reduction = 1 - se**2 / se_un**2 if se_un > 0 else 0.0
    return AdjustedEstimate(estimate, se, se_un, reduction, tuple(float(b) for b in beta), math.sqrt(sigma2), n, p)
