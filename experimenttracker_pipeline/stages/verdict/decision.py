"""The verdict stage: read one experiment's evidence, assemble its verdict (``assembly``), record it and emit
EXPERIMENT_RESULT when it changed materially, plus one report per fired stop rule."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.model.numbers import to_json
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.governance import operations as governance_ops
from experimenttracker_pipeline.stages.verdict.assembly import (
    EXPERIMENT_RESULT,
    assemble_verdict,
    result_payload,
)
from experimenttracker_pipeline.stages.verdict.rule import materially_changed
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.causal_effects.queries import latest_causal
from experimenttracker_pipeline.stages.declarations.queries import comparison_rows, experiment_row
from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.samples.queries import pairing_states
from experimenttracker_pipeline.stages.verdict.overall import overall_verdict
from experimenttracker_pipeline.stages.intervals.queries import latest_evaluation
from experimenttracker_pipeline.stages.verdict.queries import insert_verdict, last_reported_verdict, latest_verdict

log = logging.getLogger(__name__)


@dataclass
class VerdictResult:
    experiment_id: str
    verdict_id: int
    verdict: dict[str, Any]
    report: dict[str, Any] | None


def decide(store: Store, experiment_id: str) -> VerdictResult:
    """Combine the latest look with the latest causal estimates into the verdict; emit EXPERIMENT_RESULT (or
    EXPERIMENT_INSUFFICIENT_SAMPLES) only when the verdict or the evidence changed materially."""
    row = experiment_row(store, experiment_id)
    evaluation_row = latest_evaluation(store, experiment_id)
    if row is None or evaluation_row is None:
        raise KeyError(f"experiment {experiment_id!r} has no evaluation yet; materialize confidence_intervals first")
    experiment = experiment_from_row(row)
    evaluation = json.loads(evaluation_row["evaluation_json"])
    causal_row = latest_causal(store, experiment_id)
    causal = json.loads(causal_row["result_json"]) if causal_row else None
    # A comparison of an A/B/n experiment is governed by its experiment's contract and approvals.
    governing = experiment.governing
    governance = governance_ops.governance_status(store, governing.experiment_id, governing.contract)

    assembled = assemble_verdict(experiment, evaluation, causal, governance)

    final = assembled.final
    if assembled.promotion_blocked:
        governance_ops.flag_unapproved(store, governing.experiment_id, contract=governing.contract, status=governance)
    previous = last_reported_verdict(store, experiment_id)
    report = None
    with store.begin() as conn:
        if materially_changed(previous, final):
            event = final["event_type"]  # EXPERIMENT_RESULT, EXPERIMENT_INSUFFICIENT_SAMPLES or EXPERIMENT_SRM_DETECTED
            report = store.emit_report(
                conn, event_type=event, severity="WARN" if event != EXPERIMENT_RESULT else "INFO",
                dedupe_key=f"{event}:{experiment_id}:{evaluation_row['id']}", experiment_id=experiment_id,
                topic=OPERATIONS_TOPIC, payload=result_payload(experiment, final, evaluation_row["id"]))
        for rule in assembled.fired:  # each fired stop rule is a reason code and an OperationsReport, once per rule
            if rule.action == "stop":
                store.emit_report(conn, event_type=rule.reason_code, severity="WARN",
                                  dedupe_key=f"{rule.reason_code}:{experiment_id}", experiment_id=experiment_id,
                                  topic=OPERATIONS_TOPIC, payload=rule.to_report(experiment_id))
        verdict_id = insert_verdict(conn, {
            "experiment_id": experiment_id, "evaluation_id": evaluation_row["id"],
            "causal_id": causal_row["id"] if causal_row else None, "samples": final["samples"],
            "verdict": final["verdict"], "basis": final["basis"], "ci_95_low": final["ci_95_low"],
            "ci_95_high": final["ci_95_high"], "edge_delta_bps": final["edge_delta_bps"],
            "drift": bool(final["drift_signalled"]), "report_id": report["report_id"] if report else None,
            "verdict_json": json.dumps(final, sort_keys=True, default=str)})
    return VerdictResult(experiment_id, verdict_id, final, report)


def experiment_overall(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """The overall verdict of an A/B/n experiment from its comparisons' latest verdicts (`overall.overall_verdict`);
    None for an experiment with one treatment (its own verdict is the overall one)."""
    row = experiment_row(store, experiment_id)
    comparisons = comparison_rows(store, experiment_id)
    if row is None or not comparisons:
        return None
    experiment = experiment_from_row(row)
    signalled = {s["experiment_id"] for s in signals(store, None)}
    states = pairing_states(store)
    inputs = {}
    for comparison in comparisons:
        cid = comparison["experiment_id"]
        verdict_row = latest_verdict(store, cid)
        evaluation_row = latest_evaluation(store, cid)
        inputs[comparison["variant_id"]] = {
            "final": json.loads(verdict_row["verdict_json"]) if verdict_row else None,
            "evaluation": json.loads(evaluation_row["evaluation_json"]) if evaluation_row else None,
            "samples": int((states.get(cid) or {}).get("samples") or 0), "drift_signalled": cid in signalled}
    return overall_verdict(experiment, inputs)


EXPERIMENT_OVERALL_RESULT = "EXPERIMENT_OVERALL_RESULT"


def publish_overall(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """Emit ``EXPERIMENT_OVERALL_RESULT`` for an A/B/n experiment when its overall verdict, winner or a variant's
    verdict changed since the last one (after each comparison's verdict): which variant, if any, wins, the ranking,
    the Pareto set and every variant's verdict and interval. Returns the emitted report, else None."""
    overall = experiment_overall(store, experiment_id)
    if overall is None:
        return None
    state = {"verdict": overall["verdict"], "winning_variant": overall["winning_variant"],
             "variants": {vid: v["verdict"] for vid, v in overall["variants"].items()}}
    previous = store.reports(experiment_id, EXPERIMENT_OVERALL_RESULT)
    if previous and {k: previous[-1].get(k) for k in ("verdict", "winning_variant")} == {
            k: state[k] for k in ("verdict", "winning_variant")} and {
            vid: v.get("verdict") for vid, v in (previous[-1].get("variants") or {}).items()} == state["variants"]:
        return None
    keep = ("variant_slug", "experiment_id", "verdict", "ci_95_low", "ci_95_high", "edge_delta_bps", "samples",
            "drift_signalled", "ci_method")
    payload = {"experiment_id": experiment_id, **{k: overall[k] for k in (
        "verdict", "winning_variant", "winning_variant_slug", "ranking", "pareto_set", "multiple_testing",
        "plain_english", "samples")},
        "variants": {vid: {k: v.get(k) for k in keep} for vid, v in overall["variants"].items()}}
    with store.begin() as conn:
        # Numbered: two passes finishing two comparisons at once emit the next one once.
        return store.emit_report(conn, event_type=EXPERIMENT_OVERALL_RESULT, severity="INFO",
                                 dedupe_key=f"{EXPERIMENT_OVERALL_RESULT}:{experiment_id}:{len(previous) + 1}",
                                 experiment_id=experiment_id, topic=OPERATIONS_TOPIC, payload=to_json(payload))
