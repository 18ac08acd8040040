"""Causal estimates of one experiment: IPW/AIPW on limited-live fills, segment effects (harmed segments) for both modes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.causal_effects.queries import (
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
    if experiment.mode == "limited_live":
        rows = experiment_fills(store, exp)
        frame, covariates = _covariate_frame(rows)
        arms_present = len(rows) >= MIN_CAUSAL_ROWS and 0 < sum(r["treatment"] for r in rows) < len(rows)
        if arms_present:
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
    causal_id = insert_causal(store, experiment_id, samples, fills, result)
    return CausalRun(experiment_id, causal_id, result)

