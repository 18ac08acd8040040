"""Instrumental variables: 2SLS with HC1 errors, weak-instrument diagnostics and the Anderson-Rubin set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from experimenttracker_pipeline.model.numbers import to_json

from .common import WEAK_INSTRUMENT, design_matrix


# ----------------------------------------------------------------------------------------
# Instrumental variables
# ----------------------------------------------------------------------------------------
@dataclass
class IVResult:
    """2SLS effect of ``treatment`` with HC1-robust SE, first-stage F and an Anderson-Rubin set."""

    effect: float
    se: float
    ci_95_low: float
    ci_95_high: float
    first_stage_f: float
    first_stage_f_nonrobust: float
    partial_r2: float
    n: int
    n_instruments: int
    weak: bool
    ar_ci: dict
    warnings: list[str]

    def to_dict(self) -> dict:
        d = {
            "estimate_bps": self.effect, "se": self.se, "ci_95_low": self.ci_95_low,
            "ci_95_high": self.ci_95_high, "first_stage_f": self.first_stage_f,
            "first_stage_f_nonrobust": self.first_stage_f_nonrobust, "partial_r2": self.partial_r2,
            "n": self.n, "n_instruments": self.n_instruments, "weak_instrument": self.weak,
            "anderson_rubin_ci": self.ar_ci,
            "recommended_ci": "anderson_rubin" if self.weak else "wald",
            "warnings": self.warnings,
        }
        return to_json(d, sig=None)


def _ols(X, y):
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    return beta, y - X @ beta


def _hc1_cov(X, resid_cross, XtX_inv):
    """HC1 sandwich with given per-row residual products (n x [k x k] weights)."""
    n, k = X.shape
    meat = (X * resid_cross[:, None]).T @ X
    return XtX_inv @ meat @ XtX_inv * n / (n - k)


def _wald(b, V):
    b = np.atleast_1d(b)
    V = np.atleast_2d(V)
    return float(b @ np.linalg.solve(V, b))


def iv_2sls(
    df: pd.DataFrame,
    outcome: str,
    treatment: str,
    instrument: str | Sequence[str],
    covariates: Sequence[str] = (),
    *,
    weak_f: float = 10.0,
    alpha: float = 0.05,
) -> IVResult:
    """Two-stage least squares of ``outcome`` on ``treatment`` instrumented by ``instrument``.

    Exogenous controls = intercept + ``design_matrix(covariates)``.  SE is HC1-robust
    (= linearmodels ``IV2SLS(..).fit(cov_type="robust", debiased=True)``).  First-stage
    partial F is the HC1 Wald test of the excluded instruments divided by their number.
    F < ``weak_f`` gives ``CAUSAL_WEAK_INSTRUMENT``, and the Anderson-Rubin set (robust,
    exact closed form for one instrument, grid inversion otherwise) is the CI to use.
    """
    inst = [instrument] if isinstance(instrument, str) else list(instrument)
    data = df.reset_index(drop=True)
    y = pd.to_numeric(data[outcome]).to_numpy(dtype=float)
    d = pd.to_numeric(data[treatment]).to_numpy(dtype=float)
    Zx = np.column_stack([pd.to_numeric(data[c]).to_numpy(dtype=float) for c in inst])
    W, _ = design_matrix(data, list(covariates))
    W = np.column_stack([np.ones(len(y)), W])
    n, q = len(y), Zx.shape[1]
    Z = np.column_stack([W, Zx])
    X = np.column_stack([W, d])
    k = X.shape[1]

    # First stage: d on [W, Z]; partial F on the excluded instruments.
    ZtZ_inv = np.linalg.pinv(Z.T @ Z)
    pi, vd = _ols(Z, d)
    Vfs = _hc1_cov(Z, vd**2, ZtZ_inv)
    idx = slice(W.shape[1], Z.shape[1])
    f_rob = _wald(pi[idx], Vfs[idx, idx]) / q
    _, vd_r = _ols(W, d)
    rss_u, rss_r = float(vd @ vd), float(vd_r @ vd_r)
    f_nonrob = ((rss_r - rss_u) / q) / (rss_u / (n - Z.shape[1]))
    partial_r2 = (rss_r - rss_u) / rss_r if rss_r > 0 else float("nan")

    # Second stage with the projected regressors; residuals use the actual d.
    Xhat = Z @ (ZtZ_inv @ (Z.T @ X))
    XhXh_inv = np.linalg.pinv(Xhat.T @ X)
    beta = XhXh_inv @ (Xhat.T @ y)
    u = y - X @ beta
    A = np.linalg.pinv(Xhat.T @ Xhat)
    V = _hc1_cov(Xhat, u**2, A)
    eff, se = float(beta[-1]), float(np.sqrt(V[-1, -1]))
    zc = stats.norm.ppf(1 - alpha / 2)

    ar = anderson_rubin_ci(y, d, W, Zx, alpha=alpha, center=eff, scale=se)
    weak = bool(f_rob < weak_f)
    return IVResult(eff, se, eff - zc * se, eff + zc * se, float(f_rob), float(f_nonrob),
                    float(partial_r2), n, q, weak, ar, [WEAK_INSTRUMENT] if weak else [])


def anderson_rubin_ci(y, d, W, Zx, *, alpha=0.05, center=0.0, scale=1.0, grid_points=4001) -> dict:
    """Heteroskedasticity-robust Anderson-Rubin confidence set for the coefficient on ``d``.

    {b : HC1 Wald(Z-coefficients of y - b d on [W, Z]) <= chi2_q(1-alpha)}.  The Wald
    statistic is a ratio of quadratics in b, so with one instrument the set is solved in
    closed form (an interval, the whole line, two rays or empty); with several it is
    inverted on a grid around ``center`` (+-50 ``scale``).  Unbounded ends are ``None``.
    """
    Zx = np.atleast_2d(np.asarray(Zx, dtype=float).T).T
    q = Zx.shape[1]
    Z = np.column_stack([W, Zx])
    n, kz = Z.shape
    ZtZ_inv = np.linalg.pinv(Z.T @ Z)
    gy, ey = _ols(Z, y)
    gd, ed = _ols(Z, d)
    sl = slice(W.shape[1], kz)
    Vyy = _hc1_cov(Z, ey * ey, ZtZ_inv)[sl, sl]
    Vyd = _hc1_cov(Z, ey * ed, ZtZ_inv)[sl, sl]
    Vdd = _hc1_cov(Z, ed * ed, ZtZ_inv)[sl, sl]
    a, b = gy[sl], gd[sl]
    crit = float(stats.chi2.ppf(1 - alpha, q))
    if q == 1:
        a, b = float(a[0]), float(b[0])
        v11, v12, v22 = float(Vyy[0, 0]), float(Vyd[0, 0]), float(Vdd[0, 0])
        # (a - b x)^2 <= c (v11 - 2 v12 x + v22 x^2)  <=>  A x^2 + B x + C <= 0
        A = b * b - crit * v22
        B = -2 * a * b + 2 * crit * v12
        C = a * a - crit * v11
        disc = B * B - 4 * A * C
        if abs(A) < 1e-300:
            x0 = -C / B if B != 0 else None
            if x0 is None:
                return {"kind": "whole_line" if C <= 0 else "empty", "intervals": [[None, None]] if C <= 0 else []}
            return {"kind": "unbounded", "intervals": [[None, x0]] if B > 0 else [[x0, None]]}
        if A > 0:
            if disc < 0:
                return {"kind": "empty", "intervals": []}
            r = np.sqrt(disc)
            return {"kind": "bounded", "intervals": [[(-B - r) / (2 * A), (-B + r) / (2 * A)]]}
        if disc < 0:
            return {"kind": "whole_line", "intervals": [[None, None]]}
        r = np.sqrt(disc)
        lo, hi = sorted(((-B - r) / (2 * A), (-B + r) / (2 * A)))
        return {"kind": "union_of_rays", "intervals": [[None, lo], [hi, None]]}
    grid = center + scale * np.linspace(-50, 50, grid_points)
    acc = np.empty(len(grid), dtype=bool)
    for i, x in enumerate(grid):
        g = a - x * b
        Vx = Vyy - x * (Vyd + Vyd.T) + x * x * Vdd
        acc[i] = _wald(g, Vx) <= crit
    intervals, start = [], None
    for i, ok in enumerate(acc):
        if ok and start is None:
            start = i
        if (not ok or i == len(acc) - 1) and start is not None:
            end = i if ok else i - 1
            intervals.append([None if start == 0 else float(grid[start]),
                              None if end == len(acc) - 1 else float(grid[end])])
            start = None
    kind = "empty" if not intervals else (
        "bounded" if all(lo is not None and hi is not None for lo, hi in intervals) else "unbounded")
    return {"kind": kind, "intervals": intervals, "grid": True}


