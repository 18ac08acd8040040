"""Arm effects under adaptive allocation, from the logged assignment propensities (IPW and AIPW).

When the traffic shares change with the data (Thompson sampling), the arms' sample means are biased and the
usual two-sample interval is not valid. Each unit's logged propensity ``e_i`` (the probability the router gave
its arm when it was assigned) restores both:

* IPW (Hajek): the arm mean ``sum(1{A=a} y / e) / sum(1{A=a} / e)``; its influence function
  ``1{A=a} (y - m_a) / e / mean(1{A=a} / e)`` gives the SE;
* AIPW with a *history-only* outcome model (Hadad et al. 2021, "Confidence intervals for policy evaluation in
  adaptive experiments"; Kato et al. 2020): ``Gamma_i(a) = mu_{i-1}(a) + 1{A_i = a} (y_i - mu_{i-1}(a)) / e_i``,
  where ``mu_{i-1}(a)`` is the arm's mean over the units *before* i in assignment order. Each score has
  conditional mean mu(a) given the past, so the scores' differences form a martingale difference sequence and
  their plain mean and SD/sqrt(n) give the estimate and its SE.

Both need the propensities bounded away from 0: the allocation floor (5% by default) bounds every weight by 20,
which is what makes the martingale central limit theorem (and the intervals) hold; benchmarks/adaptive_allocation.py
measures the coverage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from experimenttracker_pipeline.model.numbers import to_json

from .common import MIN_ARM_N, Estimate
from .weighting import _se_from_if, kish_ess

__all__ = ["AdaptiveEffect", "adaptive_effects", "adaptive_analysis", "ADAPTIVE_LOW_PROPENSITY",
           "ADAPTIVE_FILLS_EXCLUDED", "ADAPTIVE_INSUFFICIENT_DATA", "ADAPTIVE_PROPENSITY_MISMATCH", "ADAPTIVE_BASIS",
           "propensity_check"]

ADAPTIVE_LOW_PROPENSITY = "CAUSAL_ADAPTIVE_LOW_PROPENSITY"
ADAPTIVE_FILLS_EXCLUDED = "CAUSAL_ADAPTIVE_FILLS_EXCLUDED"  # some fills had no usable logged propensity
ADAPTIVE_INSUFFICIENT_DATA = "CAUSAL_ADAPTIVE_INSUFFICIENT_DATA"  # too few usable fills in the variant or control arm
ADAPTIVE_PROPENSITY_MISMATCH = "CAUSAL_ADAPTIVE_PROPENSITY_MISMATCH"  # arm counts disagree with the logged propensities
ADAPTIVE_BASIS = "aipw_adaptive"
PROPENSITY_CHECK_ALPHA = 0.001  # as the sample-ratio-mismatch check of fixed splits


@dataclass
class AdaptiveEffect:
    """Effect of one arm against the control under adaptive allocation."""

    arm: str
    control: str
    ipw: Estimate
    aipw: Estimate
    naive: Estimate  # difference of sample means: biased under adaptive allocation, reported for contrast
    n_arm: int
    n_control: int
    ess_arm: float
    ess_control: float
    min_propensity: float
    warnings: list[str]

    def to_dict(self) -> dict:
        return to_json({
            "arm": self.arm, "control": self.control, "ipw": self.ipw, "aipw": self.aipw, "naive": self.naive,
            "n_arm": self.n_arm, "n_control": self.n_control, "ess_arm": self.ess_arm,
            "ess_control": self.ess_control, "min_propensity": self.min_propensity, "warnings": self.warnings,
            "method": "logged assignment propensities (adaptive allocation): Hajek IPW and AIPW with a "
                      "history-only outcome model",
        }, sig=None)


def _history_means(arm_idx: np.ndarray, y: np.ndarray, k: int, prior: float) -> np.ndarray:
    """mu_{i-1}(a): each arm's mean over the units before i (``prior`` while the arm has none)."""
    n = len(y)
    sums = np.zeros((n + 1, k))
    counts = np.zeros((n + 1, k))
    onehot = np.zeros((n, k))
    onehot[np.arange(n), arm_idx] = 1.0
    sums[1:] = np.cumsum(onehot * y[:, None], axis=0)
    counts[1:] = np.cumsum(onehot, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(counts[:-1] > 0, sums[:-1] / np.maximum(counts[:-1], 1), prior)
    return mu


def adaptive_effects(arms: Sequence[str], outcomes: Sequence[float], propensities: Sequence[float], *,
                     control: str, order: Sequence[float] | None = None, alpha: float = 0.05,
                     min_propensity: float = 0.01) -> dict[str, AdaptiveEffect]:
    """IPW and AIPW effect of every non-control arm against ``control``.

    ``arms[i]`` is unit i's assigned arm, ``outcomes[i]`` its primary-metric outcome and ``propensities[i]`` the
    logged probability of that arm at assignment; ``order`` (e.g. assignment times) sorts the units for the
    history-only outcome model (default: the given order). Propensities below ``min_propensity`` are flagged
    (``CAUSAL_ADAPTIVE_LOW_PROPENSITY``), never silently clipped.
    """
    a = np.asarray(arms, dtype=object)
    y = np.asarray(outcomes, dtype=float)
    e = np.asarray(propensities, dtype=float)
    if not (len(a) == len(y) == len(e)):
        raise ValueError("arms, outcomes and propensities must have the same length")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(e)) and np.all((e > 0) & (e <= 1))):
        raise ValueError("outcomes must be finite and propensities in (0, 1]")
    if order is not None:
        idx = np.argsort(np.asarray(order, dtype=float), kind="stable")
        a, y, e = a[idx], y[idx], e[idx]
    labels = sorted({str(x) for x in a} | {control})
    if control not in set(a.tolist()):
        raise ValueError(f"no unit was assigned to the control arm {control!r}")
    pos = {lab: i for i, lab in enumerate(labels)}
    arm_idx = np.array([pos[str(x)] for x in a])
    n = len(y)
    mu = _history_means(arm_idx, y, len(labels), 0.0)  # a fixed start keeps every score history-only
    level = 1 - alpha

    def hajek(lab: str) -> tuple[float, np.ndarray, float]:
        w = (arm_idx == pos[lab]) / e
        s = w.mean()
        m = float((w * y).sum() / w.sum())
        return m, w * (y - m) / s, kish_ess(w[w > 0])

    def aipw_scores(lab: str) -> np.ndarray:
        j = pos[lab]
        hit = arm_idx == j
        return mu[:, j] + hit * (y - mu[:, j]) / e

    m_c, psi_c, ess_c = hajek(control)
    g_c = aipw_scores(control)
    y_c = y[arm_idx == pos[control]]
    out: dict[str, AdaptiveEffect] = {}
    for lab in labels:
        if lab == control:
            continue
        m_t, psi_t, ess_t = hajek(lab)
        psi = psi_t - psi_c
        ipw = Estimate.normal(m_t - m_c, _se_from_if(psi), n, level)
        g = aipw_scores(lab) - g_c
        aipw = Estimate.normal(float(g.mean()), float(g.std(ddof=1) / np.sqrt(n)), n, level)
        y_t = y[arm_idx == pos[lab]]
        naive_se = float(np.sqrt(y_t.var(ddof=1) / len(y_t) + y_c.var(ddof=1) / len(y_c))) \
            if min(len(y_t), len(y_c)) > 1 else float("nan")
        naive = Estimate.normal(float(y_t.mean() - y_c.mean()) if len(y_t) else float("nan"), naive_se, n, level)
        used = (arm_idx == pos[lab]) | (arm_idx == pos[control])
        low = float(e[used].min())
        warns = [ADAPTIVE_LOW_PROPENSITY] if low < min_propensity else []
        out[lab] = AdaptiveEffect(lab, control, ipw, aipw, naive, int(len(y_t)), int(len(y_c)), ess_t, ess_c, low,
                                  warns)
    return out


