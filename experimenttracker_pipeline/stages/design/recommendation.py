"""The allocation recommendation of one limited-live experiment, from its fills in the store, and the
``EXPERIMENT_ALLOCATION_RECOMMENDED`` OperationsReport that carries it to the router.

Each arm's statistics are the primary metric over the arm's live fills since the experiment started (per fill,
e.g. edge in bps of notional); the cap is the contract's PoLB ``max_population_share_bp``. One report per sample
count: asking again before new fills arrive emits nothing new.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

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
from experimenttracker_pipeline.stages.design.queries import arm_outcomes
from experimenttracker_pipeline.store import Store

__all__ = ["AllocationRefused", "ExperimentAllocation", "recommend_for_experiment"]


class AllocationRefused(ValueError):
    """The experiment cannot take an allocation recommendation (unknown, shadow, metric without fill history)."""


@dataclass
class ExperimentAllocation:
    experiment_id: str
    recommendation: AllocationRecommendation
    arms: dict[str, dict[str, Any]]  # variant id -> slug, n, mean, declared_share_bp, recommended_share_bp
    payload: dict[str, Any]
    report: dict[str, Any] | None  # the emitted report, None when not emitted (or already emitted)


def recommend_for_experiment(store: Store, experiment_id: str, *, floor: float = DEFAULT_FLOOR,
                             emit: bool = False) -> ExperimentAllocation:
    row = experiment_row(store, experiment_id)
    if row is None:
        raise AllocationRefused(f"no such experiment: {experiment_id}")
    experiment = experiment_from_row(row)
    contract = experiment.contract
    if not contract.polb_config.is_online:
        raise AllocationRefused(f"{experiment_id} is {contract.mode} ({contract.polb_config.envelope_mode} envelope): "
                                "no live traffic to allocate")
    objective = contract.eval_surface.primary[0]
    if objective.metric not in HISTORY_METRICS:
        raise AllocationRefused(f"primary metric {objective.metric} has no per-fill outcome to allocate on")
    slugs = {v.id: v.slug for v in contract.variants}
    stats = arm_outcomes(store, list(slugs.values()), objective.metric, since_ms=experiment.started_at_ms,
                         experiment_id=experiment_id)
    arms = []
    for vid, slug in slugs.items():
        n, mean, ss = stats.get(slug, (0, 0.0, 0.0))
        arms.append(ArmStats(vid, n, mean, ss / (n - 1) if n > 1 else 0.0))
    total = sum(a.n for a in arms)
    seed = int.from_bytes(hashlib.sha256(f"{experiment_id}:{total}".encode()).digest()[:4], "big")
    try:
        rec = recommend_allocation(arms, control=contract.control.id, cap_bp=contract.polb_config.max_population_share_bp,
                                   floor=floor, higher_is_better=objective.weight_bp > 0, seed=seed)
    except ValueError as exc:
        raise AllocationRefused(f"{experiment_id}: {exc}") from exc
    by_arm = {a.arm: {"slug": slugs[a.arm], "n": a.n, "mean": a.mean,
                      "declared_share_bp": contract.variant(a.arm).traffic_share_bp,
                      "recommended_share_bp": rec.shares_bp[a.arm]} for a in arms}
    payload = {**rec.to_payload(), "experiment_id": experiment_id, "primary_metric": objective.metric,
               "samples": total, "arms": by_arm}
    report = None
    if emit:
        with store.begin() as conn:
            report = store.emit_report(conn, event_type=EXPERIMENT_ALLOCATION_RECOMMENDED, severity="INFO",
                                       dedupe_key=f"{EXPERIMENT_ALLOCATION_RECOMMENDED}:{experiment_id}:{total}",
                                       experiment_id=experiment_id, topic=OPERATIONS_TOPIC, payload=payload)
    return ExperimentAllocation(experiment_id, rec, by_arm, payload, report)
