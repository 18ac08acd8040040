"""Store queries of the stalls stage: stall episodes (`experiment_stalls`) and the experiment status they set."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.schema import experiment_stalls, experiments

_OPEN = experiment_stalls.c.resolved_at_ms.is_(None)


def _set_status(experiment_id: str, status: str, *, when: str) -> sa.Update:
    return (experiments.update().values(status=status)
            .where(experiments.c.experiment_id == experiment_id, experiments.c.status == when))


def open_stall(store: Store, experiment_id: str, reason: str, detail: str, now_ms: int) -> dict[str, Any] | None:
    """Start a stall episode unless one is open; returns the new episode (the caller emits once)."""
    with store.begin() as conn:
        if conn.execute(sa.select(1).where(experiment_stalls.c.experiment_id == experiment_id, _OPEN)).first():
            return None
        stall_id = conn.execute(experiment_stalls.insert().values(
            experiment_id=experiment_id, reason=reason, detail=detail[:1000], started_at_ms=now_ms)
            .returning(experiment_stalls.c.id)).scalar_one()
        conn.execute(_set_status(experiment_id, "stalled", when="active"))
        return {"id": stall_id, "experiment_id": experiment_id, "reason": reason, "detail": detail, "started_at_ms": now_ms}


def resolve_stall(store: Store, experiment_id: str, now_ms: int) -> dict[str, Any] | None:
    """Close the open stall episode of an experiment (and make it active again); None when none is open."""
    t = experiment_stalls
    with store.begin() as conn:
        row = conn.execute(sa.select(t.c.id, t.c.reason, t.c.started_at_ms)
                           .where(t.c.experiment_id == experiment_id, _OPEN)).mappings().first()
        if row is None:
            return None
        conn.execute(t.update().values(resolved_at_ms=now_ms).where(t.c.id == row["id"]))
        conn.execute(_set_status(experiment_id, "active", when="stalled"))
        return {**dict(row), "resolved_at_ms": now_ms}


def open_stalls(store: Store) -> dict[str, dict[str, Any]]:
    """The open stall episode of every stalled experiment."""
    return {r["experiment_id"]: r for r in store.rows(sa.select(experiment_stalls).where(_OPEN))}
