"""Experiment contracts: the goal surface, population envelope and governance terms of an experiment.

The contract is the part of an :class:`~experimenttracker_pipeline.model.experiment.Experiment` that approvals
pin. ``contract_sections`` validates the optional sections ``personas``, ``eval_surface``, ``polb_config``,
``variants``, ``eth_constraints``, ``stop_rules``, ``assignment`` and ``adaptive_allocation`` of a declaration and fills defaults derived
from its ``mode`` and ``traffic_split_pct``, so declarations without them keep working; the experiment parser
(``model.experiment.parse_experiment``) validates the core fields and the plans, and collects every problem of
the file into one ``InvalidDeclaration``.

The contract's canonical form (``to_canonical()``) and ``digest`` are what approvals pin. The
canonical form is semantic: key order, list order of set-like lists (objectives, constraints,
personas, ETH lists) and whether a value was declared or defaulted do not change the digest;
``source_file`` is not part of it.

Metrics (all are variant-vs-control comparisons carried by the matched-pair samples):

==================== ======= ====================================================================
name                 neutral meaning
==================== ======= ====================================================================
edge_delta_bps       0       (variant edge - control edge) / control notional * 1e4; higher = better
slippage_delta_bps   0       variant slippage_bps - control slippage_bps; lower = better
fill_quality_delta   0       variant fill_quality - control fill_quality (0..1 scale); higher = better
fill_size_ratio      1       variant size_pusd / control size_pusd; 1 = same size
==================== ======= ====================================================================

"Better" is declared by the sign of an objective's ``weight_bp`` (negative = minimise), as in
spec section 4; the table only documents the usual reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any, Mapping, Sequence

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model import fields as f
from experimenttracker_pipeline.model.plans import StatisticsPlan

SCHEMA = "experimenttracker/experiment-contract/v1"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    neutral: Decimal  # the value that means "no difference between variant and control"
    better: str  # "higher" or "lower": which way the variant improves on control
    description: str


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("edge_delta_bps", "bps", Decimal(0), "higher",
                   "variant minus control edge, bps of control notional (higher is better)"),
        MetricSpec("slippage_delta_bps", "bps", Decimal(0), "lower",
                   "variant minus control slippage (lower is better)"),
        MetricSpec("fill_quality_delta", "ratio", Decimal(0), "higher",
                   "variant minus control fill_quality on the 0..1 scale (higher is better)"),
        MetricSpec("fill_size_ratio", "ratio", Decimal(1), "higher",
                   "variant size_pusd / control size_pusd (1 = same size)"),
    )
}

ENVELOPE_MODES = ("sandbox", "shadow", "online", "degraded")
# Which PoLB envelopes are consistent with the declared mode: shadow_only never touches live
# capital, limited_live always does (degraded = online under reduced operation).
MODE_ENVELOPES = {"shadow_only": ("sandbox", "shadow"), "limited_live": ("online", "degraded")}
MODE_DEFAULT_ENVELOPE = {"shadow_only": "shadow", "limited_live": "online"}
RISK_LEVELS = ("low", "medium", "high", "emergency")
ROLLOUT_STRATEGIES = ("canary", "random", "stratified")
PERSONAS = ("trader", "risk", "governance")
STOP_KINDS = ("efficacy", "futility", "harm")
PRINCIPAL_KINDS = ("desk", "fund", "account", "book", "portfolio", "client", "team", "firm")
SUBJECT_KINDS = ("strategy", "jump", "policy_bundle", "si_agent", "role", "model")
CONTROL = "control"
DEFAULT_SALT = "v1"
DEFAULT_DOMAIN = "finance"  # trading capital is at risk: the spec 18.2 "finance" domain

_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_CONSTRAINT_RE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|=<|=>|<|>|=)\s*"
    r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$"
)
_SUPPORTED_OPS = ("<=", "<", ">=", ">")

# The declaration's contract sections (the core fields and the plans are listed in model.experiment).
CONTRACT_KEYS = frozenset({
    "personas", "eval_surface", "polb_config", "variants", "eth_constraints", "stop_rules",
    "assignment", "adaptive_allocation",
})
# Adaptive allocation (spec 15): what the arms are ranked on, and the default floor per arm.
ALLOCATION_OBJECTIVES = ("primary_metric", "goal_surface")
DEFAULT_ALLOCATION_FLOOR_BP = 500
# Metrics with a per-fill outcome (an arm's fills can be scored on them); fill_size_ratio has none.
PER_FILL_METRICS = ("edge_delta_bps", "slippage_delta_bps", "fill_quality_delta")


# -- contract model --------------------------------------------------------------------------

def format_decimal(d: Decimal) -> str:
    """Shortest plain decimal text of ``d`` (``5.0`` -> ``5``, ``500`` -> ``500``)."""
    s = format(d.normalize(), "f")
    return "0" if s in ("-0", "+0") else s


@dataclass(frozen=True)
class Objective:
    metric: str
    weight_bp: int  # negative weight = minimise (spec 4)

    def to_canonical(self) -> dict[str, Any]:
        return {"name": self.metric, "weight_bp": self.weight_bp}


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # one of <=, <, >=, >
    threshold: Decimal  # exact; at most 6 decimal places so it exports as micros

    @property
    def expr(self) -> str:
        """Normalised expression, e.g. ``slippage_delta_bps<=5``; used in reason codes."""
        return f"{self.metric}{self.op}{format_decimal(self.threshold)}"

    def holds_at(self, value: float) -> bool:
        t = float(self.threshold)
        return {"<=": value <= t, "<": value < t, ">=": value >= t, ">": value > t}[self.op]

    def to_canonical(self) -> dict[str, Any]:
        return {"expr": self.expr, "metric": self.metric, "op": self.op,
                "threshold_micros": int(self.threshold * cj.MICROS)}


@dataclass(frozen=True)
class SoftConstraint:
    constraint: Constraint
    penalty_weight_bp: int  # score penalty (weight/1e4) when the point estimate violates it

    @property
    def expr(self) -> str:
        return self.constraint.expr

    def to_canonical(self) -> dict[str, Any]:
        return {**self.constraint.to_canonical(), "penalty_weight_bp": self.penalty_weight_bp}


@dataclass(frozen=True)
class Scope:
    domain: str = DEFAULT_DOMAIN
    population: str | None = None
    vulnerable_populations: tuple[str, ...] = ()

    def to_canonical(self) -> dict[str, Any]:
        return {"domain": self.domain, "population": self.population,
                "vulnerable_populations": sorted(self.vulnerable_populations)}


@dataclass(frozen=True)
class EvalSurface:
    id: str
    primary: tuple[Objective, ...]
    secondary: tuple[Objective, ...] = ()
    hard: tuple[Constraint, ...] = ()
    soft: tuple[SoftConstraint, ...] = ()
    scope: Scope = Scope()

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self.primary + self.secondary

    def to_canonical(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "objectives": {
                "primary": [o.to_canonical() for o in sorted(self.primary, key=lambda o: o.metric)],
                "secondary": [o.to_canonical() for o in sorted(self.secondary, key=lambda o: o.metric)],
            },
            "constraints": {
                "hard": [c.to_canonical() for c in sorted(self.hard, key=lambda c: c.expr)],
                "soft": [c.to_canonical() for c in sorted(self.soft, key=lambda c: c.expr)],
            },
            "scope": self.scope.to_canonical(),
        }


@dataclass(frozen=True)
class PoLBConfig:
    envelope_mode: str
    mode_name: str
    max_risk_level: str
    rollout_strategy: str
    max_population_share_bp: int
    guarded_by_eth: bool = True

    @property
    def is_online(self) -> bool:
        """True when the variant affects live capital (online or degraded envelope)."""
        return self.envelope_mode in ("online", "degraded")

    def to_canonical(self) -> dict[str, Any]:
        return {
            "envelope_mode": self.envelope_mode, "mode_name": self.mode_name,
            "max_risk_level": self.max_risk_level, "rollout_strategy": self.rollout_strategy,
            "max_population_share_bp": self.max_population_share_bp,
            "guarded_by_eth": self.guarded_by_eth,
        }


@dataclass(frozen=True)
class Variant:
    id: str
    slug: str
    traffic_share_bp: int
    policy: str | None = None

    @property
    def is_control(self) -> bool:
        return self.id == CONTROL

    def to_canonical(self) -> dict[str, Any]:
        d: dict[str, Any] = {"slug": self.slug, "traffic_share_bp": self.traffic_share_bp}
        if self.policy is not None:
            d["policy"] = self.policy
        return d


@dataclass(frozen=True)
class EthConstraints:
    forbid_markets: frozenset[str] = frozenset()
    forbid_principals: frozenset[str] = frozenset()
    forbid_units: frozenset[str] = frozenset()
    # Free-text forbid entries are recorded and shown to governance but cannot be enforced by
    # the assigner; they are kept apart so nobody mistakes them for machine checks.
    forbid_statements: tuple[str, ...] = ()
    require: tuple[str, ...] = ()

    @property
    def enforced(self) -> bool:
        return bool(self.forbid_markets or self.forbid_principals or self.forbid_units)

    def to_canonical(self) -> dict[str, Any]:
        return {
            "forbid": {
                "markets": sorted(self.forbid_markets),
                "principals": sorted(self.forbid_principals),
                "units": sorted(self.forbid_units),
                "statements": sorted(set(self.forbid_statements)),
            },
            "require": sorted(set(self.require)),
        }


@dataclass(frozen=True)
class StopRules:
    min_duration_days: int = 0
    max_duration_days: int | None = None
    early_stop_on: frozenset[str] = frozenset(STOP_KINDS)
    no_effect_band: Decimal | None = None  # |primary effect| below this is not meaningful
    min_conditional_power_bp: int | None = None

    def to_canonical(self) -> dict[str, Any]:
        return {
            "min_duration_days": self.min_duration_days,
            "max_duration_days": self.max_duration_days,
            "early_stop_on": sorted(self.early_stop_on),
            "futility": {
                "no_effect_band_micros": None if self.no_effect_band is None
                else int(self.no_effect_band * cj.MICROS),
                "min_conditional_power_bp": self.min_conditional_power_bp,
            },
        }


@dataclass(frozen=True)
class AdaptiveAllocation:
    """Opt-in to adaptive allocation (limited live only): after each evaluation the pipeline recommends traffic
    shares from the posterior probability that each arm is best on ``objective``, every arm keeping at least
    ``floor_bp``; the router alone applies them. Its analysis uses the logged assignment propensities."""

    objective: str = "primary_metric"  # or "goal_surface": the surface's scalarised score per fill
    floor_bp: int = DEFAULT_ALLOCATION_FLOOR_BP

    def to_canonical(self) -> dict[str, Any]:
        return {"objective": self.objective, "floor_bp": self.floor_bp}


@dataclass(frozen=True)
class ExperimentContract:
    experiment_id: str
    principal: str
    subject: str
    personas: tuple[str, ...]
    variant_slug: str
    control_slug: str
    mode: str
    traffic_split_bp: int
    min_samples_for_decision: int
    auto_promote_on_winning: bool
    require_human_signoff: bool
    started_at: datetime
    caliper_ms: int
    eval_surface: EvalSurface
    polb_config: PoLBConfig
    variants: tuple[Variant, ...]  # control first, then the others sorted by id
    eth_constraints: EthConstraints
    stop_rules: StopRules
    salt: str = DEFAULT_SALT
    # Changing the CI method or the planned looks after approval must change the digest, or the plan
    # could be swapped after peeking.
    statistics_plan: StatisticsPlan = StatisticsPlan()
    adaptive_allocation: AdaptiveAllocation | None = None  # declared opt-in; None = fixed shares
    source_file: str = "<memory>"
    defaults_applied: tuple[str, ...] = field(default=(), compare=False)

    @property
    def subject_kind(self) -> str:
        return self.subject.split(":", 1)[0]

    @property
    def control(self) -> Variant:
        return self.variants[0]

    @property
    def treatments(self) -> tuple[Variant, ...]:
        return self.variants[1:]

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise KeyError(variant_id)

    def to_canonical(self) -> dict[str, Any]:
        """The digest-bound export form (integers only, sorted set-like lists). ``adaptive_allocation`` appears
        only when declared, so the digests of contracts without it are unchanged."""
        out = {
            "schema": SCHEMA,
            "kind": "experiment_contract",
            "id": self.experiment_id,
            **cj.provenance_fields(self.started_at),
            "principal": self.principal,
            "subject": {"kind": self.subject_kind, "id": self.subject},
            "personas": sorted(self.personas),
            "variant_slug": self.variant_slug,
            "control_slug": self.control_slug,
            "mode": self.mode,
            "traffic_split_bp": self.traffic_split_bp,
            "min_samples_for_decision": self.min_samples_for_decision,
            "auto_promote_on_winning": self.auto_promote_on_winning,
            "require_human_signoff": self.require_human_signoff,
            "caliper_ms": self.caliper_ms,
            "eval_surface": self.eval_surface.to_canonical(),
            "polb_config": self.polb_config.to_canonical(),
            "variants": {v.id: v.to_canonical() for v in self.variants},
            "eth_constraints": self.eth_constraints.to_canonical(),
            "stop_rules": self.stop_rules.to_canonical(),
            "statistics_plan": self.statistics_plan.to_canonical(),
            "assignment": {
                "scheme": "sha256(utf8(unit_id:experiment_id:salt))[0:4] big-endian mod 10000",
                "salt": self.salt,
                "variant_order": [v.id for v in self.variants],
            },
        }
        if self.adaptive_allocation is not None:
            out["adaptive_allocation"] = self.adaptive_allocation.to_canonical()
        return out

    @cached_property
    def canonical_bytes(self) -> bytes:
        return cj.canonical_json(self.to_canonical())

    @cached_property
    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical contract; what approvals pin."""
        return cj.digest_bytes(self.canonical_bytes)

    @property
    def binding(self) -> dict[str, str]:
        return {"id": self.experiment_id, "digest": self.digest}

    @property
    def eval_surface_binding(self) -> dict[str, str]:
        return cj.binding(self.eval_surface.id, self.eval_surface.to_canonical())


