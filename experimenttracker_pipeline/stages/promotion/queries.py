"""Store queries of the promotion stage: human sign-offs and promotions (both append-only)."""

from __future__ import annotations

from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from experimenttracker_pipeline.store import Store, upsert
from experimenttracker_pipeline.store.schema import promotions as promotions_table
from experimenttracker_pipeline.store.schema import signoffs as signoffs_table


def _of(table: sa.Table, experiment_id: str | None) -> sa.Select:
    query = sa.select(table).order_by(table.c.id)
    return query if experiment_id is None else query.where(table.c.experiment_id == experiment_id)


def insert_signoff(store: Store, experiment_id: str, report_id: str, verdict: str, approver: str, note: str | None,
                   anchor_hmac: str | None = None) -> dict[str, Any]:
    """Append one sign-off; returns the stored row."""
    t = signoffs_table
    with store.begin() as conn:
        new_id = conn.execute(t.insert().values(experiment_id=experiment_id, report_id=report_id, verdict=verdict,
                                                approver=approver, note=note, anchor_hmac=anchor_hmac)
                              .returning(t.c.id)).scalar_one()
    return store.rows(sa.select(t).where(t.c.id == new_id))[0]


def signoffs(store: Store, experiment_id: str | None = None) -> list[dict[str, Any]]:
    return store.rows(_of(signoffs_table, experiment_id))


def insert_promotion(conn: Connection, row: Mapping[str, Any]) -> bool:
    """Record a promotion once per (experiment, report); False if it was already recorded."""
    return conn.execute(upsert(conn, promotions_table).values(dict(row)).on_conflict_do_nothing()).rowcount == 1


def promotions(store: Store, experiment_id: str | None = None) -> list[dict[str, Any]]:
    return store.rows(_of(promotions_table, experiment_id))
