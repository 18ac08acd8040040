"""Decisions on the evaluation goal surface (spec 4, 13.3, 14) and stop rules.

Input: per variant, per metric, a confidence interval ``{estimate, ci_95_low, ci_95_high, n}``
of the variant-vs-control comparison (the CI the verdict uses, e.g. the always-valid one).

Hard constraints are judged on the CI, three ways:

* ``holds``      the whole CI satisfies the constraint;
* ``violated``   the whole CI breaks it (the data show the guardrail is breached): harm;
* ``unresolved`` the CI straddles the threshold (or there is no data for the metric).

A variant is a winner only if it wins statistically AND every hard constraint *holds*
("not shown to hold" blocks a winner; "shown violated" additionally triggers the harm stop
rule). Hard constraints never turn into score penalties (spec 14.2). Soft constraints are judged
on the point estimate, as in the spec's scalarisation, and subtract ``penalty_weight_bp / 1e4``
from the score.

Scalarised score = sum(weight_bp / 1e4 * (estimate - neutral)) - soft penalties, so control
scores 0 and the ranking is the spec's up to a constant. Ranking: feasible (all hard hold) before
unresolved before infeasible, then by score; control is the status quo and is always feasible.
The Pareto set is taken over control and every variant without a violated hard constraint,
comparing point estimates oriented by the sign of each objective's weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterable, Mapping, Sequence

from scipy import special

import experimenttracker_pipeline.model.canonical as cj
import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.model.contract import (
    CONTROL,
    METRICS,
    Constraint,
    ExperimentContract,
    format_decimal,
)

# Reason codes (the suffix after ':' is the normalised constraint, e.g. slippage_delta_bps<=5).
HARD_VIOLATED = "EVAL_HARD_CONSTRAINT_VIOLATED"
HARD_UNRESOLVED = "EVAL_HARD_CONSTRAINT_UNRESOLVED"
HARD_NO_DATA = "EVAL_HARD_CONSTRAINT_NO_DATA"
SOFT_VIOLATED = "EVAL_SOFT_CONSTRAINT_VIOLATED"
WINNER_BLOCKED = "EVAL_WINNER_BLOCKED_BY_GUARDRAIL"
INSUFFICIENT = "EXPERIMENT_INSUFFICIENT_SAMPLES"

STOP_EFFICACY = "EVAL_STOP_EFFICACY"
STOP_FUTILITY = "EVAL_STOP_FUTILITY"
STOP_HARM = "EVAL_STOP_HARM"
STOP_MAX_DURATION = "EVAL_STOP_MAX_DURATION"
HELD_MIN_DURATION = "EVAL_EARLY_STOP_HELD_MIN_DURATION"
HELD_GUARDRAIL = "EVAL_EARLY_STOP_HELD_GUARDRAIL"

HOLDS, VIOLATED, UNRESOLVED, NO_DATA = "holds", "violated", "unresolved", "no_data"
FEASIBLE, FEAS_UNRESOLVED, INFEASIBLE = "feasible", "unresolved", "infeasible"
_FEAS_RANK = {FEASIBLE: 0, FEAS_UNRESOLVED: 1, INFEASIBLE: 2}


@dataclass(frozen=True)
class MetricCI:
    estimate: float
    ci_95_low: float
    ci_95_high: float
    n: int = 0
    p_value: float | None = None  # always-valid p-value against the metric's neutral value, when known

    @classmethod
    def of(cls, v: Any) -> "MetricCI":
        """From a mapping or an object with ``estimate, ci_95_low, ci_95_high[, n, p_value]``."""
        if isinstance(v, MetricCI):
            return v
        get = v.get if isinstance(v, Mapping) else (lambda k, d=None: getattr(v, k, d))
        p = get("p_value", None)
        return cls(float(get("estimate")), float(get("ci_95_low")), float(get("ci_95_high")),
                   int(get("n", 0) or 0), None if p is None else float(p))

    def p_value_at(self, neutral: float, alpha: float) -> float:
        """The p-value against ``neutral``: the given one, else the CI read as a Wald interval at level alpha."""
        if self.p_value is not None:
            return self.p_value
        half = (self.ci_95_high - self.ci_95_low) / 2
        if not half > 0:
            return 0.0 if self.estimate != neutral else 1.0
        se = half / float(-special.ndtri(alpha / 2))
        return float(2 * special.ndtr(-abs(self.estimate - neutral) / se))

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.estimate, self.ci_95_low, self.ci_95_high))

    def to_export(self) -> dict[str, int]:
        return {"estimate_micros": cj.to_micros(self.estimate),
                "ci_95_low_micros": cj.to_micros(self.ci_95_low),
                "ci_95_high_micros": cj.to_micros(self.ci_95_high), "n": self.n}


@dataclass(frozen=True)
class ConstraintCheck:
    expr: str
    hard: bool
    status: str  # holds | violated | unresolved | no_data
    reason_code: str | None  # None when the constraint holds
    penalty_bp: int = 0

    def to_export(self) -> dict[str, Any]:
        return {"expr": self.expr, "hard": self.hard, "status": self.status,
                "reason_code": self.reason_code, "penalty_bp": self.penalty_bp}


def check_hard(c: Constraint, ci: MetricCI | None) -> ConstraintCheck:
    """Judge a hard constraint on the CI (see module docstring)."""
    if ci is None or not ci.finite:
        return ConstraintCheck(c.expr, True, NO_DATA, f"{HARD_NO_DATA}:{c.expr}")
    lo, hi, t = ci.ci_95_low, ci.ci_95_high, float(c.threshold)
    if c.op == "<=":
        holds, violated = hi <= t, lo > t
    elif c.op == "<":
        holds, violated = hi < t, lo >= t
    elif c.op == ">=":
        holds, violated = lo >= t, hi < t
    else:  # ">"
        holds, violated = lo > t, hi <= t
    if holds:
        return ConstraintCheck(c.expr, True, HOLDS, None)
    if violated:
        return ConstraintCheck(c.expr, True, VIOLATED, f"{HARD_VIOLATED}:{c.expr}")
    return ConstraintCheck(c.expr, True, UNRESOLVED, f"{HARD_UNRESOLVED}:{c.expr}")


@dataclass(frozen=True)
class VariantDecision:
    variant: str
    stat_verdict: str  # variant_wins | control_wins | inconclusive | insufficient_samples
    verdict: str  # stat_verdict, or guardrail_violated / blocked_by_guardrail
    feasibility: str  # feasible | unresolved | infeasible
    score: float
    penalty_bp: int
    winner: bool
    hard: tuple[ConstraintCheck, ...] = ()
    soft: tuple[ConstraintCheck, ...] = ()
    reason_codes: tuple[str, ...] = ()
    metrics: Mapping[str, MetricCI] = field(default_factory=dict)

    def to_export(self, include_metrics: bool = True) -> dict[str, Any]:
        d = {
            "variant": self.variant, "stat_verdict": self.stat_verdict, "verdict": self.verdict,
            "feasibility": self.feasibility, "score_micros": cj.to_micros(self.score),
            "penalty_bp": self.penalty_bp, "winner": self.winner,
            "hard_constraints": [c.to_export() for c in self.hard],
            "soft_constraints": [c.to_export() for c in self.soft],
            "reason_codes": list(self.reason_codes),
        }
        if include_metrics:
            d["metrics"] = {k: v.to_export() for k, v in sorted(self.metrics.items())}
        return d


@dataclass(frozen=True)
class SurfaceDecision:
    experiment_id: str
    variants: tuple[VariantDecision, ...]  # treatments, in contract order
    ranking: tuple[str, ...]  # control and treatments, best first
    pareto_set: tuple[str, ...]  # sorted ids
    winner: str | None
    multiple_testing: Mapping[str, Any] = field(default_factory=dict)

    @property
    def harm(self) -> bool:
        """True when some variant's CI shows a hard constraint violated."""
        return any(v.feasibility == INFEASIBLE for v in self.variants)

    @property
    def harm_reasons(self) -> tuple[str, ...]:
        return tuple(sorted({c.reason_code for v in self.variants for c in v.hard
                             if c.status == VIOLATED}))

    @property
    def reason_codes(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for v in self.variants:
            for r in v.reason_codes:
                seen.setdefault(r)
        return tuple(seen)

    def variant(self, variant_id: str) -> VariantDecision:
        for v in self.variants:
            if v.variant == variant_id:
                return v
        raise KeyError(variant_id)

    def to_export(self, include_metrics: bool = True) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "winner": self.winner,
                "ranking": list(self.ranking), "pareto_set": list(self.pareto_set),
                "harm": self.harm, "harm_reasons": list(self.harm_reasons),
                "reason_codes": list(self.reason_codes),
                "multiple_testing": _export_family(self.multiple_testing),
                "variants": [v.to_export(include_metrics) for v in self.variants]}