def propensity_check(arms: Sequence[str], propensities: Sequence[float], *,
                     alpha: float = PROPENSITY_CHECK_ALPHA) -> dict:
    """The sample-ratio check of adaptive allocation: with correct logging, every arm's Horvitz-Thompson count
    ``sum(1{A=a} / e)`` estimates the number of units N, with variance ``sum(1{A=a} (1 - e) / e^2)``; each arm's
    z-test, Bonferroni over the arms, flags routing or logging that disagrees with the logged propensities."""
    from scipy import stats

    a = np.asarray(arms, dtype=object)
    e = np.asarray(propensities, dtype=float)
    n = len(a)
    per_arm = {}
    for lab in sorted({str(x) for x in a}):
        w = e[a == lab]
        total, var = float((1 / w).sum()), float(((1 - w) / w ** 2).sum())
        z = (total - n) / np.sqrt(var) if var > 0 else 0.0
        per_arm[lab] = {"fills": int(len(w)), "ht_units": total, "z": float(z),
                        "p_value": float(2 * stats.norm.sf(abs(z)))}
    p_min = min((r["p_value"] for r in per_arm.values()), default=1.0)
    p_adjusted = min(1.0, p_min * max(1, len(per_arm)))
    return {"units": n, "arms": per_arm, "p_value": p_adjusted, "alpha": alpha, "mismatch": p_adjusted < alpha,
            "method": "Horvitz-Thompson count per arm against the number of units, z-test, Bonferroni over arms"}