# -- validation of the contract sections ---------------------------------------------------

def _constraint(err: f.Issues, v: Any, path: str) -> Constraint | None:
    if not isinstance(v, str):
        err.add(path, f"must be a string like \"slippage_delta_bps <= 5\", got {f.describe(v)}")
        return None
    m = _CONSTRAINT_RE.match(v)
    if not m:
        err.add(path, f"cannot parse {v!r}: expected \"<metric> <op> <number>\" with op one of "
                      f"{', '.join(_SUPPORTED_OPS)}, e.g. \"slippage_delta_bps <= 5\"")
        return None
    metric, op, num = m.groups()
    ok = True
    if metric not in METRICS:
        err.add(path, f"unknown metric {metric!r} in {v!r}; known metrics: {', '.join(METRICS)}")
        ok = False
    if op not in _SUPPORTED_OPS:
        err.add(path, f"operator {op!r} in {v!r} is not supported (a confidence interval can "
                      f"show an inequality, never an equality); use one of {', '.join(_SUPPORTED_OPS)}")
        ok = False
    d = Decimal(num)
    if abs(d) > Decimal(f.MAX_ABS_REAL):
        err.add(path, f"threshold in {v[:80]!r} is outside +/-{f.MAX_ABS_REAL:g}")
        ok = False
    elif d * cj.MICROS != (d * cj.MICROS).to_integral_value():
        err.add(path, f"threshold {num} in {v!r} has more than 6 decimal places "
                      "(thresholds are exported as integer micros)")
        ok = False
    return Constraint(metric, op, d) if ok else None