def _export_family(family: Mapping[str, Any]) -> dict[str, Any]:
    """Integers only (the surface export is canonical JSON): p-values in micros."""
    if not family:
        return {}
    return {"correction": family["correction"], "family_size": family["family_size"],
            "alpha_micros": cj.to_micros(family["alpha"]),
            "hypotheses": [{"variant": h["variant"], "metric": h["metric"], "p_value_micros": cj.to_micros(h["p_value"]),
                            "adjusted_p_value_micros": cj.to_micros(h["adjusted_p_value"]), "rejected": h["rejected"],
                            "direction": h["direction"]} for h in family["hypotheses"]]}


def _normalise_outcomes(contract: ExperimentContract,
                        outcomes: Mapping[str, Any]) -> dict[str, dict[str, MetricCI]]:
    treatments = [v.id for v in contract.treatments]
    if outcomes and all(k in METRICS for k in outcomes):
        # metric -> CI: the single-treatment shorthand.
        if len(treatments) != 1:
            raise ValueError("outcomes keyed by metric are only allowed with one treatment variant; "
                             f"key them by variant id ({', '.join(treatments)})")
        outcomes = {treatments[0]: outcomes}
    out: dict[str, dict[str, MetricCI]] = {}
    for vid, per_metric in outcomes.items():
        if vid == CONTROL:
            continue  # control is the reference of every delta
        if vid not in treatments:
            raise ValueError(f"unknown variant {vid!r}; contract declares {', '.join(treatments)}")
        out[vid] = {m: MetricCI.of(ci) for m, ci in (per_metric or {}).items() if ci is not None}
    return out


