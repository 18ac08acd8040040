"""The allocation recommendation of one limited-live experiment, from its fills in the store, and the
``EXPERIMENT_ALLOCATION_RECOMMENDED`` OperationsReport that carries it to the router.

Each arm's statistics are the declared objective over the arm's live fills since the experiment started: the
primary metric per fill (e.g. edge in bps of notional), or, for ``adaptive_allocation: {objective: goal_surface}``,
the goal surface's scalarised score per fill (``surface.objective_weights``: the weighted sum of the objectives'
per-fill values). Fills in ETH-forbidden markets are left out: those units are forced to control whatever the
shares say, so the shares are of the eligible units. The cap is the contract's PoLB ``max_population_share_bp``,
the floor the declared ``floor_bp`` (default 5%).

One report per sample count: the pass emits after each evaluation, keyed by the evaluation's sample count
(``recommend_after_evaluation``); `experimenttracker allocate --emit` keys by the arms' fill count. Asking again
for the same count emits nothing new.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.design.allocation import (
    DEFAULT_FLOOR,
    EXPERIMENT_ALLOCATION_RECOMMENDED,
    AllocationRecommendation,
    ArmStats,
    recommend_allocation,
)
from experimenttracker_pipeline.stages.design.history import HISTORY_METRICS
from experimenttracker_pipeline.stages.design.queries import arm_outcomes, latest_allocation_report
from experimenttracker_pipeline.stages.verdict.surface import objective_weights
from experimenttracker_pipeline.store import Store

__all__ = ["AllocationRefused", "ExperimentAllocation", "recommend_for_experiment", "recommend_after_evaluation",
           "latest_allocation", "allocation_view", "allocation_markdown"]


class AllocationRefused(ValueError):
    """The experiment cannot take an allocation recommendation (unknown, shadow, metric without fill history)."""


@dataclass
class ExperimentAllocation:
    experiment_id: str
    recommendation: AllocationRecommendation
    arms: dict[str, dict[str, Any]]  # variant id -> slug, n, mean, declared_share_bp, recommended_share_bp
    payload: dict[str, Any]
    report: dict[str, Any] | None  # the emitted report, None when not emitted (or already emitted)


def recommend_for_experiment(store: Store, experiment_id: str, *, floor: float | None = None, emit: bool = False,
                             evaluation_samples: int | None = None) -> ExperimentAllocation:
    """The recommendation of one limited-live experiment (module docstring). ``floor`` defaults to the declared
    ``adaptive_allocation.floor_bp`` (5% when not declared). With ``emit`` the report is written once per
    ``evaluation_samples`` when given (the pass), else once per fill count."""
    row = experiment_row(store, experiment_id)
    if row is None:
        raise AllocationRefused(f"no such experiment: {experiment_id}")
    # A comparison of an A/B/n experiment shares its traffic with the other arms: the recommendation is its
    # experiment's, over every arm.
    experiment = experiment_from_row(row).governing
    experiment_id = experiment.experiment_id
    contract = experiment.contract
    if not contract.polb_config.is_online:
        raise AllocationRefused(f"{experiment_id} is {contract.mode} ({contract.polb_config.envelope_mode} envelope): "
                                "no live traffic to allocate")
    declared = contract.adaptive_allocation
    if floor is None:
        floor = declared.floor_bp / 10_000 if declared is not None else DEFAULT_FLOOR
    slugs = {v.id: v.slug for v in contract.variants}
    scope = {"since_ms": experiment.started_at_ms, "experiment_id": experiment_id,
             "exclude_markets": sorted(contract.eth_constraints.forbid_markets)}
    if declared is not None and declared.objective == "goal_surface":
        weights = objective_weights(contract)
        objective, metric, higher_is_better = "goal_surface", None, True  # the weights carry each metric's sign
        stats = arm_outcomes(store, list(slugs.values()), weights=weights, **scope)
    else:
        primary = contract.eval_surface.primary[0]
        if primary.metric not in HISTORY_METRICS:
            raise AllocationRefused(f"primary metric {primary.metric} has no per-fill outcome to allocate on")
        objective, metric, higher_is_better, weights = "primary_metric", primary.metric, primary.weight_bp > 0, None
        stats = arm_outcomes(store, list(slugs.values()), primary.metric, **scope)
    arms = []
    for vid, slug in slugs.items():
        n, mean, ss = stats.get(slug, (0, 0.0, 0.0))
        arms.append(ArmStats(vid, n, mean, ss / (n - 1) if n > 1 else 0.0))
    total = sum(a.n for a in arms)
    seed = int.from_bytes(hashlib.sha256(f"{experiment_id}:{total}".encode()).digest()[:4], "big")
    try:
        rec = recommend_allocation(arms, control=contract.control.id, cap_bp=contract.polb_config.max_population_share_bp,
                                   floor=floor, higher_is_better=higher_is_better, seed=seed)
    except ValueError as exc:
        raise AllocationRefused(f"{experiment_id}: {exc}") from exc
    by_arm = {a.arm: {"slug": slugs[a.arm], "n": a.n, "mean": a.mean,
                      "declared_share_bp": contract.variant(a.arm).traffic_share_bp,
                      "recommended_share_bp": rec.shares_bp[a.arm]} for a in arms}
    payload = {**rec.to_payload(), "experiment_id": experiment_id, "primary_metric": metric or
               contract.eval_surface.primary[0].metric, "objective": objective, "samples": total, "arms": by_arm,
               "declared": declared is not None,
               "eth_forced_control_markets": scope["exclude_markets"]}
    if weights:
        payload["objective_weights"] = dict(sorted(weights.items()))
    if evaluation_samples is not None:
        payload["evaluation_samples"] = int(evaluation_samples)
    report = None
    if emit:
        key = (f"{EXPERIMENT_ALLOCATION_RECOMMENDED}:{experiment_id}:evaluation:{int(evaluation_samples)}"
               if evaluation_samples is not None else f"{EXPERIMENT_ALLOCATION_RECOMMENDED}:{experiment_id}:{total}")
        with store.begin() as conn:
            report = store.emit_report(conn, event_type=EXPERIMENT_ALLOCATION_RECOMMENDED, severity="INFO",
                                       dedupe_key=key, experiment_id=experiment_id, topic=OPERATIONS_TOPIC,
                                       payload=payload)
    return ExperimentAllocation(experiment_id, rec, by_arm, payload, report)


def _declares(store: Store, experiment_id: str) -> bool:
    row = experiment_row(store, experiment_id)
    return row is not None and experiment_from_row(row).contract.adaptive_allocation is not None


def recommend_after_evaluation(store: Store, experiment_id: str, samples: int) -> ExperimentAllocation | None:
    """The pass's step after an evaluation: for an experiment that declares ``adaptive_allocation``, recommend and
    emit once for this evaluation's sample count; None for the others. After a comparison's evaluation, its A/B/n
    experiment's recommendation (over every arm)."""
    if not _declares(store, experiment_id):
        return None
    return recommend_for_experiment(store, experiment_id, emit=True, evaluation_samples=samples)


