"""Stall episodes (spec sections 18, 19): EXPERIMENT_STALLED once per episode, EXPERIMENT_RESUMED on recovery."""

from __future__ import annotations

import logging
from typing import Any

from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.samples.queries import sensor_snapshot
from experimenttracker_pipeline.stages.stalls.queries import open_stall, open_stalls, resolve_stall

log = logging.getLogger(__name__)


EXPERIMENT_STALLED = "EXPERIMENT_STALLED"
EXPERIMENT_RESUMED = "EXPERIMENT_RESUMED"


def apply_stall_changes(store: Store, changes: list, now_ms: int) -> list[dict[str, Any]]:
    """Open or close stall episodes; EXPERIMENT_STALLED once per episode (WARN), EXPERIMENT_RESUMED on recovery."""
    emitted = []
    for change in changes:
        if change.action == "stall":
            episode = open_stall(store, change.experiment_id, change.reason, change.detail, now_ms)
            if episode is None:
                continue
            event, severity = EXPERIMENT_STALLED, "WARN"
            payload = {"experiment_id": change.experiment_id, "reason": change.reason, "detail": change.detail,
                       "stall_id": episode["id"], "message": "Report bus unavailable or silent; sampling paused."}
            key = f"{EXPERIMENT_STALLED}:{change.experiment_id}:{episode['id']}"
        else:
            episode = resolve_stall(store, change.experiment_id, now_ms)
            if episode is None:
                continue
            event, severity = EXPERIMENT_RESUMED, "INFO"
            payload = {"experiment_id": change.experiment_id, "reason": change.reason, "detail": change.detail,
                       "stall_id": episode["id"], "stalled_for_ms": now_ms - episode["started_at_ms"]}
            key = f"{EXPERIMENT_RESUMED}:{change.experiment_id}:{episode['id']}"
        with store.begin() as conn:
            report = store.emit_report(conn, event_type=event, severity=severity, dedupe_key=key,
                                       experiment_id=change.experiment_id, topic=OPERATIONS_TOPIC, payload=payload)
        if report:
            emitted.append(report)
    return emitted



def apply_bus_state(store: Store, bus_error: str | None, now_ms: int) -> list[dict[str, Any]]:
    """While the report bus cannot be read, every active experiment gets one EXPERIMENT_STALLED
    (REPORT_BUS_UNAVAILABLE); once it answers again, each of those episodes ends with one EXPERIMENT_RESUMED.
    Stalls for other reasons are left to the stall sensor."""
    from experimenttracker_pipeline.orchestration.due_work import REPORT_BUS_UNAVAILABLE, stall_changes

    changes = [c for c in stall_changes(sensor_snapshot(store), open_stalls(store), now_ms=now_ms, window_ms=2**62,
                                        bus_error=bus_error) if c.reason == REPORT_BUS_UNAVAILABLE]
    return apply_stall_changes(store, changes, now_ms)
