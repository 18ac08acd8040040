"""One experiment's causal analysis: the estimators the mode calls for, combined into a CausalResult."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from experimenttracker_pipeline.model.numbers import to_json

from .common import (
    MIN_ARM_N,
    NO_PAIRED_DELTAS,
    SINGLE_ARM,
    SMALL_SAMPLE,
    Estimate,
    _cat_values,
    design_matrix,
    split_covariates,
)
from .heterogeneity import _summary, cate_models, segment_effects
from .instruments import IVResult, iv_2sls
from .off_policy import OffPolicyResult, off_policy_value
from .weighting import AteResult, estimate_ate


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
        return to_json(d, sig=None)


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
                # unbiased and matches the paired per-experiment CI.
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