def family_tests(contract: ExperimentContract, per_variant: Mapping[str, Mapping[str, MetricCI]],
                 alpha: float = 0.05) -> dict[str, Any]:
    """Family-wise test of every (treatment, primary objective) pair: Holm on the always-valid
    p-values against each metric's neutral value, so the chance of any false win or loss across metrics and
    treatments stays <= alpha under continuous monitoring. A pair without data counts with p = 1. A single
    hypothesis needs no correction.

    Each hypothesis reports its p-value, Holm-adjusted p-value, whether it is rejected and its direction
    ("better" / "worse" for the variant, by the objective's sign)."""
    hyps = []
    for v in contract.treatments:
        cis = per_variant.get(v.id, {})
        for o in contract.eval_surface.primary:
            ci = cis.get(o.metric)
            if ci is None or not ci.finite:
                # Still a member of the family (p = 1): shrinking the family while a metric waits for data
                # would test the others at a laxer level than declared.
                hyps.append({"variant": v.id, "metric": o.metric, "p_value": 1.0, "direction": "none"})
                continue
            neutral = float(METRICS[o.metric].neutral)
            up = ci.estimate > neutral
            hyps.append({"variant": v.id, "metric": o.metric, "p_value": ci.p_value_at(neutral, alpha),
                         "direction": "better" if up == (o.weight_bp > 0) else "worse"})
    m = len(hyps)
    adjusted = st.holm_adjust([h["p_value"] for h in hyps]) if m > 1 else [h["p_value"] for h in hyps]
    for h, a in zip(hyps, adjusted):
        h["adjusted_p_value"] = a
        h["rejected"] = bool(a <= alpha)
    return {"correction": "holm" if m > 1 else "none", "family_size": m, "alpha": alpha, "hypotheses": hyps}


