"""The statistics plan (which interval decides, and how it is tuned) and the causal plan of an experiment.

Both are declared up front in the experiment's YAML, before the data arrive: a plan chosen after peeking would
invalidate its guarantees. The statistics plan is part of the contract's digest, so changing it after approval
needs new approvals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model import fields as f

CI_METHODS = ("always_valid", "group_sequential", "fixed_horizon")
STATISTICS_FIELDS = ("ci_method", "expected_samples", "planned_looks", "planned_max_samples", "mde_bps",
                     "expected_sd_bps", "winsorize_pct", "drift_margin_bps", "non_inferiority_margins",
                     "prior_mean_bps", "prior_sd_bps", "adjust_for")
# The always-valid interval plugs in the sample sd: below this many pairs it misses more than 5% (by simulation,
# benchmarks/calibration.py "small n"). The same constant as stats.ALWAYS_VALID_MIN_SAMPLES (a test keeps them
# equal; the model does not import the statistics).
ALWAYS_VALID_MIN_SAMPLES = 20
MAX_ADJUSTMENT_COVARIATES = 8
# Bounds of the plan's numbers: effects, margins and sds in basis points within +/-1e6 bps (100x the notional);
# a positive scale (an sd, an effect size) at least 1e-6 bps, so that ratios of them stay finite; at most 100
# planned looks (the design's boundaries are computed once per look).
MAX_ABS_BPS = 1e6
MIN_POSITIVE_BPS = 1e-6
MAX_PLANNED_LOOKS = 100
CAUSAL_FIELDS = ("instrument", "harm_margin_bps")


@dataclass(frozen=True)
class StatisticsPlan:
    ci_method: str = "always_valid"
    expected_samples: int | None = None  # tunes the always-valid boundary to be tightest here
    planned_looks: int | None = None  # group_sequential: number of looks ...
    planned_max_samples: int | None = None  # ... and the sample count of the last one (information fractions)
    mde_bps: float | None = None  # minimum detectable effect, for power and conditional power
    expected_sd_bps: float | None = None  # prior SD of the paired delta, for power before data arrive
    winsorize_pct: float | None = None  # tail percentage clipped in the winsorized sensitivity check
    drift_margin_bps: float = 0.0  # drift when shown worse than control by more than this (non-inferiority)
    non_inferiority_margins: Mapping[str, float] = field(default_factory=dict, hash=False)  # per surface metric
    prior_mean_bps: float = 0.0  # the Bayesian read-out's prior N(prior_mean_bps, prior_sd_bps^2) ...
    prior_sd_bps: float | None = None  # ... flat when None
    adjust_for: Mapping[str, float | None] = field(default_factory=dict, hash=False)  # covariate -> known mean

    def to_canonical(self) -> dict[str, Any]:
        """The digest-bound form: integers only (reals as micros). The verdict options below the original six
        fields appear only when declared, so the digests of experiments that do not use them are unchanged."""
        out: dict[str, Any] = {
            "ci_method": self.ci_method, "expected_samples": self.expected_samples,
            "planned_looks": self.planned_looks, "planned_max_samples": self.planned_max_samples,
            "mde_bps_micros": None if self.mde_bps is None else cj.to_micros(self.mde_bps),
            "winsorize_pct_micros": None if self.winsorize_pct is None else cj.to_micros(self.winsorize_pct),
        }
        if self.drift_margin_bps:
            out["drift_margin_bps_micros"] = cj.to_micros(self.drift_margin_bps)
        if self.non_inferiority_margins:
            out["non_inferiority_margins_micros"] = {k: cj.to_micros(v) for k, v in sorted(self.non_inferiority_margins.items())}
        if self.prior_mean_bps or self.prior_sd_bps is not None:
            out["prior_mean_bps_micros"] = cj.to_micros(self.prior_mean_bps)
            out["prior_sd_bps_micros"] = None if self.prior_sd_bps is None else cj.to_micros(self.prior_sd_bps)
        if self.adjust_for:
            out["adjust_for"] = {k: None if v is None else cj.to_micros(v) for k, v in sorted(self.adjust_for.items())}
        return out


@dataclass(frozen=True)
class CausalPlan:
    instrument: str | None = None  # a covariate that is a valid instrument (e.g. the router's random draw)
    harm_margin_bps: float = 0.0  # a segment whose corrected CI lies below -harm_margin_bps is harmed


def _count(issues: f.Issues, raw: Mapping[str, Any], key: str, hi: int = f.MAX_COUNT) -> int | None:
    v = raw.get(key)
    return None if v is None else f.integer(issues, v, key, 0, hi, whole_float=True)


def _real(issues: f.Issues, raw: Mapping[str, Any], key: str) -> float | None:
    """A plan number in basis points, within +/- MAX_ABS_BPS."""
    v = raw.get(key)
    return None if v is None else f.number(issues, v, key, -MAX_ABS_BPS, MAX_ABS_BPS)


def statistics_plan(issues: f.Issues, raw: Mapping[str, Any]) -> StatisticsPlan | None:
    """Validate the statistics-plan fields of a declaration."""
    method = raw.get("ci_method")
    method = "always_valid" if method is None else f.enum(issues, method, "ci_method", CI_METHODS)
    expected = _count(issues, raw, "expected_samples")
    looks = _count(issues, raw, "planned_looks", MAX_PLANNED_LOOKS)
    max_samples = _count(issues, raw, "planned_max_samples")
    if method == "group_sequential" and (not looks or not max_samples or looks < 1 or max_samples < 2):
        # Information fractions need a fixed denominator declared before the data arrive.
        issues.add("planned_looks", "group_sequential needs planned_looks >= 1 and planned_max_samples")
    mde = _real(issues, raw, "mde_bps")
    if mde is not None and mde < MIN_POSITIVE_BPS:
        issues.add("mde_bps", f"must be > 0 (at least {MIN_POSITIVE_BPS:g})")
    winsor = _real(issues, raw, "winsorize_pct")
    if winsor is not None and not 0 < winsor < 50:
        issues.add("winsorize_pct",
                   "must be a tail percentage in (0, 50), e.g. 1 clips at the 1st and 99th percentiles")
    expected_sd = _real(issues, raw, "expected_sd_bps")
    if expected_sd is not None and expected_sd < MIN_POSITIVE_BPS:
        issues.add("expected_sd_bps", f"must be > 0 (at least {MIN_POSITIVE_BPS:g})")
    if looks is not None and max_samples is not None and looks > max_samples:
        issues.add("planned_looks", f"{looks} looks cannot fit in planned_max_samples {max_samples}")
    if method == "fixed_horizon" and not max_samples:
        # A fixed-horizon test is valid at one planned sample size only; judged at every look it is a peeking test.
        issues.add("planned_max_samples",
                   "fixed_horizon is tested once, at the planned sample size: declare planned_max_samples")
    drift_margin = _real(issues, raw, "drift_margin_bps")
    if drift_margin is not None and drift_margin < 0:
        issues.add("drift_margin_bps", "must be >= 0 (drift when worse than control by more than it)")
    margins = _margins(issues, raw)
    prior_mean = _real(issues, raw, "prior_mean_bps")
    prior_sd = _real(issues, raw, "prior_sd_bps")
    if prior_sd is not None and prior_sd < MIN_POSITIVE_BPS:
        issues.add("prior_sd_bps", f"must be > 0, at least {MIN_POSITIVE_BPS:g} (omit it for a flat prior)")
    adjust_for = _adjust_for(issues, raw)
    if adjust_for and method != "always_valid":
        issues.add("adjust_for", "regression adjustment is available with ci_method always_valid")
    if adjust_for and winsor is not None:
        issues.add("adjust_for", "cannot be combined with winsorize_pct (one basis for the verdict)")
    if method is None:
        return None
    return StatisticsPlan(method, expected, looks, max_samples, mde, expected_sd, winsor, drift_margin or 0.0,
                          margins, prior_mean or 0.0, prior_sd, adjust_for)


def check_min_samples(issues: f.Issues, plan: StatisticsPlan | None, min_samples: int | None) -> None:
    """The plan's constraints on ``min_samples_for_decision``: the always-valid floor, and a fixed-horizon plan
    that reaches the minimum."""
    if plan is None or min_samples is None:
        return
    if plan.ci_method == "always_valid" and min_samples < ALWAYS_VALID_MIN_SAMPLES:
        issues.add("min_samples_for_decision",
                   f"must be at least {ALWAYS_VALID_MIN_SAMPLES} with ci_method always_valid (the confidence "
                   "sequence uses the sample sd and misses more than 5% below that)")
    if plan.ci_method == "fixed_horizon" and plan.planned_max_samples and plan.planned_max_samples < min_samples:
        issues.add("planned_max_samples", f"must be >= min_samples_for_decision ({min_samples}) for fixed_horizon")


def _margins(issues: f.Issues, raw: Mapping[str, Any]) -> dict[str, float]:
    # Imported here: model.contract imports this module.
    from experimenttracker_pipeline.model.contract import METRICS

    value = raw.get("non_inferiority_margins")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        issues.add("non_inferiority_margins", "must map metric names to margins, e.g. {slippage_delta_bps: 1.0}")
        return {}
    out = {}
    for metric, margin in value.items():
        key = f"non_inferiority_margins.{metric}"
        if metric not in METRICS:
            issues.add(key, f"unknown metric; known metrics: {', '.join(METRICS)}")
            continue
        m = None if margin is None else f.number(issues, margin, key, -MAX_ABS_BPS, MAX_ABS_BPS)
        if margin is None or (m is not None and m < 0):
            issues.add(key, "must be a number >= 0")
        if m is None or m < 0:
            continue
        out[str(metric)] = m
    return out


def _adjust_for(issues: f.Issues, raw: Mapping[str, Any]) -> dict[str, float | None]:
    value = raw.get("adjust_for")
    if value is None:
        return {}
    if isinstance(value, str) or not isinstance(value, (list, tuple, Mapping)):
        issues.add("adjust_for", "must be a list of covariate names, or a mapping name -> known mean")
        return {}
    items = value.items() if isinstance(value, Mapping) else ((v, None) for v in value)
    out: dict[str, float | None] = {}
    for name, centre in items:
        if not isinstance(name, str) or not name.strip() or len(name) > 64 or '"' in name:
            issues.add("adjust_for", f"{name!r} is not a covariate name")
            continue
        if name in out:
            issues.add("adjust_for", f"{name!r} is listed twice")
            continue
        out[name] = None if centre is None else f.number(issues, centre, f"adjust_for.{name}")
    if len(out) > MAX_ADJUSTMENT_COVARIATES:
        issues.add("adjust_for", f"at most {MAX_ADJUSTMENT_COVARIATES} covariates")
    return out


def causal_plan(issues: f.Issues, raw: Mapping[str, Any]) -> CausalPlan:
    """Validate the causal-plan fields of a declaration."""
    instrument = raw.get("instrument")
    if instrument is not None and (not isinstance(instrument, str) or not instrument.strip()):
        issues.add("instrument", "must name a covariate of the fills")
        instrument = None
    margin = _real(issues, raw, "harm_margin_bps")
    if margin is None:
        margin = 0.0
    elif margin < 0:
        issues.add("harm_margin_bps", "must be >= 0 (a segment is harmed below -harm_margin_bps)")
    return CausalPlan(instrument, margin)
