"""The one deciding CI of a verdict, the intervals shown next to it as supporting evidence, and reading-friendly
numbers (pure: no database, no Dagster).

Every surface (asset metadata, `experimenttracker status`, the EXPERIMENT_RESULT JSON, the HTML report) names the
interval the verdict was decided on ``deciding_ci`` and shows it first; every other interval is listed under
"supporting evidence" with a note on how it differs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

DECIDING_CI = "deciding_ci"
# The causal basis of an experiment under adaptive allocation (causal.adaptive.ADAPTIVE_BASIS; a test keeps them equal).
ADAPTIVE_BASIS = "aipw_adaptive"
DECIDING_LABEL = "deciding CI"
SUPPORTING_LABEL = "supporting evidence"

METHOD_NAMES = {
    "always_valid": "always-valid 95% confidence sequence (paired)",
    "group_sequential": "group-sequential 95% interval at a planned look (paired)",
    "fixed_horizon": "fixed-horizon 95% t interval (paired)",
    "aipw_always_valid": "AIPW estimate, always-valid 95% interval",
    "aipw_trimmed_always_valid": "trimmed AIPW estimate, always-valid 95% interval",
    "ipw_always_valid": "IPW estimate, always-valid 95% interval",
    "off_policy_dr_always_valid": "off-policy DR estimate of candidate - logged, always-valid 95% interval",
    "aipw_adaptive_always_valid": "AIPW estimate from the logged assignment propensities (adaptive allocation), "
                                  "always-valid 95% interval",
}

WHY = {
    "always_valid": "The decision uses the always-valid interval because it keeps its 5% error rate however often "
                    "the experiment is looked at; the fixed-horizon interval is only valid at one pre-planned look.",
    "group_sequential": "The decision uses the group-sequential interval because the contract declared planned looks; "
                        "its boundary spends the 5% error rate over those looks.",
    "fixed_horizon": "The decision uses the fixed-horizon interval because the contract declared a single analysis "
                     "at the planned sample size.",
    "causal": "The decision uses the causal (IPW/AIPW) estimate on the always-valid footing because limited-live "
              "routing was not uniformly random, so the paired difference is biased; the plain AIPW interval is only "
              "valid at one pre-planned look.",
    "off_policy": "The decision uses the doubly robust off-policy estimate of candidate minus logging policy from "
                  "the logs (a sandbox experiment has no live exposure and no pairs), on the always-valid footing "
                  "because it is re-evaluated as logs arrive.",
    "adaptive": "The decision uses the AIPW estimate from the logged assignment propensities because the traffic "
                "shares adapt to the data (adaptive allocation): under changing shares the arms' sample means and the "
                "paired difference are biased. Fills without a usable logged propensity are excluded and counted. "
                "The interval is widened to the always-valid footing for repeated looks.",
}


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def rounded(value: Any, digits: int = 2) -> float | None:
    """A number rounded for reading (the store keeps full precision); None stays None."""
    number = _finite(value)
    return None if number is None else round(number, digits)


def fmt_bps(value: Any, digits: int = 2) -> str:
    number = _finite(value)
    return "n/a" if number is None else f"{number:+.{digits}f}"


def fmt_interval(low: Any, high: Any, digits: int = 2) -> str:
    lo, hi = _finite(low), _finite(high)
    return "n/a" if lo is None or hi is None else f"[{lo:+.{digits}f}, {hi:+.{digits}f}] bps"


def method_name(basis: str | None) -> str:
    return METHOD_NAMES.get(basis or "", (basis or "unknown").replace("_", " "))


def why_deciding(basis: str | None) -> str:
    if basis and basis.startswith("off_policy"):
        return WHY["off_policy"]
    if basis and basis.startswith(ADAPTIVE_BASIS):
        return WHY["adaptive"]
    if basis and ("aipw" in basis or basis.startswith("ipw")):
        return WHY["causal"]
    return WHY.get(basis or "", WHY["always_valid"])


def deciding_ci(verdict: Mapping[str, Any]) -> dict[str, Any]:
    """The interval the verdict was decided on: method, bounds (full precision), estimate, samples and why."""
    basis = verdict.get("basis") or verdict.get("ci_method")
    return {"name": DECIDING_LABEL, "method": basis, "method_name": method_name(basis),
            "estimate_bps": _finite(verdict.get("edge_delta_bps")), "ci_95_low": _finite(verdict.get("ci_95_low")),
            "ci_95_high": _finite(verdict.get("ci_95_high")), "samples": verdict.get("samples"),
            "why": why_deciding(basis)}


def supporting_intervals(verdict: Mapping[str, Any], causal: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The other intervals of the same experiment, each with a note on why it is not the deciding one."""
    basis = verdict.get("basis") or ""
    out: list[dict[str, Any]] = []

    def add(label: str, low: Any, high: Any, estimate: Any, note: str) -> None:
        lo, hi = _finite(low), _finite(high)
        if lo is not None and hi is not None:
            # The paired intervals are symmetric around the paired mean: their midpoint is the estimate.
            est = _finite(estimate)
            out.append({"name": SUPPORTING_LABEL, "label": label, "ci_95_low": lo, "ci_95_high": hi,
                        "estimate_bps": est if est is not None else (lo + hi) / 2, "note": note})

    if verdict.get("paired_ci_95_low") is not None:
        add("paired always-valid confidence sequence", verdict.get("paired_ci_95_low"), verdict.get("paired_ci_95_high"),
            None, "paired difference of matched fills; biased when routing is not uniformly random")
    if basis.startswith("off_policy"):
        add("off-policy DR 95% interval, candidate - logged (single look)", verdict.get("fixed_ci_95_low"),
            verdict.get("fixed_ci_95_high"), verdict.get("edge_delta_bps"),
            "the same estimate before it was widened to the always-valid footing")
    elif basis != "fixed_horizon":
        add("fixed-horizon 95% t interval", verdict.get("fixed_ci_95_low"), verdict.get("fixed_ci_95_high"),
            None, "valid only at one pre-planned look; narrower than the always-valid interval")
    adaptive = basis.startswith(ADAPTIVE_BASIS)
    for key, label in ((ADAPTIVE_BASIS, "AIPW 95% interval from the logged propensities (single look)"),
                       ("ipw_adaptive", "IPW 95% interval from the logged propensities (single look)")):
        est = (causal or {}).get(key) or {}
        if est:
            add(label, est.get("ci_95_low"), est.get("ci_95_high"), est.get("estimate_bps"),
                "the same estimate before it was widened to the always-valid footing" if basis.startswith(key)
                else "causal estimate at one look, not widened for repeated looks")
    for key, label in (("aipw", "AIPW 95% interval (single look)"), ("ipw", "IPW 95% interval (single look)")):
        est = (causal or {}).get(key) or {}
        if est and adaptive:
            add(label, est.get("ci_95_low"), est.get("ci_95_high"), est.get("estimate_bps"),
                "variant against control only, with estimated propensities: not valid under adaptive allocation")
        elif est and not basis.startswith(key):
            add(label, est.get("ci_95_low"), est.get("ci_95_high"), est.get("estimate_bps"),
                "causal estimate at one look, not widened for repeated looks")
        elif est:
            add(label, est.get("ci_95_low"), est.get("ci_95_high"), est.get("estimate_bps"),
                "the same estimate before it was widened to the always-valid footing")
    for key, label in (("ips", "off-policy IPS 95% interval, candidate - logged"),
                       ("snips", "off-policy SNIPS 95% interval, candidate - logged")):
        est = (((causal or {}).get("sandbox") or {}).get("difference") or {}).get(key) or {}
        add(label, est.get("ci_95_low"), est.get("ci_95_high"), est.get("estimate_bps"),
            "another importance-weighting estimator of the same difference, at one look")
    bayes = verdict.get("bayesian") or {}
    if bayes:
        add("Bayesian 95% credible interval", bayes.get("credible_low"), bayes.get("credible_high"),
            bayes.get("posterior_mean"), f"prior {bayes.get('prior', 'flat')}; a read-out, not a decision rule")
    return out


def deciding_summary(verdict: Mapping[str, Any]) -> str:
    """One line: 'deciding CI [low, high] bps (method)'."""
    ci = deciding_ci(verdict)
    return f"{DECIDING_LABEL} {fmt_interval(ci['ci_95_low'], ci['ci_95_high'])} ({ci['method_name']})"
