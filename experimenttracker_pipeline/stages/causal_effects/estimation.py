"""Causal estimates of one experiment: IPW/AIPW on limited-live fills, segment effects (harmed segments) for both
modes; for a limited-live experiment that declares adaptive allocation, the effects from the logged assignment
propensities (``causal.adaptive.adaptive_analysis``) are the verdict's basis; for a sandbox experiment, the
off-policy value of its candidate policy from the control's logs."""

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
    logged_fills,
    sample_deltas_with_covariates,
    usable_log_count,
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
    if experiment.sandbox_policy is not None:
        result, fills = sandbox_estimates(logged_fills(store, exp), experiment.sandbox_policy, exp["control_slug"])
        return CausalRun(experiment_id, insert_causal(store, experiment_id, samples, fills, result), result)
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



def sandbox_samples(store: Store, experiment_id: str) -> int | None:
    """A sandbox experiment's sample count: its usable logs (it has no pairs). None for any other experiment."""
    exp = experiment_row(store, experiment_id)
    policy = experiment_from_row(exp).sandbox_policy if exp is not None else None
    return None if policy is None else usable_log_count(store, exp, policy)


def usable_logs(rows: list[dict[str, Any]], policy: str) -> tuple[list[dict[str, Any]], list[float]]:
    """The logs that carry a behavior propensity and the candidate ``policy``'s probability, with the latter."""
    usable, candidate = [], []
    for row in rows:
        if row["behavior_propensity"] is None or row["candidate_propensities_json"] is None:
            continue
        p = json.loads(row["candidate_propensities_json"]).get(policy)
        if p is not None:
            usable.append(row)
            candidate.append(float(p))
    return usable, candidate


def sandbox_estimates(rows: list[dict[str, Any]], policy: str, logging_slug: str) -> tuple[dict[str, Any], int]:
    """Off-policy estimates of a sandbox experiment (the causal result document) and the fills read: the
    candidate ``policy``'s IPS/SNIPS/DR values, the logging strategy's own value, candidate - logged, overlap."""
    from experimenttracker_pipeline.causal import design_matrix, evaluate_candidate_from_logs

    usable, candidate = usable_logs(rows, policy)
    logs = {"policy": policy, "logging_slug": logging_slug, "logs": len(usable),
            "logs_without_propensities": len(rows) - len(usable)}
    result: dict[str, Any] = {"mode": "sandbox", "n": len(usable), "seed": CAUSAL_SEED, "harmed_segments": [],
                              "segments": [], "verdict_basis": "off_policy_dr"}
    if len(usable) < MIN_CAUSAL_ROWS:
        result.update(warnings=[CAUSAL_INSUFFICIENT_DATA], estimate_reliable=False, sandbox=logs,
                      detail=f"needs at least {MIN_CAUSAL_ROWS} logged fills with behavior_propensity and a "
                             f"candidate_propensities entry for {policy!r}")
        return result, len(rows)
    frame, covariates = _covariate_frame(usable)
    X = design_matrix(frame, covariates)[0] if covariates else None
    evaluation = evaluate_candidate_from_logs(
        frame["outcome_bps"].to_numpy(dtype=float), frame["behavior_propensity"].to_numpy(dtype=float),
        candidate, X, seed=CAUSAL_SEED)
    document = evaluation.to_dict()
    result.update(warnings=document["warnings"], estimate_reliable=document["estimate_reliable"],
                  off_policy=document["candidate"], sandbox={**logs, **document})
    return result, len(rows)


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