def _objectives(err: f.Issues, v: Any, path: str, required: bool) -> list[Objective]:
    if v is None:
        if required:
            err.add(path, "at least one primary objective is required")
        return []
    if isinstance(v, (str, Mapping)) or not isinstance(v, Sequence):
        err.add(path, f"must be a list of {{name, weight_bp}}, got {f.describe(v)}")
        return []
    if required and not v:
        err.add(path, "at least one primary objective is required")
    out = []
    for i, item in enumerate(v):
        p = f"{path}[{i}]"
        m = f.mapping(err, item, p, ("name", "weight_bp"))
        if m is None:
            continue
        name = m.get("name")
        if name not in METRICS:
            err.add(f"{p}.name", f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
            name = None
        if "weight_bp" not in m:
            msg = "is required (integer basis points, negative = minimise)"
            if "weight" in m:
                msg += "; 'weight' floats are not accepted, use weight_bp"
            err.add(f"{p}.weight_bp", msg)
            continue
        w = f.integer(err, m["weight_bp"], f"{p}.weight_bp", -10000, 10000, "basis points")
        if w == 0:
            err.add(f"{p}.weight_bp", "must not be 0 (drop the objective instead)")
            w = None
        if name is not None and w is not None:
            out.append(Objective(name, w))
    return out


def _eval_surface(err: f.Issues, v: Any, experiment_id: str) -> EvalSurface | None:
    default_id = f"eval:{experiment_id}/v1"
    if v is None:
        return EvalSurface(id=default_id, primary=(Objective("edge_delta_bps", 10000),))
    es = f.mapping(err, v, "eval_surface", ("id", "objectives", "constraints", "scope"))
    if es is None:
        return None
    sid = default_id if es.get("id") is None else f.text(err, es.get("id"), "eval_surface.id")
    obj = f.mapping(err, es.get("objectives"), "eval_surface.objectives", ("primary", "secondary")) or {}
    if es.get("objectives") is None:
        primary = [Objective("edge_delta_bps", 10000)]
    else:
        primary = _objectives(err, obj.get("primary"), "eval_surface.objectives.primary", True)
    secondary = _objectives(err, obj.get("secondary"), "eval_surface.objectives.secondary", False)
    seen: dict[str, str] = {}
    for group, lst in (("primary", primary), ("secondary", secondary)):
        for o in lst:
            if o.metric in seen:
                err.add(f"eval_surface.objectives.{group}",
                        f"metric {o.metric!r} appears more than once (already in {seen[o.metric]})")
            seen[o.metric] = group

    cons = f.mapping(err, es.get("constraints"), "eval_surface.constraints", ("hard", "soft")) or {}
    hard: list[Constraint] = []
    hv = cons.get("hard")
    if hv is not None and (isinstance(hv, (str, Mapping)) or not isinstance(hv, Sequence)):
        err.add("eval_surface.constraints.hard", f"must be a list of strings, got {f.describe(hv)}")
        hv = None
    for i, item in enumerate(hv or []):
        c = _constraint(err, item, f"eval_surface.constraints.hard[{i}]")
        if c is not None:
            if c.expr in {h.expr for h in hard}:
                err.add(f"eval_surface.constraints.hard[{i}]", f"duplicate hard constraint {c.expr!r}")
            else:
                hard.append(c)
    soft: list[SoftConstraint] = []
    sv = cons.get("soft")
    if sv is not None and (isinstance(sv, (str, Mapping)) or not isinstance(sv, Sequence)):
        err.add("eval_surface.constraints.soft", f"must be a list, got {f.describe(sv)}")
        sv = None
    for i, item in enumerate(sv or []):
        p = f"eval_surface.constraints.soft[{i}]"
        penalty: int | None = 10000  # spec 14.2: a bare soft expression has penalty 1.0
        if isinstance(item, Mapping):
            m = f.mapping(err, item, p, ("expr", "penalty_weight_bp"))
            expr = m.get("expr") if m is not None else None
            if m is not None and "penalty_weight_bp" in m:
                penalty = f.integer(err, m["penalty_weight_bp"], f"{p}.penalty_weight_bp", 1, 10_000_000,
                                    "basis points")
            if m is not None and "expr" not in m:
                err.add(f"{p}.expr", "is required")
                continue
        else:
            expr = item
        c = _constraint(err, expr, f"{p}.expr" if isinstance(item, Mapping) else p)
        if c is None or penalty is None:
            continue
        if c.expr in {h.expr for h in hard}:
            # The same expression cannot be both: hard constraints never become soft (spec 14.2).
            err.add(p, f"{c.expr!r} is also a hard constraint; a constraint is either hard or soft")
        elif c.expr in {s.expr for s in soft}:
            err.add(p, f"duplicate soft constraint {c.expr!r}")
        else:
            soft.append(SoftConstraint(c, penalty))

    sc = f.mapping(err, es.get("scope"), "eval_surface.scope",
                   ("domain", "population", "vulnerable_populations")) or {}
    domain = DEFAULT_DOMAIN
    if sc.get("domain") is not None:
        domain = (f.text(err, sc["domain"], "eval_surface.scope.domain") or DEFAULT_DOMAIN).lower()
    population = None
    if sc.get("population") is not None:
        population = f.text(err, sc["population"], "eval_surface.scope.population")
    vulnerable = f.str_list(err, sc.get("vulnerable_populations"), "eval_surface.scope.vulnerable_populations")
    if sid is None:
        return None
    return EvalSurface(sid, tuple(primary), tuple(secondary), tuple(hard), tuple(soft),
                       Scope(domain, population, tuple(sorted(set(vulnerable)))))


def build_contract(err: f.Issues, raw: Mapping[str, Any], core: Mapping[str, Any],
                   statistics_plan: StatisticsPlan | None, defaults: list[str]) -> ExperimentContract | None:
    """Validate the contract sections of the declaration ``raw`` and return its :class:`ExperimentContract`.

    ``core`` holds the declaration's already-validated core fields under the contract's names (None where
    invalid); section defaults derive from them. Problems go to ``err``; None when there is any.
    """
    if raw.get("personas") is None:
        personas: tuple[str, ...] = tuple(sorted(PERSONAS))
        defaults.append("personas")
    else:
        plist = f.str_list(err, raw["personas"], "personas")
        norm = []
        for i, p in enumerate(plist):
            n = p.lower()
            n = n[len("persona:"):] if n.startswith("persona:") else n
            n = n[: -len("_view")] if n.endswith("_view") else n
            if n not in PERSONAS:
                err.add(f"personas[{i}]", f"unknown persona {p!r}; expected one of {', '.join(PERSONAS)}")
            else:
                norm.append(n)
        if not plist:
            err.add("personas", "must name at least one persona to report to")
        personas = tuple(sorted(set(norm)))

    if raw.get("eval_surface") is None:
        defaults.append("eval_surface")
    eval_surface = _eval_surface(err, raw.get("eval_surface"), core["experiment_id"] or "unknown")
    split_bp = core["traffic_split_bp"]
    polb = _polb(err, raw.get("polb_config"), core["mode"], split_bp, defaults)
    variants = _variants(err, raw.get("variants"), core["variant_slug"], core["control_slug"], split_bp, polb,
                         defaults)
    if polb is not None and variants is not None and polb.envelope_mode == "sandbox":
        _sandbox_variants(err, variants)
    eth = _eth(err, raw.get("eth_constraints"), defaults)
    stop = _stop_rules(err, raw.get("stop_rules"), defaults)

    salt = DEFAULT_SALT
    if raw.get("assignment") is None:
        defaults.append("assignment")
    else:
        a = f.mapping(err, raw["assignment"], "assignment", ("salt",))
        if a and "salt" in a:
            salt = f.text(err, a["salt"], "assignment.salt") or salt

    adaptive = _adaptive_allocation(err, raw.get("adaptive_allocation"), core["mode"], polb, variants, eval_surface)

    if err.items or statistics_plan is None:
        return None
    return ExperimentContract(
        **core, personas=personas, eval_surface=eval_surface, polb_config=polb, variants=variants,
        eth_constraints=eth, stop_rules=stop, salt=salt, statistics_plan=statistics_plan,
        adaptive_allocation=adaptive, source_file=err.file, defaults_applied=tuple(defaults))


def _adaptive_allocation(err: f.Issues, v: Any, mode: str | None, polb: PoLBConfig | None,
                         variants: tuple[Variant, ...] | None,
                         surface: EvalSurface | None) -> AdaptiveAllocation | None:
    """The declared opt-in, or None. Only a limited_live experiment in an online/degraded envelope adapts its
    traffic; the floors must fit in the population and, for the treatments, under the PoLB cap."""
    if v is None:
        return None
    path = "adaptive_allocation"
    m = f.mapping(err, v, path, ("objective", "floor_bp"))
    if m is None:
        return None
    objective = "primary_metric"
    if m.get("objective") is not None:
        objective = f.enum(err, m["objective"], f"{path}.objective", ALLOCATION_OBJECTIVES)
    floor_bp: int | None = DEFAULT_ALLOCATION_FLOOR_BP
    if m.get("floor_bp") is not None:
        # Every logged propensity stays >= the floor: 0 would let an arm starve and break the IPW/AIPW analysis.
        floor_bp = f.integer(err, m["floor_bp"], f"{path}.floor_bp", 1, 5000, "basis points")
    ok = objective is not None and floor_bp is not None
    if mode is not None and mode != "limited_live":
        err.add(path, f"only a limited_live experiment can adapt its traffic; this one is {mode} (no live traffic "
                      "to allocate)")
        ok = False
    elif polb is not None and not polb.is_online:
        err.add(path, f"needs an online or degraded PoLB envelope; polb_config.envelope_mode is {polb.envelope_mode}")
        ok = False
    if surface is not None and objective is not None:
        metrics = ([o.metric for o in surface.primary] if objective == "primary_metric"
                   else [o.metric for o in surface.objectives])
        if objective == "primary_metric" and len(metrics) > 1:
            err.add(f"{path}.objective", f"primary_metric is ambiguous with {len(metrics)} primary metrics "
                                         f"({', '.join(metrics)}); declare objective: goal_surface")
            ok = False
        missing = [x for x in metrics if x not in PER_FILL_METRICS]
        if missing:
            err.add(f"{path}.objective", f"{objective} uses {', '.join(missing)}, which has no per-fill outcome to "
                                         f"allocate on (per-fill metrics: {', '.join(PER_FILL_METRICS)})")
            ok = False
    if variants is not None and floor_bp is not None:
        k, treatments = len(variants), len(variants) - 1
        if floor_bp * k > 10_000:
            err.add(f"{path}.floor_bp", f"{floor_bp} bp for each of {k} arms exceeds the whole population "
                                        "(10000 bp)")
            ok = False
        elif polb is not None and floor_bp * treatments > polb.max_population_share_bp:
            err.add(f"{path}.floor_bp", f"{floor_bp} bp for each of {treatments} treatment(s) exceeds "
                                        f"polb_config.max_population_share_bp {polb.max_population_share_bp}: "
                                        "lower the floor or raise the cap")
            ok = False
    return AdaptiveAllocation(objective, floor_bp) if ok else None


def _polb(err: f.Issues, v: Any, mode: str | None, split_bp: int | None,
          defaults: list[str]) -> PoLBConfig | None:
    if v is None:
        defaults.append("polb_config")
    m = f.mapping(err, v, "polb_config", ("envelope_mode", "mode_name", "max_risk_level",
                                          "rollout_strategy", "max_population_share_bp",
                                          "guarded_by_eth"))
    if m is None:
        return None
    env = MODE_DEFAULT_ENVELOPE.get(mode or "")
    if "envelope_mode" in m:
        env = f.enum(err, m["envelope_mode"], "polb_config.envelope_mode", ENVELOPE_MODES)
        if env and mode and env not in MODE_ENVELOPES[mode]:
            err.add("polb_config.envelope_mode",
                    f"{env!r} contradicts mode {mode!r} (allowed: {', '.join(MODE_ENVELOPES[mode])})")
            env = None
    mode_name = (mode or "").upper()
    if "mode_name" in m:
        mode_name = f.text(err, m["mode_name"], "polb_config.mode_name") or mode_name
    risk = "high"  # no cap beyond the approval path unless declared lower
    if "max_risk_level" in m:
        risk = f.enum(err, m["max_risk_level"], "polb_config.max_risk_level", RISK_LEVELS)
    rollout = "random"
    if "rollout_strategy" in m:
        rollout = f.enum(err, m["rollout_strategy"], "polb_config.rollout_strategy", ROLLOUT_STRATEGIES)
    share = split_bp
    if "max_population_share_bp" in m:
        share = f.integer(err, m["max_population_share_bp"], "polb_config.max_population_share_bp",
                          0, 10000, "basis points")
    guarded = True
    if "guarded_by_eth" in m:
        guarded = f.boolean(err, m["guarded_by_eth"], "polb_config.guarded_by_eth")
    if None in (env, risk, rollout, share, guarded):
        return None
    return PoLBConfig(env, mode_name, risk, rollout, share, guarded)


def _sandbox_variants(err: f.Issues, variants: tuple[Variant, ...]) -> None:
    """A sandbox experiment values one candidate policy from the control's logs: exactly one treatment, naming
    the policy as fill reports name it in ``candidate_propensities``."""
    treatments = [x for x in variants if not x.is_control]
    if len(treatments) != 1:
        err.add("variants", f"a sandbox experiment evaluates one candidate policy; {len(treatments)} treatments declared")
        return
    policy = treatments[0].policy
    if policy is None or not _ID_RE.fullmatch(policy):
        err.add(f"variants.{treatments[0].id}.policy",
                "a sandbox experiment names its candidate policy, as in the fills' candidate_propensities "
                "([a-z][a-z0-9_-]{0,63})")


def _variants(err: f.Issues, v: Any, variant_slug: str | None, control_slug: str | None,
              split_bp: int | None, polb: PoLBConfig | None,
              defaults: list[str]) -> tuple[Variant, ...] | None:
    if v is None:
        defaults.append("variants")
        if split_bp is None or not variant_slug or not control_slug:
            return None
        out = (Variant(CONTROL, control_slug, 10000 - split_bp), Variant("variant", variant_slug, split_bp))
    else:
        if not isinstance(v, Mapping):
            err.add("variants", f"must be a mapping of variant id -> {{slug, traffic_share_bp}}, "
                                f"got {f.describe(v)}")
            return None
        if CONTROL not in v:
            err.add("variants", "must declare a 'control' variant")
        non_control = [k for k in v if k != CONTROL]
        if not non_control:
            err.add("variants", "must declare at least one variant besides 'control'")
        items: list[Variant] = []
        ok = True
        for vid, spec in v.items():
            p = f"variants.{vid}"
            if not isinstance(vid, str) or not _ID_RE.fullmatch(vid):
                err.add(p, "variant id must match [a-z][a-z0-9_-]{0,63}")
                ok = False
                continue
            m = f.mapping(err, spec, p, ("slug", "policy", "traffic_share_bp"))
            if m is None:
                ok = False
                continue
            if "traffic_share_bp" not in m:
                msg = "is required (integer basis points; shares sum to 10000)"
                if "traffic_share" in m:
                    msg += "; 'traffic_share' floats are not accepted"
                err.add(f"{p}.traffic_share_bp", msg)
                ok = False
                continue
            share = f.integer(err, m["traffic_share_bp"], f"{p}.traffic_share_bp", 0, 10000, "basis points")
            if vid == CONTROL:
                default_slug = control_slug
            else:
                default_slug = variant_slug if len(non_control) == 1 else None
            slug = m.get("slug", default_slug)
            if slug is None:
                err.add(f"{p}.slug", "is required when several variants are declared")
                ok = False
                continue
            slug = f.text(err, slug, f"{p}.slug")
            policy = None
            if m.get("policy") is not None:
                policy = f.text(err, m["policy"], f"{p}.policy")
            if vid == CONTROL and slug and control_slug and slug != control_slug:
                err.add(f"{p}.slug", f"control slug {slug!r} differs from control_slug {control_slug!r}")
                ok = False
            if share is None or slug is None:
                ok = False
                continue
            items.append(Variant(vid, slug, share, policy))
        if not ok or CONTROL not in v or not non_control:
            return None
        slugs = [x.slug for x in items]
        for s in sorted({s for s in slugs if slugs.count(s) > 1}):
            err.add("variants", f"slug {s!r} is used by more than one variant")
        if variant_slug and variant_slug not in [x.slug for x in items if not x.is_control]:
            err.add("variants", f"no variant has the declared variant_slug {variant_slug!r}")
        total = sum(x.traffic_share_bp for x in items)
        if total != 10000:
            err.add("variants", "traffic_share_bp must sum to 10000, got "
                    + " + ".join(f"{x.id}={x.traffic_share_bp}" for x in items) + f" = {total}")
            return None
        treat = total - next(x.traffic_share_bp for x in items if x.is_control)
        if split_bp is not None and treat != split_bp:
            # The sample-ratio check uses traffic_split_pct: the two must agree.
            err.add("variants", f"non-control traffic_share_bp sum {treat} differs from "
                                f"traffic_split_pct {split_bp / 100:g} ({split_bp} bp); "
                                f"set traffic_split_pct: {treat / 100:g}")
        out = tuple([x for x in items if x.is_control] + sorted((x for x in items if not x.is_control),
                                                               key=lambda x: x.id))
    if polb is not None:
        treat = sum(x.traffic_share_bp for x in out if not x.is_control)
        if treat > polb.max_population_share_bp:
            err.add("polb_config.max_population_share_bp",
                    f"{polb.max_population_share_bp} bp is below the {treat} bp the variants receive "
                    "(an experiment must never exceed its stated population share)")
    return out


def _eth(err: f.Issues, v: Any, defaults: list[str]) -> EthConstraints:
    if v is None:
        defaults.append("eth_constraints")
        return EthConstraints()
    m = f.mapping(err, v, "eth_constraints", ("forbid", "require")) or {}
    markets, principals, units, statements = set(), set(), set(), []
    for i, item in enumerate(f.str_list(err, m.get("forbid"), "eth_constraints.forbid")):
        kind, _, rest = item.partition(":")
        target = {"market": markets, "principal": principals, "unit": units}.get(kind)
        if target is not None:
            if not rest.strip():
                err.add(f"eth_constraints.forbid[{i}]", f"{item!r} names no {kind}")
            else:
                target.add(rest.strip())
        elif " " not in item and ":" in item:
            err.add(f"eth_constraints.forbid[{i}]",
                    f"unknown forbid kind {kind!r} in {item!r}; enforced kinds are market:<id>, "
                    "principal:<id>, unit:<id> (anything else must be a plain statement)")
        else:
            statements.append(item)
    require = f.str_list(err, m.get("require"), "eth_constraints.require")
    return EthConstraints(frozenset(markets), frozenset(principals), frozenset(units),
                          tuple(statements), tuple(require))


def _stop_rules(err: f.Issues, v: Any, defaults: list[str]) -> StopRules:
    if v is None:
        defaults.append("stop_rules")
        return StopRules()
    m = f.mapping(err, v, "stop_rules", ("min_duration_days", "max_duration_days", "early_stop_on",
                                         "futility")) or {}
    lo = 0
    if m.get("min_duration_days") is not None:
        lo = f.integer(err, m["min_duration_days"], "stop_rules.min_duration_days", 0, 3650, "days")
    hi = None
    if m.get("max_duration_days") is not None:
        hi = f.integer(err, m["max_duration_days"], "stop_rules.max_duration_days", 1, 3650, "days")
    if lo is not None and hi is not None and lo > hi:
        err.add("stop_rules.max_duration_days", f"{hi} is below min_duration_days {lo}")
    early = frozenset(STOP_KINDS)
    if "early_stop_on" in m:
        lst = f.str_list(err, m["early_stop_on"], "stop_rules.early_stop_on")
        for i, k in enumerate(lst):
            if k not in STOP_KINDS:
                err.add(f"stop_rules.early_stop_on[{i}]", f"unknown stop rule {k!r}; expected "
                                                          f"{', '.join(STOP_KINDS)}")
        early = frozenset(k for k in lst if k in STOP_KINDS)
        if "harm" not in early:
            err.add("stop_rules.early_stop_on", "must include 'harm': a harm stop overrides "
                                                "statistics and cannot be switched off (spec 13.3)")
    band = None
    power = None
    futility = f.mapping(err, m.get("futility"), "stop_rules.futility",
                         ("no_effect_band", "min_conditional_power_bp")) or {}
    if futility.get("no_effect_band") is not None:
        b = futility["no_effect_band"]
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            err.add("stop_rules.futility.no_effect_band", f"must be a number, got {f.describe(b)}")
        else:
            band = Decimal(repr(b)) if isinstance(b, float) else Decimal(b)
            if (not band.is_finite() or band <= 0 or band > Decimal(f.MAX_ABS_REAL)
                    or band * cj.MICROS != (band * cj.MICROS).to_integral_value()):
                err.add("stop_rules.futility.no_effect_band",
                        f"must be > 0 with at most 6 decimal places, got {b}")
                band = None
    if futility.get("min_conditional_power_bp") is not None:
        power = f.integer(err, futility["min_conditional_power_bp"], "stop_rules.futility.min_conditional_power_bp",
                          1, 10000, "basis points")
    return StopRules(lo if lo is not None else 0, hi, early, band, power)
