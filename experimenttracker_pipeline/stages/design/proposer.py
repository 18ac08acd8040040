"""The experiment proposer (spec 13.4): a statistically sound draft declaration from the control's history.

Given the variant(s), the control, the principal, the subject, the primary metric and a minimum detectable
effect, :func:`propose_design` works out the number of matched pairs each variant needs for the requested power
under the interval the verdict uses, the rollout and initial share from the PoLB envelope and risk level, the
monitoring plan, the stop rules and the expected duration at the control's historical fill rate, and
:meth:`Proposal.to_yaml` writes them as a declaration the declarations loader accepts. Vague requests (no
principal, no subject, no primary metric; spec section 3) are refused with :class:`VagueRequest`.

Sample size (paired design: one delta per matched pair, a one-sample test on the deltas):

* the delta's standard deviation comes from the stored paired deltas of earlier experiments against the same
  control and mode when there are at least :data:`MIN_PAIRING_HISTORY` of them (pooled within experiments);
  otherwise it is the conservative ``sqrt(2) * sd(control metric)``: variant and control outcomes assumed
  uncorrelated (pairs on the same opportunity are usually positively correlated, which only lowers it);
* ``always_valid`` (the default, and what shadow verdicts use): the first n at which the confidence sequence,
  tuned at that same n (``expected_samples``), excludes zero with the requested power; ``fixed_horizon``: the
  one-sample t-test's n (noncentral t), tested once at ``planned_max_samples``;
* with k treatments each comparison gets alpha / k (Bonferroni), as the drift signal already splits its alpha.

Duration: shadow pairs arrive at the control's live fill rate in the markets in scope (every live decision of
the control is shadowed); limited-live pairs at that rate times the variant's initial share (each variant live
fill pairs with one control fill of the remaining traffic).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import yaml

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.model import fields as f
from experimenttracker_pipeline.model.contract import (
    METRICS,
    PRINCIPAL_KINDS,
    RISK_LEVELS,
    SUBJECT_KINDS,
)
from experimenttracker_pipeline.model.experiment import ID_PATTERN, MODES, SLUG_PATTERN
from experimenttracker_pipeline.stages.design.history import DAY_MS, HISTORY_METRICS, FillHistory, PairingHistory

__all__ = [
    "DesignRequest", "Proposal", "VagueRequest", "NoHistory", "propose", "propose_design", "planned_pairs",
    "rollout_plan", "MIN_PAIRING_HISTORY", "CI_METHODS",
]

CI_METHODS = ("always_valid", "fixed_horizon")
# Paired deltas of earlier experiments against the same control needed before their variance replaces the
# conservative independent-arms assumption (the sd of 200 deltas is known to about +-5%).
MIN_PAIRING_HISTORY = 200
# The always-valid verdict is re-evaluated each time the sample grows by this fraction (the sensor's default
# EXPERIMENTTRACKER_EVALUATION_STEP_PCT); used only to count the expected looks.
EVALUATION_GROWTH = 0.10
DEFAULT_ONLINE_SHARE_CAP_BP = 1000
# Metrics the monitoring plan watches as guardrails besides the primary one.
GUARDRAILS = ("slippage_delta_bps", "fill_quality_delta")
STALL_AFTER_SECONDS = 3600


class VagueRequest(ValueError):
    """A request that does not say who is evaluated, for whom, or on what (spec section 3), or that asks for
    something no design can give (a non-positive MDE, a cap that leaves a variant no traffic); names every problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("refusing the experiment request: " + "; ".join(self.problems))


class NoHistory(ValueError):
    """Not enough control history to estimate the variance or the fill rate (and no assumption given)."""


@dataclass(frozen=True)
class DesignRequest:
    variants: tuple[str, ...]
    control: str
    principal: str | None
    subject: str | None
    metric: str | None
    mde_bps: float
    alpha: float = 0.05
    power: float = 0.8
    mode: str = "shadow_only"
    risk: str = "medium"
    max_population_share_bp: int | None = None
    markets: tuple[str, ...] = ()
    ci_method: str = "always_valid"
    history_days: float | None = None  # only fills of the last N days (before now_ms); None: all
    assume_sd_bps: float | None = None  # sd of the paired delta, overriding the history
    experiment_id: str | None = None
    started_at: datetime | None = None
    now_ms: int | None = None


