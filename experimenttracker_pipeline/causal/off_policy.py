"""Off-policy evaluation from logs: IPS, SNIPS and doubly robust values with CIs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from experimenttracker_pipeline.model.numbers import to_json

from .common import OPE_INVALID_PROPENSITY, OPE_POOR_OVERLAP, Estimate
from .nuisance import _fit_predict
from .weighting import _se_from_if, kish_ess


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
        return to_json({
            "ips": self.ips, "snips": self.snips, "dr": self.dr,
            "dm_value_bps": self.dm_value,
            "dm_note": "direct method point estimate only: a DM CI ignores reward-model error",
            "n": self.n, "weight_ess_share": self.ess_share, "max_weight": self.max_weight,
            "warnings": self.warnings,
        }, sig=None)


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