def _stat_verdict(contract: ExperimentContract, variant: str, cis: Mapping[str, MetricCI],
                  family: Mapping[str, Any]) -> str:
    prim = contract.eval_surface.primary
    n = min((cis[o.metric].n for o in prim if o.metric in cis), default=0)
    if n < contract.min_samples_for_decision:
        return "insufficient_samples"
    mine = [h for h in family["hypotheses"] if h["variant"] == variant and h["rejected"]]
    if family["family_size"] == 1 and mine:
        # One hypothesis: the CI itself decides (it is the test at level alpha).
        ci = cis[mine[0]["metric"]]
        neutral = float(METRICS[mine[0]["metric"]].neutral)
        if not (ci.ci_95_low > neutral or ci.ci_95_high < neutral):
            mine = []
    better = sum(h["direction"] == "better" for h in mine)
    worse = sum(h["direction"] == "worse" for h in mine)
    # One primary objective improving with none worsening is a win; mixed evidence is not.
    if better and not worse:
        return "variant_wins"
    if worse and not better:
        return "control_wins"
    return "inconclusive"


def objective_weights(contract: ExperimentContract) -> dict[str, float]:
    """The scalarisation weights of the goal surface: ``weight_bp / 1e4`` per objective metric (primary and
    secondary; negative = minimise). The score is ``sum(weight * (value - neutral))``; adaptive allocation ranks
    arms on the same weighted sum of their per-fill outcomes."""
    return {o.metric: o.weight_bp / 10000.0 for o in contract.eval_surface.objectives}