def validate_request(req: DesignRequest) -> DesignRequest:
    """Refuse vague or impossible requests, naming every problem at once."""
    issues = f.Issues("<proposal request>")
    problems: list[str] = []
    principal = f.kind_id(issues, req.principal, "principal", PRINCIPAL_KINDS,
                          "on whose behalf (the desk or fund whose capital is at risk)")
    subject = f.kind_id(issues, req.subject, "subject", SUBJECT_KINDS, "what is evaluated")
    problems += [f"{i.path} {i.message}" for i in issues.items]
    if not req.metric:
        problems.append("primary metric is missing: name the metric the decision is taken on "
                        f"({', '.join(HISTORY_METRICS)})")
    elif req.metric not in HISTORY_METRICS:
        problems.append(f"primary metric {req.metric!r} has no control history to plan from; "
                        f"use one of {', '.join(HISTORY_METRICS)}")
    if not req.variants:
        problems.append("no variant: name the strategy version(s) to evaluate")
    for slug in (*req.variants, req.control):
        if not isinstance(slug, str) or not SLUG_PATTERN.match(slug):
            problems.append(f"{slug!r} is not a strategy slug")
    if req.control in req.variants:
        problems.append(f"control {req.control!r} is also a variant: nothing to compare")
    if len(set(req.variants)) != len(req.variants):
        problems.append("a variant is named twice")
    if not (isinstance(req.mde_bps, (int, float)) and math.isfinite(req.mde_bps) and req.mde_bps > 0):
        problems.append(f"mde must be a positive number of the metric's unit, got {req.mde_bps!r}")
    if not 0 < req.alpha < 0.5:
        problems.append(f"alpha must be in (0, 0.5), got {req.alpha}")
    if not 0.5 <= req.power < 1:
        problems.append(f"power must be in [0.5, 1), got {req.power}")
    if req.mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}")
    if req.risk not in RISK_LEVELS:
        problems.append(f"risk must be one of {', '.join(RISK_LEVELS)}")
    if req.ci_method not in CI_METHODS:
        problems.append(f"ci_method must be one of {', '.join(CI_METHODS)}")
    cap = req.max_population_share_bp
    if cap is not None and not 0 < cap <= 10000:
        problems.append("max population share must be in (0, 10000] basis points")
    if req.assume_sd_bps is not None and not req.assume_sd_bps > 0:
        problems.append("the assumed sd must be > 0")
    if req.experiment_id is not None and not ID_PATTERN.match(req.experiment_id):
        problems.append(f"experiment id {req.experiment_id!r} is not a valid id")
    if problems:
        raise VagueRequest(problems)
    return DesignRequest(**{**req.__dict__, "principal": principal, "subject": subject})


# ---------------------------------------------------------------------------------------------------------
# Statistics of the plan
# ---------------------------------------------------------------------------------------------------------
def planned_pairs(mde: float, sd: float, alpha: float, power: float, ci_method: str = "always_valid") -> int:
    """Matched pairs one comparison needs to detect ``mde`` with ``power`` under the verdict's interval.

    ``always_valid``: the confidence sequence is tuned where the decision is planned (``expected_samples`` =
    the returned n): iterate n -> the CS power-n tuned at n, which settles in a few steps.
    """
    if ci_method == "fixed_horizon":
        return st.required_sample_size(mde, sd, alpha, power, method="fixed_horizon")
    n = st.required_sample_size(mde, sd, alpha, power, method="always_valid")  # tuned at the fixed-horizon n
    seen: list[int] = []
    while n not in seen and len(seen) < 50:
        seen.append(n)
        n = st.required_sample_size(mde, sd, alpha, power, method="always_valid", n_tune=n)
    cycle = seen[seen.index(n):] if n in seen else [n]
    return min(cycle)  # a rounding 2-cycle: its smaller member meets the power tuned at itself


def rollout_plan(mode: str, risk: str, cap_bp: int | None, k: int) -> dict[str, Any]:
    """Rollout strategy and initial share (spec 13.4): online high/emergency risk -> canary at 1%, otherwise
    stratified at 10%; never above the PoLB cap; shadow runs next to live with no live exposure (share 0)."""
    if mode == "shadow_only":
        return {"envelope_mode": "shadow", "strategy": "shadow", "initial_share_bp": 0,
                "max_population_share_bp": None, "per_variant_share_bp": 0}
    cap = DEFAULT_ONLINE_SHARE_CAP_BP if cap_bp is None else cap_bp
    strategy, share = ("canary", 100) if risk in ("high", "emergency") else ("stratified", 1000)
    total = min(share, cap)
    per_variant = total // k
    if per_variant < 1:
        raise VagueRequest([f"the PoLB cap of {cap} bp cannot give each of {k} variants any traffic"])
    return {"envelope_mode": "online", "strategy": strategy, "initial_share_bp": per_variant * k,
            "max_population_share_bp": cap, "per_variant_share_bp": per_variant}


