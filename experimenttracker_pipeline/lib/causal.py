"""Causal layer for experiment evaluation: IPW / AIPW effects, harmed segments, 2SLS and OPE.

Plain numpy / scipy / scikit-learn; no Dagster, no database.  The Dagster asset builds a
fills frame per experiment and calls :func:`analyse_experiment`; ``CausalResult.to_dict()``
is the ``causal`` object of ``experimenttracker status --json``.

Column conventions of the fills frame (one row per fill of one experiment):

* ``treatment``   1 = routed to the variant, 0 = control
* ``outcome_bps`` edge in bps of notional
* ``propensity``  logged ``assignment_propensity`` = P(treatment=1 | context); may be
  missing/NaN, in which case it is estimated from the covariates
* covariates      named by the caller; non-numeric (str / category / bool) columns are
  categorical (one-hot encoded, and the segments of the harm test), numbers are numeric.

Method choices (validated by ``benchmarks/causal_coverage.py``; figures in the README):

* IPW is the Hajek (normalised) estimator -- the one statsmodels' ``TreatmentEffect.ipw``
  computes.  Horvitz-Thompson is reported alongside for reference only (it is not
  location-invariant and has a much larger variance).
* AIPW is the (unnormalised) doubly robust score with cross-fitted outcome models
  (histogram gradient boosting by default) and the single propensity used by IPW.
* SEs are influence-function (sandwich) SEs; see :data:`SE_METHODS` and
  ``_choose_ipw_se``.  A seeded bootstrap that refits the propensity is available on request.
* Propensities are clipped to ``clip`` (reported); a trimmed-population estimate (units
  with propensity inside ``trim``) is always reported too, and poor overlap produces the
  ``CAUSAL_POOR_OVERLAP`` reason code and ``estimate_reliable = False``.
"""

from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

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
NO_PAIRED_DELTAS = "CAUSAL_NO_PAIRED_DELTAS"

SE_METHODS = ("auto", "if", "sandwich", "bootstrap")
MIN_ARM_N = 20

# ----------------------------------------------------------------------------------------
# Small result containers
# ----------------------------------------------------------------------------------------
def _f(x: Any) -> float | None:
    """JSON-safe float: None for None/NaN/inf."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _f(obj)
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj


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
            return cls(_f(est), _f(se), None, None, n)
        return cls(float(est), float(se), float(est - z * se), float(est + z * se), n)

    def covers(self, value: float) -> bool:
        return (
            self.ci_95_low is not None
            and self.ci_95_high is not None
            and self.ci_95_low <= value <= self.ci_95_high
        )

    def to_dict(self) -> dict:
        return {
            "estimate_bps": _f(self.estimate_bps),
            "ci_95_low": _f(self.ci_95_low),
            "ci_95_high": _f(self.ci_95_high),
            "se": _f(self.se),
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


# ----------------------------------------------------------------------------------------
# Nuisance models
# ----------------------------------------------------------------------------------------
def fit_propensity(X: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Logistic-regression propensity P(t=1|X) (effectively unpenalised, C=1e6).

    A near-MLE fit so that it coincides with statsmodels' ``Logit`` on the same design.
    """
    if X.shape[1] == 0:
        return np.full(len(t), t.mean())
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6, solver="lbfgs", max_iter=2000, tol=1e-10)
    with _warnings.catch_warnings():
        # Near-separation makes lbfgs stop early; the overlap diagnostics then flag it.
        _warnings.simplefilter("ignore", ConvergenceWarning)
        with threadpool_limits(limits=1):
            model.fit(X, t)
    return model.predict_proba(X)[:, 1]


def _make_regressor(kind: str, seed: int, n_jobs: int = 1):
    if kind == "linear":
        from sklearn.linear_model import LinearRegression

        return LinearRegression()
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingRegressor

        # Shallow, regularised boosting: flexible enough for the non-linear edge
        # surfaces we simulate, stable at a few hundred rows per arm and fold.
        return HistGradientBoostingRegressor(
            max_iter=100,
            learning_rate=0.1,
            max_leaf_nodes=15,
            min_samples_leaf=20,
            l2_regularization=1.0,
            random_state=seed,
        )
    if kind == "rf":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(
            n_estimators=100, min_samples_leaf=10, max_features=0.6, random_state=seed, n_jobs=n_jobs
        )
    raise ValueError(f"unknown outcome model {kind!r} (linear|hgb|rf)")


def _fit_predict(kind: str, X: np.ndarray, y: np.ndarray, Xnew: np.ndarray, seed: int) -> np.ndarray:
    if len(y) < 5 or X.shape[1] == 0:
        return np.full(len(Xnew), y.mean() if len(y) else 0.0)
    model = _make_regressor(kind, seed)
    model.fit(X, y)
    return model.predict(Xnew)