def _score(contract: ExperimentContract, cis: Mapping[str, MetricCI]) -> float:
    s = 0.0
    for metric, weight in objective_weights(contract).items():
        ci = cis.get(metric)
        if ci is not None and math.isfinite(ci.estimate):
            s += weight * (ci.estimate - float(METRICS[metric].neutral))
    return s


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def decide(contract: ExperimentContract, outcomes: Mapping[str, Any], *,
           stat_verdicts: Mapping[str, str] | None = None, alpha: float = 0.05) -> SurfaceDecision:
    """Evaluate every objective and constraint for each variant and pick the winner, if any.

    ``outcomes``: ``{variant_id: {metric: CI}}``, or ``{metric: CI}`` when the contract has one
    treatment. ``stat_verdicts`` optionally overrides the per-variant statistical verdict (e.g.
    the verdict rule's verdict from its chosen CI method); otherwise it is derived from the primary
    objectives' CIs and ``min_samples_for_decision``, with family-wise control (``family_tests``) when there
    are several primary objectives or treatments.
    """
    per_variant = _normalise_outcomes(contract, outcomes)
    family = family_tests(contract, per_variant, alpha)
    es = contract.eval_surface
    decisions: list[VariantDecision] = []
    for v in contract.treatments:
        cis = per_variant.get(v.id, {})
        hard = tuple(check_hard(c, cis.get(c.metric)) for c in es.hard)
        soft_checks = []
        penalty = 0
        for sc in es.soft:
            ci = cis.get(sc.constraint.metric)
            if ci is None or not math.isfinite(ci.estimate):
                soft_checks.append(ConstraintCheck(sc.expr, False, NO_DATA, None))
            elif sc.constraint.holds_at(ci.estimate):
                soft_checks.append(ConstraintCheck(sc.expr, False, HOLDS, None))
            else:
                penalty += sc.penalty_weight_bp
                soft_checks.append(ConstraintCheck(sc.expr, False, VIOLATED,
                                                   f"{SOFT_VIOLATED}:{sc.expr}", sc.penalty_weight_bp))
        if any(c.status == VIOLATED for c in hard):
            feas = INFEASIBLE
        elif all(c.status == HOLDS for c in hard):
            feas = FEASIBLE
        else:
            feas = FEAS_UNRESOLVED
        stat = (stat_verdicts or {}).get(v.id) or _stat_verdict(contract, v.id, cis, family)
        codes = [c.reason_code for c in hard if c.reason_code]
        if feas == INFEASIBLE:
            verdict = "guardrail_violated"
        elif stat == "variant_wins" and feas != FEASIBLE:
            verdict = "blocked_by_guardrail"
            codes.append(WINNER_BLOCKED)
        else:
            verdict = stat
        if stat == "variant_wins" and feas == INFEASIBLE:
            codes.append(WINNER_BLOCKED)
        if stat == "insufficient_samples":
            codes.append(INSUFFICIENT)
        codes += [c.reason_code for c in soft_checks if c.reason_code]
        decisions.append(VariantDecision(
            variant=v.id, stat_verdict=stat, verdict=verdict, feasibility=feas,
            score=_score(contract, cis) - penalty / 10000.0, penalty_bp=penalty,
            winner=verdict == "variant_wins", hard=hard, soft=tuple(soft_checks),
            reason_codes=tuple(codes), metrics=dict(cis)))

    entries = [(CONTROL, FEASIBLE, 0.0)] + [(d.variant, d.feasibility, d.score) for d in decisions]
    ranking = tuple(e[0] for e in sorted(entries, key=lambda e: (_FEAS_RANK[e[1]], -e[2], e[0])))

    objs = es.objectives
    points: dict[str, list[float]] = {CONTROL: [0.0] * len(objs)}
    for d in decisions:
        if d.feasibility == INFEASIBLE:
            continue
        cis = d.metrics
        if all(o.metric in cis and math.isfinite(cis[o.metric].estimate) for o in objs):
            # Orient every objective so that larger is better (negative weight = minimise).
            points[d.variant] = [
                (1 if o.weight_bp > 0 else -1) * (cis[o.metric].estimate - float(METRICS[o.metric].neutral))
                for o in objs]
    pareto = tuple(sorted(k for k, p in points.items()
                          if not any(_dominates(q, p) for j, q in points.items() if j != k)))
    winners = [r for r in ranking if r != CONTROL and next(d for d in decisions if d.variant == r).winner]
    return SurfaceDecision(contract.experiment_id, tuple(decisions), ranking, pareto,
                           winners[0] if winners else None, family)


# -- stop rules ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FiredRule:
    rule: str  # efficacy | futility | harm | max_duration | min_duration | guardrail
    reason_code: str
    action: str  # "stop" or "continue" (an early stop that is being held)
    message: str
    detail: tuple[str, ...] = ()

    def to_report(self, experiment_id: str) -> dict[str, Any]:
        """Fields for an OperationsReport (the report outbox adds report_id, bot_id, topic)."""
        return {"event_type": self.reason_code, "experiment_id": experiment_id, "rule": self.rule,
                "action": self.action, "message": self.message, "detail": list(self.detail)}

    def to_export(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason_code": self.reason_code, "action": self.action,
                "message": self.message, "detail": list(self.detail)}


def _days(elapsed: timedelta | float | int) -> float:
    if isinstance(elapsed, timedelta):
        return elapsed / timedelta(days=1)
    return float(elapsed) / 86400.0  # seconds


