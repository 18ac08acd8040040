"""Store queries of the drift stage: `strategy_registry_signals`, the outbox of drift signals."""

from __future__ import annotations

from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from experimenttracker_pipeline.store import Store, upsert
from experimenttracker_pipeline.store.schema import strategy_registry_signals

_t = strategy_registry_signals


def insert_signal(conn: Connection, row: Mapping[str, Any]) -> bool:
    """Record a signal once per (experiment, signal_type); False if one already exists."""
    return conn.execute(upsert(conn, _t).values(dict(row)).on_conflict_do_nothing()).rowcount == 1


def signals(store: Store, experiment_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Drift signals, oldest first, optionally of one experiment and/or in one delivery status."""
    query = sa.select(_t).order_by(_t.c.id)
    if experiment_id is not None:
        query = query.where(_t.c.experiment_id == experiment_id)
    if status is not None:
        query = query.where(_t.c.delivery_status == status)
    return store.rows(query)


def mark_signal(store: Store, signal_id: int, *, delivered: bool, error: str | None = None) -> None:
    """Count a delivery attempt: delivered (once), or failed with its error kept for the next try."""
    with store.begin() as conn:
        if delivered:
            conn.execute(_t.update().where(_t.c.id == signal_id, _t.c.delivery_status == "pending").values(
                delivery_status="delivered", attempts=_t.c.attempts + 1, last_error=None,
                delivered_at=sa.func.current_timestamp()))
        else:
            conn.execute(_t.update().where(_t.c.id == signal_id).values(
                attempts=_t.c.attempts + 1, last_error=(error or "")[:1000]))
