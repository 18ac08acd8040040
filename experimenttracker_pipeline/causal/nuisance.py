"""Nuisance models: propensity scores and cross-fitted outcome regressions."""

from __future__ import annotations

import warnings as _warnings

import numpy as np
from threadpoolctl import threadpool_limits


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
    # threadpoolctl limits only the libraries already loaded: import scikit-learn (and with it its OpenMP runtime)
    # first, or the first fit in a process runs unlimited (measured 20x the CPU time on a loaded 2-core host).
    import sklearn  # noqa: F401

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