def crossfit_outcomes(
    X: np.ndarray,
    t: np.ndarray,
    y: np.ndarray,
    *,
    kind: str = "hgb",
    n_folds: int = 5,
    seed: int = 0,
    n_jobs: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions (mu0, mu1) of E[y | X, t=0/1] from per-arm models.

    ``n_folds=1`` fits in-sample (no cross-fitting): with ``kind="linear"`` this is exactly
    statsmodels' AIPW outcome model, used for the cross-check.  Folds are stratified by arm.
    ``n_jobs`` caps the OpenMP/BLAS threads: on a shared 2-core host, unbounded OpenMP in
    histogram boosting was measured 15x slower (oversubscription) than a single thread.
    """
    with threadpool_limits(limits=n_jobs):
        return _crossfit_outcomes(X, t, y, kind, n_folds, seed)


def _crossfit_outcomes(X, t, y, kind, n_folds, seed):
    n = len(y)
    mu0 = np.empty(n)
    mu1 = np.empty(n)
    if n_folds <= 1:
        for arm, out in ((0, mu0), (1, mu1)):
            m = t == arm
            out[:] = _fit_predict(kind, X[m], y[m], X, seed)
        return mu0, mu1
    from sklearn.model_selection import StratifiedKFold

    k = int(min(n_folds, max(2, min((t == 1).sum(), (t == 0).sum()))))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (tr, te) in enumerate(skf.split(X, t)):
        for arm, out in ((0, mu0), (1, mu1)):
            m = tr[t[tr] == arm]
            out[te] = _fit_predict(kind, X[m], y[m], X[te], seed + fold)
    return mu0, mu1


# ----------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------
def _hajek_parts(t, y, e):
    w1 = t / e
    w0 = (1 - t) / (1 - e)
    s1, s0 = w1.mean(), w0.mean()
    m1 = (w1 * y).mean() / s1
    m0 = (w0 * y).mean() / s0
    return w1, w0, s1, s0, m1, m0


def hajek_ipw(t: np.ndarray, y: np.ndarray, e: np.ndarray) -> tuple[float, np.ndarray]:
    """Hajek IPW ATE and its known-propensity influence function (mean zero)."""
    w1, w0, s1, s0, m1, m0 = _hajek_parts(t, y, e)
    psi = w1 * (y - m1) / s1 - w0 * (y - m0) / s0
    return m1 - m0, psi


def _hajek_sandwich_if(t, y, e_raw, e, Xd, clipped) -> np.ndarray:
    """Hajek IF corrected for a logistic propensity fitted on ``Xd`` (with intercept).

    Stacked M-estimation: the propensity score equations X'(t - e) = 0 enter through
    G' M^-1 X_i (t_i - e_i); clipped units contribute no derivative (their e is constant).
    Asymptotically equal to statsmodels' GMM SE for ``TreatmentEffect.ipw``.
    """
    w1, w0, s1, s0, m1, m0 = _hajek_parts(t, y, e)
    free = ~clipped
    M = (Xd * (e_raw * (1 - e_raw))[:, None]).T @ Xd / len(t)
    g1 = (Xd * (-(t * (1 - e) / e) * (y - m1) * free)[:, None]).mean(axis=0)
    g0 = (Xd * (((1 - t) * e / (1 - e)) * (y - m0) * free)[:, None]).mean(axis=0)
    try:
        Minv = np.linalg.pinv(M)
    except np.linalg.LinAlgError:  # pragma: no cover - pinv does not raise in practice
        return w1 * (y - m1) / s1 - w0 * (y - m0) / s0
    score = Xd * (t - e_raw)[:, None]
    psi1 = (w1 * (y - m1) + score @ (Minv @ g1)) / s1
    psi0 = (w0 * (y - m0) + score @ (Minv @ g0)) / s0
    return psi1 - psi0


def _se_from_if(psi: np.ndarray) -> float:
    n = len(psi)
    if n < 2:
        return float("nan")
    return float(np.sqrt(np.sum((psi - psi.mean()) ** 2) / (n * (n - 1))))


def aipw_scores(t, y, e, mu0, mu1) -> np.ndarray:
    """Per-unit doubly robust scores; their mean is the AIPW ATE, their SD/sqrt(n) its SE."""
    return mu1 - mu0 + t * (y - mu1) / e - (1 - t) * (y - mu0) / (1 - e)


def kish_ess(w: np.ndarray) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2."""
    s2 = float(np.sum(w**2))
    return float(np.sum(w) ** 2 / s2) if s2 > 0 else 0.0


# ----------------------------------------------------------------------------------------
# ATE
# ----------------------------------------------------------------------------------------
@dataclass
class AteResult:
    """Output of :func:`estimate_ate` (arrays are kept for segments/CATE, not serialised)."""

    n: int
    n_treated: int
    n_control: int
    naive: Estimate
    ipw: Estimate
    ipw_ht: Estimate
    aipw: Estimate
    ipw_trimmed: Estimate | None
    aipw_trimmed: Estimate | None
    overlap: dict
    propensity_source: str
    propensity_constant: bool
    se_method: dict
    warnings: list[str]
    seed: int
    propensity: np.ndarray | None = field(default=None, repr=False)  # clipped, as used
    propensity_raw: np.ndarray | None = field(default=None, repr=False)
    scores: np.ndarray | None = field(default=None, repr=False)  # AIPW scores
    mu0: np.ndarray | None = field(default=None, repr=False)
    mu1: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return _jsonable(
            {
                "n": self.n,
                "n_treated": self.n_treated,
                "n_control": self.n_control,
                "naive_diff_bps": self.naive.estimate_bps,
                "naive": self.naive,
                "ipw": self.ipw,
                "ipw_ht": self.ipw_ht,
                "aipw": self.aipw,
                "ipw_trimmed": self.ipw_trimmed,
                "aipw_trimmed": self.aipw_trimmed,
                "overlap": self.overlap,
                "propensity_source": self.propensity_source,
                "propensity_constant": self.propensity_constant,
                "se_method": self.se_method,
                "warnings": self.warnings,
                "seed": self.seed,
            }
        )


def _resolve_propensity(df, X, t, propensity_col) -> tuple[np.ndarray, str, list[str]]:
    warns: list[str] = []
    if propensity_col in df.columns:
        p = pd.to_numeric(df[propensity_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if np.isfinite(p).all() and np.all((p >= 0) & (p <= 1)):
            # Logged design probabilities.  0 or 1 (deterministic routing) are kept and
            # handled by clipping + the overlap gate, not replaced by a model.
            return p, "logged", warns
        # Partly missing or out-of-range: a mix of logged and modelled propensities would
        # be incoherent, so the whole vector is estimated (and the reason recorded).
        warns.append(PROPENSITY_INVALID if np.isfinite(p).all() else PROPENSITY_ESTIMATED)
    elif X.shape[1] > 0:
        warns.append(PROPENSITY_ESTIMATED)
    if X.shape[1] == 0:
        return np.full(len(t), t.mean()), "constant_share", warns
    return fit_propensity(X, t), "estimated_logistic", warns


def _choose_ipw_se(se_method: str, source: str) -> str:
    """The IPW SE rule behind ``se_method="auto"``, from benchmarks/causal_coverage.py.

    Logged propensities are design probabilities, so the known-propensity IF is the exact
    sandwich.  For an estimated (logistic) propensity the stacked sandwich that includes
    the propensity fit covered 0.945 / 0.943-0.950 / 0.960 at n = 500 / 2,000 / 10,000
    (200-400 sims each), while the known-propensity IF over-covered (0.98-0.995, SE/SD
    1.15-1.25) and so wastes power.  causal_notes.md measured the same sandwich (statsmodels'
    GMM SE) at 0.89-0.91 for n=2,000 on a nominally identical DGP; we could not reproduce
    that (our estimator SD is ~15% smaller than theirs for equal mean SEs), so the benchmark
    keeps printing both SEs and must be re-run if covariates or DGP change.
    """
    if se_method != "auto":
        return se_method
    return "sandwich" if source == "estimated_logistic" else "if"


def _bootstrap_ipw_se(t, y, X, e_fixed, clip, refit, B, seed) -> float:
    rng = np.random.default_rng(seed)
    n = len(t)
    est = []
    for _ in range(B):
        idx = rng.integers(0, n, n)
        tb, yb = t[idx], y[idx]
        if tb.min() == tb.max():
            continue
        eb = fit_propensity(X[idx], tb) if refit else e_fixed[idx]
        eb = np.clip(eb, *clip)
        est.append(hajek_ipw(tb, yb, eb)[0])
    return float(np.std(est, ddof=1)) if len(est) > 1 else float("nan")


def overlap_report(
    t: np.ndarray,
    e_raw: np.ndarray,
    *,
    clip: tuple[float, float],
    trim: tuple[float, float],
    X: np.ndarray | None = None,
    max_share_outside_trim: float = 0.10,
    min_ess_share: float = 0.30,
) -> dict:
    """Propensity range/quantiles, Kish ESS per arm, clipped and trimmed shares, SMD balance.

    ``poor_overlap`` is True when the share of units outside ``trim`` exceeds
    ``max_share_outside_trim`` or either arm's ESS/n is below ``min_ess_share``
    (thresholds from causal_notes.md section 3.3, item 3).
    """
    e = np.clip(e_raw, *clip)
    clipped = (e_raw < clip[0]) | (e_raw > clip[1])
    outside = (e_raw < trim[0]) | (e_raw > trim[1])
    w = np.where(t == 1, 1 / e, 1 / (1 - e))
    ess1 = kish_ess(w[t == 1])
    ess0 = kish_ess(w[t == 0])
    n1, n0 = int((t == 1).sum()), int((t == 0).sum())
    q = np.quantile(e_raw, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    rep: dict[str, Any] = {
        "propensity_min": float(e_raw.min()),
        "propensity_max": float(e_raw.max()),
        "propensity_quantiles": dict(zip(["p01", "p05", "p25", "p50", "p75", "p95", "p99"], map(float, q))),
        "propensity_min_treated": float(e_raw[t == 1].min()) if n1 else None,
        "propensity_max_control": float(e_raw[t == 0].max()) if n0 else None,
        "clip_bounds": [float(clip[0]), float(clip[1])],
        "n_clipped": int(clipped.sum()),
        "share_clipped": float(clipped.mean()),
        "trim_bounds": [float(trim[0]), float(trim[1])],
        "n_outside_trim": int(outside.sum()),
        "share_outside_trim": float(outside.mean()),
        "ess_treated": ess1,
        "ess_control": ess0,
        "ess_share_treated": ess1 / n1 if n1 else 0.0,
        "ess_share_control": ess0 / n0 if n0 else 0.0,
        "max_weight_share": float(max(w[t == 1].max() / w[t == 1].sum() if n1 else 0.0,
                                      w[t == 0].max() / w[t == 0].sum() if n0 else 0.0)),
        "thresholds": {"max_share_outside_trim": max_share_outside_trim, "min_ess_share": min_ess_share},
    }
    if X is not None and X.shape[1] > 0 and n1 > 1 and n0 > 1:
        rep["max_abs_smd_raw"], rep["max_abs_smd_weighted"] = _smd(X, t, w)
    rep["poor_overlap"] = bool(
        rep["share_outside_trim"] > max_share_outside_trim
        or rep["ess_share_treated"] < min_ess_share
        or rep["ess_share_control"] < min_ess_share
    )
    return rep


def _smd(X, t, w) -> tuple[float, float]:
    def wmv(x, ww):
        m = np.average(x, axis=0, weights=ww)
        v = np.average((x - m) ** 2, axis=0, weights=ww)
        return m, v

    m1, v1 = wmv(X[t == 1], np.ones((t == 1).sum()))
    m0, v0 = wmv(X[t == 0], np.ones((t == 0).sum()))
    pooled = np.sqrt((v1 + v0) / 2)
    ok = pooled > 0
    raw = np.abs(m1 - m0)[ok] / pooled[ok]
    wm1, _ = wmv(X[t == 1], w[t == 1])
    wm0, _ = wmv(X[t == 0], w[t == 0])
    wtd = np.abs(wm1 - wm0)[ok] / pooled[ok]
    return (float(raw.max()) if raw.size else 0.0, float(wtd.max()) if wtd.size else 0.0)


def estimate_ate(
    df: pd.DataFrame,
    covariates: Sequence[str],
    *,
    treatment: str = "treatment",
    outcome: str = "outcome_bps",
    propensity: str = "propensity",
    clip: tuple[float, float] = (0.01, 0.99),
    trim: tuple[float, float] = (0.05, 0.95),
    n_folds: int = 5,
    outcome_model: str = "hgb",
    seed: int = 0,
    se_method: str = "auto",
    n_bootstrap: int = 200,
    max_share_outside_trim: float = 0.10,
    min_ess_share: float = 0.30,
    n_jobs: int = 1,
) -> AteResult:
    """Naive difference, Hajek IPW (+HT) and cross-fitted AIPW ATEs with SEs, CI95 and overlap.

    Propensity: the logged ``propensity`` column when finite for every row (values 0/1 are
    clipped), else a logistic regression on the covariates (``propensity_source`` records
    which).  Weights use the propensity clipped to ``clip``; ``ipw_trimmed`` /
    ``aipw_trimmed`` re-estimate on units with propensity in ``trim`` (a different,
    overlap population).  ``se_method``: ``auto`` (validated rule, see module doc),
    ``if`` (known-propensity influence function), ``sandwich`` (IF corrected for the
    propensity fit) or ``bootstrap`` (seeded, refits the propensity) -- for IPW; the AIPW SE
    is always the IF-SE of the cross-fitted scores.
    """
    if se_method not in SE_METHODS:
        raise ValueError(f"se_method must be one of {SE_METHODS}")
    if not (0 < clip[0] < clip[1] < 1):
        raise ValueError("clip must satisfy 0 < low < high < 1")
    data = df.reset_index(drop=True)
    t = pd.to_numeric(data[treatment]).to_numpy(dtype=float)
    y = pd.to_numeric(data[outcome]).to_numpy(dtype=float)
    if not (np.isin(t, (0.0, 1.0)).all() and np.isfinite(y).all()):
        raise ValueError("treatment must be 0/1 and outcome finite for every row")
    n, n1 = len(t), int(t.sum())
    n0 = n - n1
    warns: list[str] = []
    nan_est = Estimate(None)
    if n1 == 0 or n0 == 0:
        return AteResult(n, n1, n0, nan_est, nan_est, nan_est, nan_est, None, None, {},
                         "none", True, {}, [SINGLE_ARM], seed)
    if min(n1, n0) < MIN_ARM_N:
        warns.append(SMALL_SAMPLE)

    # Naive difference of means with the Welch SE.
    y1, y0 = y[t == 1], y[t == 0]
    naive_se = math.sqrt(y1.var(ddof=1) / n1 + y0.var(ddof=1) / n0) if min(n1, n0) > 1 else float("nan")
    naive = Estimate.normal(y1.mean() - y0.mean(), naive_se, n)

    X, _names = design_matrix(data, list(covariates))
    e_raw, source, pwarn = _resolve_propensity(data, X, t, propensity)
    warns += pwarn
    e_const = bool(np.ptp(e_raw) < 1e-12)
    clipped = (e_raw < clip[0]) | (e_raw > clip[1])
    e = np.clip(e_raw, *clip)
    if clipped.any():
        warns.append(WEIGHTS_CLIPPED)

    overlap = overlap_report(t, e_raw, clip=clip, trim=trim, X=X,
                             max_share_outside_trim=max_share_outside_trim, min_ess_share=min_ess_share)
    if overlap["poor_overlap"]:
        warns.append(POOR_OVERLAP)

    # --- IPW (Hajek) and Horvitz-Thompson.
    ipw_est, psi_if = hajek_ipw(t, y, e)
    chosen = _choose_ipw_se(se_method, source)
    if chosen == "sandwich" and source == "estimated_logistic":
        Xd = np.column_stack([np.ones(n), X])
        ipw_se = _se_from_if(_hajek_sandwich_if(t, y, e_raw, e, Xd, clipped))
    elif chosen in ("if", "sandwich"):
        ipw_se = _se_from_if(psi_if)  # nothing estimated: the sandwich is the known-e IF
    else:  # bootstrap
        ipw_se = _bootstrap_ipw_se(t, y, X, e_raw, clip, source == "estimated_logistic", n_bootstrap, seed)
    ipw = Estimate.normal(ipw_est, ipw_se, n)
    ht_psi = t * y / e - (1 - t) * y / (1 - e)
    ipw_ht = Estimate.normal(ht_psi.mean(), _se_from_if(ht_psi), n)

    # --- AIPW with cross-fitted outcome models.
    mu0, mu1 = crossfit_outcomes(X, t, y, kind=outcome_model, n_folds=n_folds, seed=seed, n_jobs=n_jobs)
    phi = aipw_scores(t, y, e, mu0, mu1)
    aipw = Estimate.normal(phi.mean(), _se_from_if(phi), n)

    # --- Trimmed population (explicit, reported; the estimand changes).
    keep = ~((e_raw < trim[0]) | (e_raw > trim[1]))
    ipw_tr = aipw_tr = None
    tk = t[keep]
    if keep.sum() >= 2 * MIN_ARM_N and 0 < tk.sum() < keep.sum():
        est_tr, psi_tr = hajek_ipw(tk, y[keep], e[keep])
        ipw_tr = Estimate.normal(est_tr, _se_from_if(psi_tr), int(keep.sum()))
        aipw_tr = Estimate.normal(phi[keep].mean(), _se_from_if(phi[keep]), int(keep.sum()))

    se_doc = {
        "naive": "Welch (unequal variances), normal CI",
        "ipw": {
            "if": "influence function of Hajek IPW treating the propensity as known",
            "sandwich": "stacked M-estimation sandwich including the logistic propensity fit",
            "bootstrap": f"nonparametric bootstrap, B={n_bootstrap}, seed={seed}, propensity refit per replicate",
        }[chosen],
        "ipw_rule": chosen,
        "aipw": f"influence function of {n_folds}-fold cross-fitted AIPW scores ({outcome_model} outcome models)",
    }
    return AteResult(
        n=n, n_treated=n1, n_control=n0, naive=naive, ipw=ipw, ipw_ht=ipw_ht, aipw=aipw,
        ipw_trimmed=ipw_tr, aipw_trimmed=aipw_tr, overlap=overlap, propensity_source=source,
        propensity_constant=e_const, se_method=se_doc, warnings=warns, seed=seed,
        propensity=e, propensity_raw=e_raw, scores=phi, mu0=mu0, mu1=mu1,
    )


# ----------------------------------------------------------------------------------------
# Segments (harm test) and CATE
# ----------------------------------------------------------------------------------------
def segment_effects(
    values: np.ndarray,
    frame: pd.DataFrame,
    categorical: Sequence[str],
    *,
    harm_margin_bps: float = 0.0,
    alpha: float = 0.05,
    correction: str = "holm",
    min_n: int = 30,
    min_arm_n: int = 5,
    t: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    min_ess_share: float = 0.30,
) -> tuple[list[dict], list[str], list[str]]:
    """Per-segment mean of ``values`` (AIPW scores, or paired deltas) with multiplicity-corrected t CIs.

    One entry per value of each categorical covariate.  The family is every tested segment
    of every covariate.  ``harmed`` <=> corrected ``ci_95_high < -harm_margin_bps``, i.e. the
    one-sided test of "effect >= -margin" rejected at family-wise level alpha/2 by
    ``correction`` (``holm`` step-down or ``bonferroni``).  With Holm each segment's CI is
    drawn at the level of the step at which it was decided (segments after the first
    non-rejection share that step's level), so flag and CI always agree; with Bonferroni
    all CIs are simultaneous at 1 - alpha/m.  Segments with fewer than ``min_n`` units (or,
    when ``t`` is given, fewer than ``min_arm_n`` per arm) are listed with
    ``tested=False`` and never flagged.  Returns (segments, harmed labels, warnings).
    """
    if correction not in ("holm", "bonferroni"):
        raise ValueError("correction must be 'holm' or 'bonferroni'")
    values = np.asarray(values, dtype=float)
    segs: list[dict] = []
    warns: list[str] = []
    for c in categorical:
        v = _cat_values(frame[c])
        for lev in sorted(set(v.tolist())):
            m = v == lev
            ns = int(m.sum())
            entry: dict[str, Any] = {"covariate": c, "value": lev, "n": ns}
            if t is not None:
                entry["n_treated"] = int(t[m].sum())
                entry["n_control"] = ns - entry["n_treated"]
            small = ns < min_n or (t is not None and min(entry["n_treated"], entry["n_control"]) < min_arm_n)
            x = values[m]
            entry["estimate_bps"] = float(x.mean()) if ns else None
            if small:
                entry.update(tested=False, status="not_tested_too_small", se=None, ci_95_low=None,
                             ci_95_high=None, ci_level=None, p_value=None, p_value_harm_adj=None,
                             harmed=False)
            else:
                se = float(x.std(ddof=1) / math.sqrt(ns))
                entry.update(tested=True, status="tested", se=se)
                if t is not None and weights is not None:
                    tm = t[m]
                    ess1 = kish_ess(weights[m][tm == 1]) / max(1, int(tm.sum()))
                    ess0 = kish_ess(weights[m][tm == 0]) / max(1, int((1 - tm).sum()))
                    entry["ess_share_min"] = float(min(ess1, ess0))
                    if min(ess1, ess0) < min_ess_share:
                        # Power is low here: "not harmed" must not be read as "safe".
                        entry["status"] = "tested_poor_overlap"
                        if SEGMENT_POOR_OVERLAP not in warns:
                            warns.append(SEGMENT_POOR_OVERLAP)
            segs.append(entry)
    tested = [s for s in segs if s["tested"]]
    if len(tested) < len(segs):
        warns.append(SEGMENT_NOT_TESTED)
    m_fam = len(tested)
    if m_fam:
        est = np.array([s["estimate_bps"] for s in tested])
        se = np.array([s["se"] for s in tested])
        dfree = np.array([s["n"] - 1 for s in tested], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = np.where(se > 0, est / se, np.sign(est) * np.inf)
            zh = np.where(se > 0, (est + harm_margin_bps) / se, np.sign(est + harm_margin_bps) * np.inf)
        p_two = 2 * stats.t.sf(np.abs(z0), dfree)
        # One-sided harm p-value on the two-sided scale so that harmed <=> adjusted p < alpha.
        p_harm = np.minimum(1.0, 2 * stats.t.cdf(zh, dfree))
        order = np.argsort(p_harm, kind="stable")
        level_div = np.empty(m_fam)
        p_adj = np.empty(m_fam)
        if correction == "bonferroni":
            level_div[:] = m_fam
            p_adj[:] = np.minimum(1.0, p_harm * m_fam)
        else:
            running, stopped_div = 0.0, None
            for k, j in enumerate(order):
                div = m_fam - k
                running = max(running, min(1.0, p_harm[j] * div))
                p_adj[j] = running
                if stopped_div is None and not (p_harm[j] * div < alpha):
                    stopped_div = div
                level_div[j] = div if stopped_div is None else stopped_div
        for j, s in enumerate(tested):
            q = stats.t.ppf(1 - alpha / (2 * level_div[j]), dfree[j])
            lo, hi = est[j] - q * se[j], est[j] + q * se[j]
            s.update(ci_95_low=float(lo), ci_95_high=float(hi), ci_level=float(1 - alpha / level_div[j]),
                     p_value=float(p_two[j]), p_value_harm_adj=float(p_adj[j]),
                     harmed=bool(hi < -harm_margin_bps))
    harmed = [f"{s['covariate']}={s['value']}" for s in segs if s["harmed"]]
    if harmed:
        warns.append(HARMED_SEGMENT)
    return segs, harmed, warns


def _summary(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.05, 0.5, 0.95])
    return {"mean_bps": float(x.mean()), "sd_bps": float(x.std()), "p05_bps": float(q[0]),
            "p50_bps": float(q[1]), "p95_bps": float(q[2]), "share_negative": float((x < 0).mean())}


def cate_models(
    X: np.ndarray,
    t: np.ndarray,
    y: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    seed: int = 0,
    n_estimators: int = 100,
    max_samples: int = 20000,
    n_jobs: int = 1,
) -> dict[str, np.ndarray]:
    """Unit-level CATE predictions: T-learner (two random forests) and, given AIPW
    ``scores``, a DR-learner (random forest on the doubly robust pseudo-outcomes).

    Descriptive only: neither has a valid CI, so harm is never flagged from these.
    ``max_samples`` caps the rows per tree so the cost is bounded at 100k fills.
    """
    from sklearn.ensemble import RandomForestRegressor

    def rf(leaf: int, rows: int):
        return RandomForestRegressor(
            n_estimators=n_estimators, min_samples_leaf=leaf, max_features=0.6,
            max_samples=min(max_samples, rows) if rows > 1 else None,
            random_state=seed, n_jobs=n_jobs,
        )

    out: dict[str, np.ndarray] = {}
    if X.shape[1] == 0:
        return out
    with threadpool_limits(limits=n_jobs):
        return _cate_fit(X, t, y, scores, rf, max_samples, out)


def _cate_fit(X, t, y, scores, rf, max_samples, out):
    # Leaf sizes tuned on the benchmark DGP at n=5,000 (RMSE vs true tau(x)): T-learner
    # leaf 5 -> 0.81, leaf 20 -> 0.53; DR-learner leaf 25 -> 0.67, leaf ~rows/25 -> 0.31.
    preds = []
    for arm in (0, 1):
        m = t == arm
        model = rf(20, int(m.sum())).fit(X[m], y[m])
        preds.append(model.predict(X))
    out["t_learner_rf"] = preds[1] - preds[0]
    if scores is not None:
        # Pseudo-outcomes are noisy (1/e-weighted residuals): large leaves smooth them.
        rows = min(len(t), max_samples)
        out["dr_learner_rf"] = rf(max(20, rows // 25), len(t)).fit(X, scores).predict(X)
    return out


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
        return _jsonable(d)


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


# ----------------------------------------------------------------------------------------
# Off-policy evaluation
# ----------------------------------------------------------------------------------------
@dataclass
class OffPolicyResult:
    """IPS, self-normalised IPS and DR value of a candidate policy (+ DM point, no CI)."""

    ips: Estimate
    snips: Estimate
    dr: Estimate | None
    dm_value: float | None
    n: int
    ess_share: float
    max_weight: float
    warnings: list[str]

    def to_dict(self) -> dict:
        return _jsonable({
            "ips": self.ips, "snips": self.snips, "dr": self.dr,
            "dm_value_bps": self.dm_value,
            "dm_note": "direct method point estimate only: a DM CI ignores reward-model error",
            "n": self.n, "weight_ess_share": self.ess_share, "max_weight": self.max_weight,
            "warnings": self.warnings,
        })


def _col(df, x):
    if isinstance(x, str):
        if df is None:
            raise ValueError(f"column name {x!r} given without a frame")
        return pd.to_numeric(df[x]).to_numpy(dtype=float)
    return None if x is None else np.asarray(x, dtype=float)


def off_policy_value(
    df: pd.DataFrame | None = None,
    *,
    reward: str | np.ndarray = "reward",
    logging_prob: str | np.ndarray = "logging_prob",
    candidate_prob: str | np.ndarray = "candidate_prob",
    q_logged: str | np.ndarray | None = None,
    q_candidate: str | np.ndarray | None = None,
    min_ess_share: float = 0.10,
    alpha: float = 0.05,
) -> OffPolicyResult:
    """Value of a candidate policy from logged decisions (columns of ``df`` or arrays).

    ``logging_prob`` = pi_b(a_i|x_i) and ``candidate_prob`` = pi_e(a_i|x_i) of the logged
    action a_i; ``reward`` its reward (bps).  For DR, ``q_logged`` = q(x_i, a_i) and
    ``q_candidate`` = sum_a pi_e(a|x_i) q(x_i, a) from a cross-fitted reward model (see
    :func:`crossfit_reward_model`).  CIs are normal, from per-round influence functions;
    the DR one therefore includes the reward model's error (residual term).
    """
    r = _col(df, reward)
    pb = _col(df, logging_prob)
    pe = _col(df, candidate_prob)
    n = len(r)
    warns: list[str] = []
    if np.any(~np.isfinite(pb)) or np.any(pb <= 0) or np.any(pb > 1):
        warns.append(OPE_INVALID_PROPENSITY)
        pb = np.clip(np.nan_to_num(pb, nan=1.0), 1e-6, 1.0)
    w = pe / pb
    ips_i = w * r
    ips = Estimate.normal(ips_i.mean(), _se_from_if(ips_i), n, 1 - alpha)
    sw = w.mean()
    v_sn = float((w * r).sum() / w.sum()) if sw > 0 else float("nan")
    snips = Estimate.normal(v_sn, _se_from_if(w * (r - v_sn) / sw) if sw > 0 else float("nan"), n, 1 - alpha)
    dr = None
    dm = None
    qc = _col(df, q_candidate)
    ql = _col(df, q_logged)
    if qc is not None and ql is not None:
        phi = qc + w * (r - ql)
        dr = Estimate.normal(phi.mean(), _se_from_if(phi), n, 1 - alpha)
        dm = float(qc.mean())
    ess = kish_ess(w) / n if n else 0.0
    if ess < min_ess_share:
        warns.append(OPE_POOR_OVERLAP)
    return OffPolicyResult(ips, snips, dr, dm, n, float(ess), float(w.max()) if n else float("nan"), warns)


def crossfit_reward_model(
    X: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    candidate_probs: np.ndarray,
    *,
    kind: str = "linear",
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted reward model for DR OPE: one regressor per action.

    ``candidate_probs`` is n x K (pi_e(a|x_i) for a = 0..K-1).  Returns
    (q_logged = q(x_i, a_i), q_candidate = sum_a pi_e(a|x_i) q(x_i, a)).
    """
    from sklearn.model_selection import KFold

    X = np.asarray(X, dtype=float)
    actions = np.asarray(actions).astype(int)
    rewards = np.asarray(rewards, dtype=float)
    n, K = candidate_probs.shape
    q = np.zeros((n, K))
    with threadpool_limits(limits=1):
        for fold, (tr, te) in enumerate(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(X)):
            for a in range(K):
                m = tr[actions[tr] == a]
                q[te, a] = _fit_predict(kind, X[m], rewards[m], X[te], seed + fold)
    return q[np.arange(n), actions], (candidate_probs * q).sum(axis=1)


# ----------------------------------------------------------------------------------------
# Top level
# ----------------------------------------------------------------------------------------
@dataclass
class CausalResult:
    """Everything the causal asset reports for one experiment; ``to_dict()`` is JSON-safe."""

    mode: str
    n: int
    seed: int
    ate: AteResult | None = None
    paired: Estimate | None = None
    segments: list[dict] = field(default_factory=list)
    harmed_segments: list[str] = field(default_factory=list)
    harm_margin_bps: float = 0.0
    cate: dict | None = None
    iv: IVResult | None = None
    off_policy: OffPolicyResult | None = None
    warnings: list[str] = field(default_factory=list)
    verdict_basis: str | None = None
    estimate_reliable: bool = False
    method: dict = field(default_factory=dict)
    cate_predictions: dict | None = field(default=None, repr=False)

    @property
    def verdict_estimate(self) -> Estimate | None:
        """The estimate named by ``verdict_basis``."""
        if self.verdict_basis == "paired":
            return self.paired
        if self.ate is None or self.verdict_basis is None:
            return None
        return getattr(self.ate, self.verdict_basis)

    def to_dict(self) -> dict:
        a = self.ate
        d: dict[str, Any] = {
            "mode": self.mode,
            "n": self.n,
            "naive_diff_bps": a.naive.estimate_bps if a else None,
            "naive": a.naive if a else None,
            "ipw": a.ipw if a else None,
            "aipw": a.aipw if a else None,
            "ipw_trimmed": a.ipw_trimmed if a else None,
            "aipw_trimmed": a.aipw_trimmed if a else None,
            "paired": self.paired,
            "overlap": a.overlap if a else None,
            "propensity_source": a.propensity_source if a else None,
            "propensity_constant": a.propensity_constant if a else None,
            "segments": self.segments,
            "harmed_segments": self.harmed_segments,
            "harm_margin_bps": self.harm_margin_bps,
            "cate": self.cate,
            "iv": self.iv,
            "off_policy": self.off_policy,
            "warnings": self.warnings,
            "verdict_basis": self.verdict_basis,
            "verdict_estimate": self.verdict_estimate,
            "estimate_reliable": self.estimate_reliable,
            "seed": self.seed,
            "method": self.method,
        }
        return _jsonable(d)


def _dedupe(xs: Iterable[str]) -> list[str]:
    out: list[str] = []
    for x in xs:
        if x not in out:
            out.append(x)
    return out


def analyse_experiment(
    df: pd.DataFrame,
    covariates: Sequence[str],
    *,
    mode: str = "limited_live",
    paired_deltas: np.ndarray | Sequence[float] | None = None,
    harm_margin_bps: float = 0.0,
    seed: int = 0,
    clip: tuple[float, float] = (0.01, 0.99),
    trim: tuple[float, float] = (0.05, 0.95),
    n_folds: int = 5,
    outcome_model: str = "hgb",
    se_method: str = "auto",
    correction: str = "holm",
    alpha: float = 0.05,
    min_segment_n: int = 30,
    min_segment_arm_n: int = 10,
    cate: bool = True,
    cate_n_estimators: int = 100,
    instrument: str | Sequence[str] | None = None,
    off_policy: dict | None = None,
    n_jobs: int = 1,
) -> CausalResult:
    """Causal estimates of one experiment (the body of the ``causal_estimates`` asset).

    ``limited_live``: ``df`` holds fills (treatment, outcome_bps, propensity, covariates);
    computes naive / IPW / AIPW ATEs, overlap, AIPW-score segments (harm test), CATE
    summaries and, if ``instrument`` names a column, 2SLS of outcome on treatment.
    ``shadow_only``: ``paired_deltas`` (variant - baseline, bps; aligned with the rows of
    ``df``, or column ``paired_delta_bps``) gives the paired t estimate, and segments are
    the same harm test on the deltas.  ``off_policy`` (kwargs of :func:`off_policy_value`)
    adds an OPE block in either mode.

    Verdict contract: ``verdict_basis`` names the estimate to judge on ("aipw",
    "aipw_trimmed", "naive" only for a constant/randomised propensity, "paired" for shadow).
    ``estimate_reliable`` False (poor overlap, small arms, single arm) means the verdict
    must not promote on it (inconclusive at best); ``harmed_segments`` non-empty is a harm
    stop rule regardless of the average effect.
    """
    if mode not in ("limited_live", "shadow_only"):
        raise ValueError("mode must be 'limited_live' or 'shadow_only'")
    data = df.reset_index(drop=True)
    cov = list(covariates)
    cat, _num = split_covariates(data, cov) if len(data) else ([], [])
    res = CausalResult(mode=mode, n=len(data), seed=seed, harm_margin_bps=harm_margin_bps)
    warns: list[str] = []
    seg_doc = (f"segment mean of {{values}}; t CIs corrected by {correction} over all tested segments "
               f"(family-wise alpha={alpha}); harmed <=> corrected ci_95_high < -{harm_margin_bps} bps; "
               f"segments with n < {min_segment_n} are reported as not tested")

    if mode == "shadow_only":
        if paired_deltas is None and "paired_delta_bps" in data.columns:
            paired_deltas = data["paired_delta_bps"].to_numpy(dtype=float)
        if paired_deltas is None or len(paired_deltas) == 0:
            warns.append(NO_PAIRED_DELTAS)
        else:
            dlt = np.asarray(paired_deltas, dtype=float)
            nd = len(dlt)
            if nd > 1:
                se = float(dlt.std(ddof=1) / math.sqrt(nd))
                q = stats.t.ppf(1 - alpha / 2, nd - 1)
                res.paired = Estimate(float(dlt.mean()), se, float(dlt.mean() - q * se),
                                      float(dlt.mean() + q * se), nd)
            else:
                res.paired = Estimate(float(dlt.mean()), None, None, None, nd)
            res.verdict_basis = "paired"
            res.estimate_reliable = nd >= MIN_ARM_N
            if nd < MIN_ARM_N:
                warns.append(SMALL_SAMPLE)
            if len(dlt) == len(data) and cat:
                segs, harmed, sw = segment_effects(
                    dlt, data, cat, harm_margin_bps=harm_margin_bps, alpha=alpha, correction=correction,
                    min_n=min_segment_n)
                res.segments, res.harmed_segments = segs, harmed
                warns += sw
        res.method = {
            "paired": "one-sample t on matched-pair deltas (variant - baseline)",
            "segments": seg_doc.format(values="paired deltas"),
        }
    else:
        ate = estimate_ate(data, cov, clip=clip, trim=trim, n_folds=n_folds, outcome_model=outcome_model,
                           seed=seed, se_method=se_method, n_jobs=n_jobs)
        res.ate = ate
        warns += ate.warnings
        if SINGLE_ARM in ate.warnings:
            res.verdict_basis = None
            res.estimate_reliable = False
        else:
            poor = bool(ate.overlap.get("poor_overlap"))
            if ate.propensity_constant:
                # Randomised with a constant probability: the difference of means is
                # unbiased and matches the spine's per-experiment CI.
                res.verdict_basis = "naive"
            elif poor and ate.aipw_trimmed is not None:
                res.verdict_basis = "aipw_trimmed"
            else:
                res.verdict_basis = "aipw"
            res.estimate_reliable = not poor and SMALL_SAMPLE not in ate.warnings
            t = data["treatment"].to_numpy(dtype=float)
            if cat:
                w = np.where(t == 1, 1 / ate.propensity, 1 / (1 - ate.propensity))
                segs, harmed, sw = segment_effects(
                    ate.scores, data, cat, harm_margin_bps=harm_margin_bps, alpha=alpha,
                    correction=correction, min_n=min_segment_n, min_arm_n=min_segment_arm_n,
                    t=t, weights=w)
                res.segments, res.harmed_segments = segs, harmed
                warns += sw
            if cate:
                X, _ = design_matrix(data, cov)
                y = data["outcome_bps"].to_numpy(dtype=float)
                preds = cate_models(X, t, y, ate.scores, seed=seed, n_estimators=cate_n_estimators,
                                    n_jobs=n_jobs)
                res.cate_predictions = preds
                if preds:
                    res.cate = {k: _summary(v) for k, v in preds.items()}
                    res.cate["note"] = "descriptive only (no valid CI); harm is flagged from segments"
                    for s in res.segments:
                        # Descriptive companions of the tested AIPW segment means.
                        m = _cat_values(data[s["covariate"]]) == s["value"]
                        for k, v in preds.items():
                            s[f"{k.split('_rf')[0]}_mean_bps"] = float(v[m].mean())
            if instrument is not None:
                res.iv = iv_2sls(data, "outcome_bps", "treatment", instrument, cov)
                warns += res.iv.warnings
        res.method = {
            "naive": "difference of arm means, Welch SE",
            "ipw": "Hajek (normalised) IPW with propensity clipped to clip_bounds; "
                   "Horvitz-Thompson reported only in estimate_ate",
            "aipw": f"AIPW (doubly robust), {n_folds}-fold cross-fitted {outcome_model} outcome models",
            "se": ate.se_method,
            "trimmed": "ipw_trimmed/aipw_trimmed: units with propensity inside trim_bounds "
                       "(overlap population, a different estimand)",
            "segments": seg_doc.format(values="cross-fitted AIPW scores"),
            "cate": "T-learner (random forests) and DR-learner (random forest on AIPW scores), descriptive",
        }
    if off_policy is not None:
        res.off_policy = off_policy_value(data if len(data) else None, **off_policy)
        warns += res.off_policy.warnings
    res.warnings = _dedupe(warns)
    return res
