"""Drift signals to the StrategyRegistry: one per experiment whose variant underperforms, delivered through an outbox."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.drift.registry import (
    RegistryUnavailable,
    StrategyRegistry,
)
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.drift.queries import insert_signal, mark_signal, signals
from experimenttracker_pipeline.stages.verdict.queries import latest_verdict

log = logging.getLogger(__name__)


DRIFT_SIGNAL = "DRIFT_SIGNAL"

EXPERIMENT_DRIFT_SIGNAL = "EXPERIMENT_DRIFT_SIGNAL"

@dataclass
class DriftResult:
    experiment_id: str
    signalled_now: bool
    delivered: int
    pending: int


def signal_drift(store: Store, experiment_id: str, registry: StrategyRegistry) -> DriftResult:
    """Record one drift signal per experiment when its latest verdict says the variant underperforms, then
    deliver every pending signal of the experiment (an outage leaves them pending for the next attempt)."""
    exp = experiment_row(store, experiment_id)
    latest = latest_verdict(store, experiment_id)
    signalled = False
    if exp is not None and latest is not None and latest["drift"]:
        experiment = experiment_from_row(exp)
        final = json.loads(latest["verdict_json"])
        payload = {
            "signal_type": DRIFT_SIGNAL, "experiment_id": experiment_id, "variant_slug": experiment.variant_slug,
            "control_slug": experiment.control_slug, "verdict": final["verdict"], "samples": final["samples"],
            "edge_delta_bps": final["edge_delta_bps"], "ci_95_low": final["ci_95_low"], "ci_95_high": final["ci_95_high"],
            "drift_z": final.get("drift_z"), "drift_bound": final.get("drift_bound"), "drift_rule": final.get("drift_rule"),
            "basis": final["basis"], "evidence_verdict_id": latest["id"],
        }
        if experiment.is_comparison:
            # One treatment of an A/B/n experiment: the signal (and its idempotency key) is this variant's own.
            payload.update(parent_experiment_id=experiment.parent.experiment_id, variant_id=experiment.variant_id)
        key = f"{experiment_id}:drift:{latest['id']}"
        payload["idempotency_key"] = key
        with store.begin() as conn:
            signalled = insert_signal(conn, {
                "idempotency_key": key, "experiment_id": experiment_id, "variant_slug": experiment.variant_slug,
                "signal_type": DRIFT_SIGNAL, "verdict_id": latest["id"], "payload_json": json.dumps(payload, sort_keys=True, default=str)})
            if signalled:
                store.emit_report(conn, event_type=EXPERIMENT_DRIFT_SIGNAL, severity="WARN",
                                  dedupe_key=f"{EXPERIMENT_DRIFT_SIGNAL}:{experiment_id}", experiment_id=experiment_id,
                                  topic=OPERATIONS_TOPIC, payload={k: payload[k] for k in (
                                      "experiment_id", "variant_slug", "verdict", "samples", "edge_delta_bps", "drift_z")})
    delivered, pending = deliver_pending(store, registry, experiment_id)
    return DriftResult(experiment_id, signalled, delivered, pending)


def deliver_pending(store: Store, registry: StrategyRegistry, experiment_id: str | None = None) -> tuple[int, int]:
    """Try to deliver pending signals once each; returns (delivered now, still pending)."""
    delivered = pending = 0
    for signal in signals(store, experiment_id, status="pending"):
        try:
            registry.send_drift_signal(json.loads(signal["payload_json"]), signal["idempotency_key"])
        except RegistryUnavailable as exc:
            log.warning("drift signal %s not delivered yet: %s", signal["idempotency_key"], exc)
            mark_signal(store, signal["id"], delivered=False, error=str(exc))
            pending += 1
            continue
        mark_signal(store, signal["id"], delivered=True)
        delivered += 1
    return delivered, pending