@dataclass
class Proposal:
    request: DesignRequest
    experiment_id: str
    started_at: datetime
    sd_delta: float
    sd_source: str
    history: FillHistory
    pairing: list[PairingHistory]
    alpha_per_comparison: float
    samples_per_arm: int
    min_samples_for_decision: int
    expected_looks: int | None
    pairs_per_day: float | None
    expected_duration_days: float | None
    rollout: dict[str, Any]
    stop_rules: dict[str, Any]
    monitoring: dict[str, Any]
    assumptions: list[str] = field(default_factory=list)
    duration_at_max_share_days: float | None = None  # limited live ramped to the PoLB cap

    @property
    def variant_ids(self) -> list[str]:
        k = len(self.request.variants)
        return ["variant"] if k == 1 else [f"variant_{i + 1}" for i in range(k)]

    def declaration(self) -> dict[str, Any]:
        """The declaration fields (core, statistics plan, contract sections) plus the ``proposal`` block."""
        req = self.request
        k = len(req.variants)
        decl: dict[str, Any] = {
            "experiment_id": self.experiment_id,
            "principal": req.principal,
            "subject": req.subject,
            "variant_slug": req.variants[0],
            "control_slug": req.control,
            "mode": req.mode,
            "started_at": self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        per_variant_bp = self.rollout["per_variant_share_bp"] or 1000 // k
        treat_bp = per_variant_bp * k
        decl["traffic_split_pct"] = _plain(treat_bp / 100)
        decl["min_samples_for_decision"] = self.min_samples_for_decision
        decl["require_human_signoff"] = True
        decl["ci_method"] = req.ci_method
        if req.ci_method == "always_valid":
            decl["expected_samples"] = self.samples_per_arm
        else:
            decl["planned_max_samples"] = self.samples_per_arm
        decl["mde_bps"] = _plain(req.mde_bps)
        decl["expected_sd_bps"] = _plain(round(self.sd_delta, 6))
        direction = 1 if METRICS[req.metric].better == "higher" else -1  # the objective's sign
        surface: dict[str, Any] = {
            "id": f"{self.experiment_id}-surface",
            "objectives": {"primary": [{"name": req.metric, "weight_bp": 10000 * direction}]},
        }
        if req.markets:
            surface["scope"] = {"population": "markets:" + ",".join(req.markets)}
        decl["eval_surface"] = surface
        polb: dict[str, Any] = {"envelope_mode": self.rollout["envelope_mode"], "max_risk_level": req.risk}
        if req.mode == "limited_live":
            polb["rollout_strategy"] = self.rollout["strategy"]
            polb["max_population_share_bp"] = self.rollout["max_population_share_bp"]
        decl["polb_config"] = polb
        if k > 1:
            variants = {"control": {"slug": req.control, "traffic_share_bp": 10000 - treat_bp}}
            for vid, slug in zip(self.variant_ids, req.variants):
                variants[vid] = {"slug": slug, "traffic_share_bp": per_variant_bp}
            decl["variants"] = variants
        decl["stop_rules"] = self.stop_rules
        decl["proposal"] = self.proposal_block()
        return decl

    def proposal_block(self) -> dict[str, Any]:
        req = self.request
        return {
            "generated_by": "experimenttracker propose",
            "primary_metric": req.metric,
            "mde": _plain(req.mde_bps),
            "alpha": req.alpha,
            "alpha_per_comparison": _plain(round(self.alpha_per_comparison, 8)),
            "power": req.power,
            "comparisons": len(req.variants),
            "samples_per_arm": self.samples_per_arm,
            "samples_total": self.samples_per_arm * (len(req.variants) + 1),
            "ci_method": req.ci_method,
            "looks": ("every evaluation from min_samples_for_decision on (each ~10% growth); always-valid, so "
                      "looking does not spend alpha" if req.ci_method == "always_valid"
                      else "one look, at planned_max_samples"),
            "expected_looks": self.expected_looks,
            "rollout": {k: v for k, v in self.rollout.items() if v is not None},
            "expected_pairs_per_day": None if self.pairs_per_day is None else _plain(round(self.pairs_per_day, 3)),
            "expected_duration_days": None if self.expected_duration_days is None
            else _plain(round(self.expected_duration_days, 2)),
            **({"expected_duration_days_at_max_share": _plain(round(self.duration_at_max_share_days, 2))}
               if self.duration_at_max_share_days is not None else {}),
            "monitoring": self.monitoring,
            "history": {
                "control_fills": self.history.n,
                "control_mean": None if self.history.mean is None else _plain(round(self.history.mean, 6)),
                "control_sd": None if self.history.variance is None else _plain(round(math.sqrt(self.history.variance), 6)),
                "days_spanned": self.history.span_days,
                "markets": list(req.markets) or "all",
                "similar_pairings": [{"experiment_id": p.experiment_id, "pairs": p.n} for p in self.pairing],
            },
            "delta_sd": _plain(round(self.sd_delta, 6)),
            "delta_sd_source": self.sd_source,
            "assumptions": self.assumptions,
        }

    def to_yaml(self) -> str:
        req = self.request
        days = "unknown" if self.expected_duration_days is None else f"{self.expected_duration_days:.1f}"
        header = [
            f"# Draft declaration proposed by `experimenttracker propose` for {', '.join(req.variants)} vs {req.control}.",
            f"# {self.samples_per_arm} matched pairs per arm detect a {req.metric} effect of {_plain(req.mde_bps)} with power "
            f"{req.power:g} at alpha {req.alpha:g} ({req.ci_method}); expected duration {days} days.",
            "# Review every field (and the assumptions in `proposal`) before dropping it into the experiments folder.",
        ]
        body = yaml.safe_dump(self.declaration(), sort_keys=False, default_flow_style=False, width=110)
        return "\n".join(header) + "\n" + body


def _plain(x: float) -> float | int:
    """An integral float as int, so the YAML reads 10 rather than 10.0."""
    return int(x) if float(x).is_integer() else float(x)


def _default_id(variants: Sequence[str], started_at: datetime) -> str:
    base = re.sub(r"[^A-Za-z0-9_.:-]+", "-", variants[0]).strip("-.") or "variant"
    return f"exp_{base}_{started_at:%Y%m%d}"[:128]


def propose_design(req: DesignRequest, history: FillHistory, pairing: Sequence[PairingHistory] = ()) -> Proposal:
    """Plan an experiment from the control's history (pure: no store)."""
    req = validate_request(req)
    k = len(req.variants)
    started_at = req.started_at or datetime.now(timezone.utc).replace(second=0, microsecond=0)
    assumptions: list[str] = []
    pairing = [p for p in pairing if p.n >= 2]
    pooled_n = sum(p.n for p in pairing)
    if req.assume_sd_bps is not None:
        sd, source = float(req.assume_sd_bps), "assumed (--assume-sd)"
        assumptions.append(f"paired delta sd {sd:g} given by the requester, not read from the history")
    elif pooled_n >= MIN_PAIRING_HISTORY:
        sd = math.sqrt(sum(p.sum_sq for p in pairing) / sum(p.n - 1 for p in pairing))
        source = "pairing_history"
        assumptions.append(f"paired delta sd {sd:.4g} pooled within {len(pairing)} earlier experiment(s) against "
                           f"{req.control} ({pooled_n} pairs); the variant's deltas are assumed to vary as theirs did")
    else:
        if history.variance is None or not history.variance > 0:
            raise NoHistory(f"{req.control} has {history.n} live fill(s) with a {req.metric} in scope: too few to "
                            "estimate a variance; widen --history-days/--market or pass --assume-sd")
        sd = math.sqrt(2 * history.variance)
        source = "conservative_independent_arms"
        why = (f"only {pooled_n} paired deltas of earlier experiments against {req.control}"
               if pooled_n else f"no earlier experiment paired against {req.control}")
        assumptions.append(f"{why}: paired delta sd = sqrt(2) x control sd {math.sqrt(history.variance):.4g} = "
                           f"{sd:.4g}, i.e. variant and control outcomes uncorrelated (conservative: pairs on the "
                           "same opportunity are usually positively correlated, which lowers the delta's variance)")
    alpha_k = req.alpha / k
    if k > 1:
        assumptions.append(f"{k} comparisons with the control: alpha {req.alpha:g} split as {alpha_k:.4g} each "
                           "(Bonferroni), family-wise error <= alpha")
    n = planned_pairs(req.mde_bps, sd, alpha_k, req.power, req.ci_method)
    assumptions.append(f"paired deltas roughly normal and independent across pairs; n from the "
                       f"{'confidence sequence tuned at n' if req.ci_method == 'always_valid' else 'one-sample t-test'} "
                       f"at a single look at n (continuous monitoring can only decide earlier)")
    g1 = history.skewness
    skew_floor = 0 if g1 is None else int(math.ceil(st.SKEW_SAMPLES_PER_G1SQ * g1 * g1))
    min_samples = max(st.ALWAYS_VALID_MIN_SAMPLES, min(skew_floor, n))
    min_samples = min(min_samples, n)
    if g1 is not None and skew_floor > st.ALWAYS_VALID_MIN_SAMPLES:
        assumptions.append(f"control {req.metric} skewness {g1:.3g}: no decision before "
                           f"{min(skew_floor, n)} pairs (n >= {st.SKEW_SAMPLES_PER_G1SQ} g1^2)")
    looks = None
    if req.ci_method == "always_valid":
        looks = 1 + max(0, math.ceil(math.log(n / min_samples) / math.log(1 + EVALUATION_GROWTH)))

    rollout = rollout_plan(req.mode, req.risk, req.max_population_share_bp, k)
    rate = history.fills_per_day
    if rate is None or rate <= 0:
        pairs_per_day = None
        assumptions.append("no control fill rate in the history: the duration is unknown")
    elif req.mode == "shadow_only":
        pairs_per_day = rate
        assumptions.append(f"shadow: every live fill of {req.control} in scope gets a shadow fill of each variant "
                           f"(same pair_key): {rate:.4g} pairs/day per variant, the control's rate over "
                           f"{history.span_days} day(s)")
    else:
        share = rollout["per_variant_share_bp"] / 10000
        rest = 1 - rollout["initial_share_bp"] / 10000
        pairs_per_day = rate * min(share, rest)
        assumptions.append(f"limited live: each variant takes {share:.2%} of the {rate:.4g} fills/day {req.control} "
                           f"traded over {history.span_days} day(s); each of its fills pairs with a control fill "
                           "in the caliper")
    duration = None if pairs_per_day is None else n / pairs_per_day
    at_cap = None
    if req.mode == "limited_live" and rate and rate > 0:
        cap = rollout["max_population_share_bp"] / 10000
        at_cap = n / (rate * min(cap / k, 1 - cap)) if 0 < cap < 1 else None
    if duration is not None:
        min_days = max(1, min(7, math.ceil(duration)))
        max_days = min(3650, max(min_days + 1, math.ceil(2 * duration)))
    else:
        min_days, max_days = 1, None
    stop_rules: dict[str, Any] = {
        "min_duration_days": min_days,
        **({"max_duration_days": max_days} if max_days is not None else {}),
        "early_stop_on": ["efficacy", "futility", "harm"],
        "futility": {"no_effect_band": _plain(round(req.mde_bps, 6)), "min_conditional_power_bp": 1000},
    }
    if duration is not None:
        assumptions.append(f"stop rules: at least {min_days} day(s) (a trading week when the plan is longer) and at "
                           f"most {max_days} days (twice the expected duration); futility when the interval sits "
                           f"inside +-mde or conditional power drops below 10%")
    guardrails = [m for m in GUARDRAILS if m != req.metric]
    monitoring = {
        "metrics": [req.metric, *guardrails],
        "check_frequency": ("each evaluation (the sensor re-evaluates at min_samples_for_decision and every 10% "
                            "sample growth); a person reviews daily"),
        "alert_thresholds": {
            "drift_one_sided_alpha": _plain(round(0.025 / k, 8)),
            "drift_margin_bps": 0,
            "min_pairs_per_day": None if pairs_per_day is None else _plain(round(0.5 * pairs_per_day, 3)),
            "stall_after_seconds": STALL_AFTER_SECONDS,
            **({"srm_alpha": 0.001} if req.mode == "limited_live" else {}),
        },
    }
    experiment_id = req.experiment_id or _default_id(req.variants, started_at)
    return Proposal(req, experiment_id, started_at, sd, source, history, list(pairing), alpha_k, n, min_samples,
                    looks, pairs_per_day, duration, rollout, stop_rules, monitoring, assumptions, at_cap)


def propose(store: Any, req: DesignRequest) -> Proposal:
    """Read the control's history in ``store`` (a ``Store``) and plan the experiment (see :func:`propose_design`)."""
    from experimenttracker_pipeline.stages.design.queries import fill_history, pairing_history

    req = validate_request(req)
    since = until = None
    if req.history_days is not None:
        until = req.now_ms if req.now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
        since = until - int(req.history_days * DAY_MS)
    history = fill_history(store, req.control, req.metric, markets=req.markets or None, since_ms=since,
                           until_ms=until)
    pairing = pairing_history(store, req.control, req.metric, mode=req.mode, markets=req.markets or None)
    return propose_design(req, history, pairing)
