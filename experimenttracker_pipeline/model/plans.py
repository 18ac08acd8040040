"""The statistics plan (which interval decides, and how it is tuned) and the causal plan of an experiment.

Both are declared up front in the experiment's YAML, before the data arrive: a plan chosen after peeking would
invalidate its guarantees. The statistics plan is part of the contract's digest, so changing it after approval
needs new approvals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model import fields as f

CI_METHODS = ("always_valid", "group_sequential", "fixed_horizon")
STATISTICS_FIELDS = ("ci_method", "expected_samples", "planned_looks", "planned_max_samples", "mde_bps",
                     "expected_sd_bps", "winsorize_pct")
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

    def to_canonical(self) -> dict[str, Any]:
        """The digest-bound form: integers only (reals as micros)."""
        return {
            "ci_method": self.ci_method, "expected_samples": self.expected_samples,
            "planned_looks": self.planned_looks, "planned_max_samples": self.planned_max_samples,
            "mde_bps_micros": None if self.mde_bps is None else cj.to_micros(self.mde_bps),
            "winsorize_pct_micros": None if self.winsorize_pct is None else cj.to_micros(self.winsorize_pct),
        }


@dataclass(frozen=True)
class CausalPlan:
    instrument: str | None = None  # a covariate that is a valid instrument (e.g. the router's random draw)
    harm_margin_bps: float = 0.0  # a segment whose corrected CI lies below -harm_margin_bps is harmed


def _count(issues: f.Issues, raw: Mapping[str, Any], key: str) -> int | None:
    v = raw.get(key)
    return None if v is None else f.integer(issues, v, key, 0, whole_float=True)


def _real(issues: f.Issues, raw: Mapping[str, Any], key: str) -> float | None:
    v = raw.get(key)
    return None if v is None else f.number(issues, v, key)


def statistics_plan(issues: f.Issues, raw: Mapping[str, Any]) -> StatisticsPlan | None:
    """Validate the statistics-plan fields of a declaration."""
    method = raw.get("ci_method")
    method = "always_valid" if method is None else f.enum(issues, method, "ci_method", CI_METHODS)
    expected = _count(issues, raw, "expected_samples")
    looks = _count(issues, raw, "planned_looks")
    max_samples = _count(issues, raw, "planned_max_samples")
    if method == "group_sequential" and (not looks or not max_samples or looks < 1 or max_samples < 2):
        # Information fractions need a fixed denominator declared before the data arrive.
        issues.add("planned_looks", "group_sequential needs planned_looks >= 1 and planned_max_samples")
    mde = _real(issues, raw, "mde_bps")
    if mde is not None and mde <= 0:
        issues.add("mde_bps", "must be > 0")
    winsor = _real(issues, raw, "winsorize_pct")
    if winsor is not None and not 0 < winsor < 50:
        issues.add("winsorize_pct",
                   "must be a tail percentage in (0, 50), e.g. 1 clips at the 1st and 99th percentiles")
    expected_sd = _real(issues, raw, "expected_sd_bps")
    if expected_sd is not None and expected_sd <= 0:
        issues.add("expected_sd_bps", "must be > 0")
    if method is None:
        return None
    return StatisticsPlan(method, expected, looks, max_samples, mde, expected_sd, winsor)


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
