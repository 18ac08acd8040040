"""Causal estimates of one experiment: IPW/AIPW on limited-live fills, segment effects (harmed segments) for both modes;
for a limited-live experiment that declares adaptive allocation, the effects from the logged assignment propensities
(``causal.adaptive.adaptive_analysis``) are the verdict's basis."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.causal_effects.queries import (
    arm_fills,
    experiment_fills,
    insert_causal,
    sample_deltas_with_covariates,
)
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.samples.queries import sample_count

log = logging.getLogger(__name__)

CAUSAL_SEED = 20260505  # fixed and recorded in every result, so re-running an evaluation reproduces it
CAUSAL_INSUFFICIENT_DATA = "CAUSAL_INSUFFICIENT_DATA"
MIN_CAUSAL_ROWS = 20


def _covariate_frame(rows: list[dict[str, Any]]):
    import pandas as pd

    frame = pd.DataFrame(rows)
    covariates = pd.json_normalize([json.loads(r.get("covariates_json") or "{}") for r in rows]) if rows else pd.DataFrame()
    names = sorted(covariates.columns)
    if names:
        frame = pd.concat([frame.reset_index(drop=True), covariates[names].reset_index(drop=True)], axis=1)
    return frame, names


@dataclass
class CausalRun:
    experiment_id: str
    causal_id: int
    result: dict[str, Any]


def compute_causal(store: Store, experiment_id: str) -> CausalRun:
    """Causal estimates of one experiment: IPW/AIPW on the live fills of a limited-live experiment (logged or
    estimated propensities), segment effects with Holm-corrected CIs (harmed segments) for both modes."""
    from experimenttracker_pipeline.causal import analyse_experiment

    exp = experiment_row(store, experiment_id)
    if exp is None:
        raise KeyError(f"experiment {experiment_id!r} is not registered")
    experiment = experiment_from_row(exp)
    plan = experiment.causal
    samples = sample_count(store, experiment_id)
    adaptive = experiment.mode == "limited_live" and experiment.contract.adaptive_allocation is not None
    if experiment.mode == "limited_live":
        rows = experiment_fills(store, exp)
        frame, covariates = _covariate_frame(rows)
        arms_present = len(rows) >= MIN_CAUSAL_ROWS and 0 < sum(r["treatment"] for r in rows) < len(rows)
        if arms_present:
            if adaptive:
                # Under adaptive allocation the logged propensity is that of the assigned arm among all arms, not
                # P(variant): it feeds the adaptive analysis below; this two-arm analysis (segments, harm) estimates
                # its own propensity.
                frame = frame.drop(columns=["propensity"])
            else:
                frame["propensity"] = frame["propensity"].astype(float)
            instrument = plan.instrument if plan.instrument in covariates else None
            if plan.instrument and instrument is None:
                log.warning("%s: declared instrument %r is not a covariate of its fills", experiment_id, plan.instrument)
            result = analyse_experiment(frame, [c for c in covariates if c != instrument], mode="limited_live",
                                        seed=CAUSAL_SEED, harm_margin_bps=plan.harm_margin_bps,
                                        instrument=instrument).to_dict()
        fills = len(rows)
    else:
        rows = sample_deltas_with_covariates(store, experiment_id)
        frame, covariates = _covariate_frame(rows)
        arms_present = len(rows) >= MIN_CAUSAL_ROWS
        if arms_present:
            frame = frame.rename(columns={"edge_delta_bps": "paired_delta_bps"})
            result = analyse_experiment(frame, covariates, mode="shadow_only", paired_deltas=frame["paired_delta_bps"].to_numpy(),
                                        seed=CAUSAL_SEED, harm_margin_bps=plan.harm_margin_bps).to_dict()
        fills = 2 * len(rows)
    if not arms_present:
        result = {"warnings": [CAUSAL_INSUFFICIENT_DATA], "n": len(rows), "harmed_segments": [], "segments": [],
                  "seed": CAUSAL_SEED, "detail": f"needs at least {MIN_CAUSAL_ROWS} rows with both arms present"}
    if adaptive:
        result = _with_adaptive_analysis(store, exp, experiment, result)
    causal_id = insert_causal(store, experiment_id, samples, fills, result)
    return CausalRun(experiment_id, causal_id, result)


def _with_adaptive_analysis(store: Store, exp: dict[str, Any], experiment, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the adaptive analysis over every arm's fills as the verdict's basis (``aipw_adaptive``)."""
    from experimenttracker_pipeline.causal.adaptive import adaptive_analysis

    contract = experiment.contract
    arm_of = {v.slug: v.id for v in contract.variants}
    rows = arm_fills(store, exp, list(arm_of))
    adaptive = adaptive_analysis(
        [arm_of[r["strategy_slug"]] for r in rows], [float(r["outcome_bps"]) for r in rows],
        [None if r["propensity"] is None else float(r["propensity"]) for r in rows], [r["market_id"] for r in rows],
        [r["recorded_at_ms"] for r in rows], control=contract.control.id,
        variant=next(v.id for v in contract.treatments if v.slug == experiment.variant_slug),
        forbidden_markets=sorted(contract.eth_constraints.forbid_markets))
    warnings = list(result.get("warnings") or [])
    warnings += [w for w in adaptive.pop("warnings", []) if w not in warnings]
    return {**result, **adaptive, "warnings": warnings}