def latest_allocation(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """The newest emitted recommendation of an experiment that declares adaptive allocation, as shown by `status`
    and the UI (``allocation_view``); None for the others or before the first one."""
    if not _declares(store, experiment_id):
        return None
    row = experiment_row(store, experiment_id)
    payload = latest_allocation_report(store, row.get("parent_experiment_id") or experiment_id)
    return allocation_view(payload) if payload is not None else None


def allocation_view(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The shown form of an EXPERIMENT_ALLOCATION_RECOMMENDED payload: per arm slug, n, mean, declared and
    recommended share and the probability of being best, with the bounds and what the shares apply to."""
    prob = payload.get("prob_best") or {}
    arms = {arm: {"slug": a.get("slug"), "n": a.get("n"), "mean": a.get("mean"),
                  "declared_share_bp": a.get("declared_share_bp"), "recommended_share_bp": a.get("recommended_share_bp"),
                  "prob_best": prob.get(arm)} for arm, a in (payload.get("arms") or {}).items()}
    return {"report_id": payload.get("report_id"), "objective": payload.get("objective", "primary_metric"),
            "primary_metric": payload.get("primary_metric"), "evaluation_samples": payload.get("evaluation_samples"),
            "fills": payload.get("samples"), "floor_bp": payload.get("floor_bp"),
            "max_population_share_bp": payload.get("max_population_share_bp"), "control": payload.get("control"),
            "applies_to": payload.get("applies_to"), "applied_by": payload.get("applied_by"), "arms": arms}


def allocation_markdown(view: Mapping[str, Any]) -> str:
    """A table of the recommendation per arm, and its bounds, for the experiment's asset page."""
    rows = [f"| {arm} | {a['slug']} | {a['n']} | {_num(a['mean'])} | {a['declared_share_bp']} | "
            f"{a['recommended_share_bp']} | {_num(a['prob_best'], 3)} |" for arm, a in view["arms"].items()]
    return ("| arm | slug | n | mean | declared bp | recommended bp | P(best) |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + f"\n\nObjective {view['objective']}; floor {view['floor_bp']} bp per arm, treatments capped at "
              f"{view['max_population_share_bp']} bp (PoLB); applies to {view['applies_to']}; applied by the "
              f"{view['applied_by']} only. Report {view['report_id']} after the evaluation at "
              f"{view['evaluation_samples']} samples.")


def _num(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"
