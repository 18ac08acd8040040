"""Store queries of the declarations stage: the `experiments` table."""

from __future__ import annotations

import time
from typing import Any, Sequence

import sqlalchemy as sa

from experimenttracker_pipeline.model.experiment import Experiment
from experimenttracker_pipeline.store import Store, upsert
from experimenttracker_pipeline.store.schema import experiments


def experiment_row(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """The recorded experiment, or None when it was never declared."""
    rows = store.rows(sa.select(experiments).where(experiments.c.experiment_id == experiment_id))
    return rows[0] if rows else None


def experiment_rows(store: Store, status: str | None = None) -> list[dict[str, Any]]:
    """Every recorded experiment (or those in ``status``), by experiment_id."""
    query = sa.select(experiments).order_by(experiments.c.experiment_id)
    if status is not None:
        query = query.where(experiments.c.status == status)
    return store.rows(query)


def register_experiment(store: Store, experiment: Experiment) -> str:
    """Insert a new experiment. Returns 'new', 'unchanged' or 'conflict' (stored content differs)."""
    row = experiment.to_row()
    with store.begin() as conn:
        existing = conn.execute(sa.select(experiments.c.declaration_sha256)
                                .where(experiments.c.experiment_id == experiment.experiment_id)).scalar()
        if existing is not None:
            return "unchanged" if existing == row["declaration_sha256"] else "conflict"
        row["registered_at_ms"] = int(time.time() * 1000)
        result = conn.execute(upsert(conn, experiments).values(row).on_conflict_do_nothing(index_elements=["experiment_id"]))
        return "new" if result.rowcount == 1 else "unchanged"


def set_experiment_status(store: Store, experiment_id: str, status: str) -> None:
    """Set the experiment's status (an operator's pause or resume)."""
    with store.begin() as conn:
        conn.execute(experiments.update().values(status=status).where(experiments.c.experiment_id == experiment_id))


def known_experiment_ids(store: Store, experiment_ids: Sequence[str]) -> set[str]:
    """The ids among ``experiment_ids`` that are registered experiments."""
    e = experiments.c
    known: set[str] = set()
    with store.begin() as conn:
        for start in range(0, len(experiment_ids), 5_000):  # under SQLite's bound-variable limit
            batch = list(experiment_ids[start:start + 5_000])
            if batch:
                known.update(r[0] for r in conn.execute(sa.select(e.experiment_id).where(e.experiment_id.in_(batch))))
    return known
