"""Reason codes, result containers and design matrices shared by the causal estimators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from experimenttracker_pipeline.model.numbers import finite_float

# ----------------------------------------------------------------------------------------
# Reason codes (strings so that they travel through JSON / the database unchanged)
# ----------------------------------------------------------------------------------------
POOR_OVERLAP = "CAUSAL_POOR_OVERLAP"
WEIGHTS_CLIPPED = "CAUSAL_WEIGHTS_CLIPPED"
PROPENSITY_ESTIMATED = "CAUSAL_PROPENSITY_ESTIMATED"  # logged propensity absent/incomplete
PROPENSITY_INVALID = "CAUSAL_PROPENSITY_INVALID"  # logged values outside (0, 1]
SINGLE_ARM = "CAUSAL_SINGLE_ARM"  # no treated or no control fills: nothing to compare
SMALL_SAMPLE = "CAUSAL_SMALL_SAMPLE"  # an arm below MIN_ARM_N: CIs are rough
HARMED_SEGMENT = "CAUSAL_HARMED_SEGMENT"
SEGMENT_NOT_TESTED = "CAUSAL_SEGMENT_NOT_TESTED"
SEGMENT_POOR_OVERLAP = "CAUSAL_SEGMENT_POOR_OVERLAP"
WEAK_INSTRUMENT = "CAUSAL_WEAK_INSTRUMENT"
OPE_POOR_OVERLAP = "CAUSAL_OPE_POOR_OVERLAP"
OPE_INVALID_PROPENSITY = "CAUSAL_OPE_INVALID_PROPENSITY"
OPE_LOW_ESS = "CAUSAL_OPE_LOW_ESS"  # Kish ESS of the importance weights below the minimum number of logs
OPE_TINY_PROPENSITY = "CAUSAL_OPE_TINY_PROPENSITY"  # candidate takes logged actions the logger almost never took
OPE_WEIGHT_CONCENTRATED = "CAUSAL_OPE_WEIGHT_CONCENTRATED"  # one log carries a large share of the total weight
NO_PAIRED_DELTAS = "CAUSAL_NO_PAIRED_DELTAS"

SE_METHODS = ("auto", "if", "sandwich", "bootstrap")
MIN_ARM_N = 20

# ----------------------------------------------------------------------------------------
# Small result containers
# ----------------------------------------------------------------------------------------
@dataclass
class Estimate:
    """A point estimate with its SE and a 95% CI (bps)."""

    estimate_bps: float | None
    se: float | None = None
    ci_95_low: float | None = None
    ci_95_high: float | None = None
    n: int | None = None

    @classmethod
    def normal(cls, est: float, se: float, n: int | None = None, level: float = 0.95) -> "Estimate":
        z = stats.norm.ppf(0.5 + level / 2)
        if not (np.isfinite(est) and np.isfinite(se)):
            return cls(finite_float(est), finite_float(se), None, None, n)
        return cls(float(est), float(se), float(est - z * se), float(est + z * se), n)

    def covers(self, value: float) -> bool:
        return (
            self.ci_95_low is not None
            and self.ci_95_high is not None
            and self.ci_95_low <= value <= self.ci_95_high
        )

    def to_dict(self) -> dict:
        return {
            "estimate_bps": finite_float(self.estimate_bps),
            "ci_95_low": finite_float(self.ci_95_low),
            "ci_95_high": finite_float(self.ci_95_high),
            "se": finite_float(self.se),
        }


# ----------------------------------------------------------------------------------------
# Design matrices
# ----------------------------------------------------------------------------------------
def split_covariates(df: pd.DataFrame, covariates: Sequence[str]) -> tuple[list[str], list[str]]:
    """(categorical, numeric) covariate names: bool / non-numeric dtypes are categorical."""
    cat, num = [], []
    for c in covariates:
        s = df[c]
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            cat.append(c)
        else:
            num.append(c)
    return cat, num


def _cat_values(s: pd.Series) -> np.ndarray:
    # Strings, with missing values as an explicit level (never silently dropped).
    return s.astype(object).where(s.notna(), "<missing>").astype(str).to_numpy()


def design_matrix(df: pd.DataFrame, covariates: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Numeric design (no intercept): standardised numerics, one-hot categoricals (first level dropped).

    Missing numerics are mean-imputed with a missing indicator; missing categoricals form a
    ``<missing>`` level.  Constant columns are dropped.  Deterministic for a given frame, so
    tests can hand exactly this matrix to statsmodels.
    """
    cat, num = split_covariates(df, covariates)
    cols: list[np.ndarray] = []
    names: list[str] = []
    for c in num:
        x = df[c].to_numpy(dtype=float, na_value=np.nan)
        miss = ~np.isfinite(x)
        if miss.all():
            continue
        if miss.any():
            x = np.where(miss, np.nanmean(np.where(miss, np.nan, x)), x)
            cols.append(miss.astype(float))
            names.append(f"{c}__missing")
        sd = x.std()
        if sd > 0:
            cols.append((x - x.mean()) / sd)
            names.append(c)
    for c in cat:
        v = _cat_values(df[c])
        levels = sorted(set(v.tolist()))
        for lev in levels[1:]:
            cols.append((v == lev).astype(float))
            names.append(f"{c}={lev}")
    if not cols:
        return np.zeros((len(df), 0)), []
    return np.column_stack(cols), names


