"""Off-policy evaluation from logs: IPS, SNIPS and doubly robust values with CIs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from experimenttracker_pipeline.model.numbers import to_json

from .common import (
    OPE_INVALID_PROPENSITY,
    OPE_LOW_ESS,
    OPE_POOR_OVERLAP,
    OPE_TINY_PROPENSITY,
    OPE_WEIGHT_CONCENTRATED,
    Estimate,
)
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




# ----------------------------------------------------------------------------------------
# Sandbox experiments: one candidate policy against the logging policy, from its logs only
# ----------------------------------------------------------------------------------------
# Overlap gates of a sandbox evaluation (defaults; the estimate is "reliable" when none of the weight gates fires).
MIN_OPE_ESS = 100.0  # Kish effective number of logs
TINY_BEHAVIOR_PROPENSITY = 0.01
MAX_TINY_SHARE = 0.01  # share of the logs the candidate would take that the logger took with p < 0.01
MAX_WEIGHT_SHARE = 0.05  # largest single weight / sum of weights


@dataclass
class SandboxEvaluation:
    """A candidate policy valued from the logging policy's logs: its IPS/SNIPS/DR values, the logging policy's
    own value, and candidate - logged on each basis (CIs from per-log influence functions, paired per log)."""

    candidate: OffPolicyResult
    logged: Estimate
    difference: dict[str, Estimate]
    overlap: dict
    warnings: list[str]
    estimate_reliable: bool
    reward_model: str

    def to_dict(self) -> dict:
        return to_json({
            "candidate": self.candidate.to_dict(), "logged": self.logged,
            "difference": self.difference, "overlap": self.overlap, "warnings": self.warnings,
            "estimate_reliable": self.estimate_reliable, "reward_model": self.reward_model,
        }, sig=None)


def evaluate_candidate_from_logs(
    reward: np.ndarray,
    behavior_prob: np.ndarray,
    candidate_prob: np.ndarray,
    X: np.ndarray | None = None,
    *,
    seed: int = 0,
    alpha: float = 0.05,
    min_ess_share: float = 0.10,
    min_ess: float = MIN_OPE_ESS,
) -> SandboxEvaluation:
    """Value of a candidate policy from the logs of the policy that acted (rewards in bps).

    ``behavior_prob`` is pi_b(a_i|x_i) > 0 of the logged action, ``candidate_prob`` pi_e(a_i|x_i). The logs
    name no action set, so DR uses a cross-fitted reward model of the context only (``X``; the mean when there
    are no covariates): q(x) + w (r - q(x)), which is unbiased whenever the logged propensities are right.
    """
    r = np.asarray(reward, dtype=float)
    pb = np.asarray(behavior_prob, dtype=float)
    pe = np.asarray(candidate_prob, dtype=float)
    n = len(r)
    X = np.zeros((n, 0)) if X is None else np.asarray(X, dtype=float)
    folds = min(5, n) if n >= 2 else 1
    if folds >= 2:
        q, _ = crossfit_reward_model(X, np.zeros(n, dtype=int), r, np.ones((n, 1)), kind="linear",
                                     n_folds=folds, seed=seed)
    else:
        q = np.full(n, r.mean() if n else 0.0)
    cand = off_policy_value(reward=r, logging_prob=pb, candidate_prob=pe, q_logged=q, q_candidate=q,
                            min_ess_share=min_ess_share, alpha=alpha)
    level = 1 - alpha
    logged = Estimate.normal(float(r.mean()), _se_from_if(r), n, level)
    w = pe / np.clip(pb, 1e-6, 1.0)
    sw = w.mean()
    difference = {
        "ips": Estimate.normal(float(np.mean(w * r - r)), _se_from_if(w * r - r), n, level),
        "dr": Estimate.normal(float(np.mean(q + w * (r - q) - r)), _se_from_if(q + w * (r - q) - r), n, level),
    }
    if sw > 0:
        v_sn = float((w * r).sum() / w.sum())
        psi = w * (r - v_sn) / sw - (r - r.mean())
        difference["snips"] = Estimate.normal(v_sn - float(r.mean()), _se_from_if(psi), n, level)
    else:
        difference["snips"] = Estimate(None, None, None, None, n)
    ess = kish_ess(w)
    takes = pe > 0
    tiny = int(np.sum(takes & (pb < TINY_BEHAVIOR_PROPENSITY)))
    tiny_share = tiny / int(takes.sum()) if takes.any() else 0.0
    weight_share = float(w.max() / w.sum()) if n and w.sum() > 0 else 0.0
    warnings = list(cand.warnings)
    if ess < min_ess:
        warnings.append(OPE_LOW_ESS)
    if tiny_share > MAX_TINY_SHARE:
        warnings.append(OPE_TINY_PROPENSITY)
    if weight_share > MAX_WEIGHT_SHARE:
        warnings.append(OPE_WEIGHT_CONCENTRATED)
    overlap = {
        "logs": n, "candidate_takes_logged_action": int(takes.sum()),
        "tiny_behavior_propensity": tiny, "tiny_behavior_propensity_share": tiny_share,
        "tiny_threshold": TINY_BEHAVIOR_PROPENSITY, "weight_ess": ess, "weight_ess_share": ess / n if n else 0.0,
        "min_ess": min_ess, "max_weight": float(w.max()) if n else None, "max_weight_share": weight_share,
        "min_behavior_propensity": float(pb.min()) if n else None,
    }
    unreliable = {OPE_POOR_OVERLAP, OPE_LOW_ESS, OPE_WEIGHT_CONCENTRATED, OPE_INVALID_PROPENSITY}
    return SandboxEvaluation(
        candidate=cand, logged=logged, difference=difference, overlap=overlap, warnings=list(dict.fromkeys(warnings)),
        estimate_reliable=n >= 2 and not unreliable & set(warnings),
        reward_model=f"linear on {X.shape[1]} covariate columns, {folds}-fold cross-fitted; action-independent")