def evaluate_stop_rules(contract: ExperimentContract, *, elapsed: timedelta | float,
                        efficacy_boundary_crossed: bool = False, futile: bool = False,
                        harm: bool = False, harm_reasons: Iterable[str] = (),
                        decision: SurfaceDecision | None = None,
                        primary_ci: Any = None,
                        conditional_power_bp: int | None = None) -> list[FiredRule]:
    """Stop rules that fire now, most severe first; an empty list means keep running.

    ``elapsed`` is a timedelta or seconds since ``started_at``. Harm (passed in, or a hard
    constraint shown violated in ``decision``) always stops, whatever the duration or statistics
    (spec 13.3). Efficacy and futility stop only when listed in ``early_stop_on`` and once
    ``min_duration_days`` has passed; before that they are held (action ``continue``, reason
    EVAL_EARLY_STOP_HELD_MIN_DURATION). Efficacy is also held while ``decision`` has no winner
    on the surface (a guardrail not shown to hold). Futility fires when ``futile`` is set, when
    ``conditional_power_bp`` is below the declared minimum, or when the primary CI lies entirely
    inside the declared no-effect band. ``max_duration_days`` stops unconditionally.
    """
    sr = contract.stop_rules
    days = _days(elapsed)
    fired: list[FiredRule] = []
    reasons = list(harm_reasons)
    if decision is not None and decision.harm:
        reasons += [r for r in decision.harm_reasons if r not in reasons]
    if harm or reasons:
        fired.append(FiredRule("harm", STOP_HARM, "stop",
                               "Harm detected: stopping regardless of statistics.", tuple(reasons)))
    min_ok = days >= sr.min_duration_days
    held: list[str] = []

    if efficacy_boundary_crossed and "efficacy" in sr.early_stop_on:
        if decision is not None and decision.winner is None:
            blocked = tuple(sorted({r for v in decision.variants for r in v.reason_codes
                                    if r.startswith((HARD_UNRESOLVED, HARD_NO_DATA, HARD_VIOLATED))}))
            fired.append(FiredRule("guardrail", HELD_GUARDRAIL, "continue",
                                   "Efficacy boundary crossed but no variant wins on the goal "
                                   "surface: a hard constraint is not shown to hold.", blocked))
        elif min_ok:
            fired.append(FiredRule("efficacy", STOP_EFFICACY, "stop",
                                   "Efficacy boundary crossed: the variant is clearly better.",
                                   (decision.winner,) if decision is not None else ()))
        else:
            held.append("efficacy")

    band = sr.no_effect_band
    prim = max(contract.eval_surface.primary, key=lambda o: abs(o.weight_bp))
    neutral = float(METRICS[prim.metric].neutral)
    ci = primary_ci
    if ci is None and decision is not None and len(decision.variants) == 1:
        ci = decision.variants[0].metrics.get(prim.metric)
    why: list[str] = []
    if futile:
        why.append("futile")
    if (conditional_power_bp is not None and sr.min_conditional_power_bp is not None
            and conditional_power_bp < sr.min_conditional_power_bp):
        why.append(f"conditional_power_bp={conditional_power_bp}<{sr.min_conditional_power_bp}")
    if band is not None and ci is not None:
        c = MetricCI.of(ci)
        b = float(band)
        if c.finite and -b < c.ci_95_low - neutral and c.ci_95_high - neutral < b:
            why.append(f"ci_inside_no_effect_band:{prim.metric}+-{format_decimal(band)}")
    if why and "futility" in sr.early_stop_on:
        if min_ok:
            fired.append(FiredRule("futility", STOP_FUTILITY, "stop",
                                   "Futility: no realistic chance of a meaningful effect.", tuple(why)))
        else:
            held.append("futility")

    if sr.max_duration_days is not None and days >= sr.max_duration_days:
        fired.append(FiredRule("max_duration", STOP_MAX_DURATION, "stop",
                               f"Maximum duration of {sr.max_duration_days} days reached.",
                               (f"elapsed_days={days:.2f}",)))
    if held:
        fired.append(FiredRule("min_duration", HELD_MIN_DURATION, "continue",
                               f"Early stop held until the minimum duration of "
                               f"{sr.min_duration_days} days (elapsed {days:.2f}).", tuple(held)))
    if should_stop(fired):
        # Holds only explain why a run continues; once a rule stops it they are noise.
        fired = [f for f in fired if f.action == "stop"]
    return fired


def should_stop(fired: Iterable[FiredRule]) -> bool:
    """True when any fired rule stops the experiment."""
    return any(f.action == "stop" for f in fired)