def adaptive_analysis(arms: Sequence[str], outcomes: Sequence[float], propensities: Sequence[float | None],
                      markets: Sequence[str], order: Sequence[float], *, control: str, variant: str,
                      forbidden_markets: Sequence[str] = (), min_arm_n: int = MIN_ARM_N,
                      alpha: float = 0.05) -> dict:
    """The causal-result fields of an experiment that declares adaptive allocation: the verdict's basis is the
    AIPW effect of ``variant`` against ``control`` from the logged propensities (``aipw_adaptive``), with the IPW
    one and every arm's effects under ``adaptive``.

    ``propensities[i]`` is the logged probability of the arm fill i was routed to. Fills that cannot enter the
    analysis are excluded and counted, never dropped silently: no logged propensity; not randomised (a market ETH
    forces to control, or a logged propensity of 1); a logged propensity of 0. The estimate is reliable when both
    arms keep ``min_arm_n`` fills, no propensity is below 1% and the arm counts agree with the logged propensities
    (``propensity_check``, the sample-ratio check of adaptive allocation).
    """
    excluded = {"no_logged_propensity": 0, "not_randomised": 0, "zero_propensity": 0}
    forbidden = set(forbidden_markets)
    keep = []
    for i, (e, market) in enumerate(zip(propensities, markets)):
        if e is None or not np.isfinite(e):
            excluded["no_logged_propensity"] += 1
        elif market in forbidden or e >= 1:
            excluded["not_randomised"] += 1
        elif e <= 0:
            excluded["zero_propensity"] += 1
        else:
            keep.append(i)
    a = [str(arms[i]) for i in keep]
    block: dict = {"fills": len(arms), "fills_used": len(keep), "excluded": excluded, "effects": {},
                   "method": "effects from the logged assignment propensities under adaptive allocation: Hajek IPW and "
                             "AIPW with a history-only outcome model, in recorded order; fills without a usable "
                             "propensity are excluded and counted"}
    warnings = [ADAPTIVE_FILLS_EXCLUDED] if len(keep) < len(arms) else []
    out: dict = {"adaptive": block, "verdict_basis": ADAPTIVE_BASIS, "estimate_reliable": False,
                 ADAPTIVE_BASIS: None, "ipw_adaptive": None, "verdict_estimate": None}
    if min(a.count(control), a.count(variant)) < 2:
        block["detail"] = f"needs at least 2 fills with a logged propensity in {variant} and in {control}"
        out["warnings"] = warnings + [ADAPTIVE_INSUFFICIENT_DATA]
        return out
    e = [float(propensities[i]) for i in keep]  # type: ignore[arg-type]
    check = propensity_check(a, e)
    block["propensity_check"] = check
    if check["mismatch"]:
        warnings.append(ADAPTIVE_PROPENSITY_MISMATCH)
    effects = adaptive_effects(a, [outcomes[i] for i in keep], e, control=control, order=[order[i] for i in keep],
                               alpha=alpha)
    block["effects"] = {arm: effect.to_dict() for arm, effect in effects.items()}
    effect = effects[variant]
    warnings += effect.warnings
    if min(effect.n_arm, effect.n_control) < min_arm_n:
        warnings.append(ADAPTIVE_INSUFFICIENT_DATA)
    aipw = {**to_json(effect.aipw, sig=None), "n": len(keep)}  # n: the fills the scores average over
    out.update({ADAPTIVE_BASIS: aipw, "ipw_adaptive": {**to_json(effect.ipw, sig=None), "n": len(keep)},
                "verdict_estimate": aipw,
                "estimate_reliable": (min(effect.n_arm, effect.n_control) >= min_arm_n and not effect.warnings
                                      and not check["mismatch"]),
                "warnings": warnings})
    return out
