"""Store queries of the declarations stage: the `experiments` table."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import sqlalchemy as sa

from experimenttracker_pipeline.model.experiment import Experiment
from experimenttracker_pipeline.stages.governance.queries import insert_contract_row
from experimenttracker_pipeline.store import Store, upsert
from experimenttracker_pipeline.store.schema import experiment_contracts, experiments

# An experiment whose stored declaration cannot be used (registered without its contract by an older version, or
# invalid under today's checks): kept for the record, never paired, evaluated or promoted.
SET_ASIDE = "rejected"


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


def register_experiment(store: Store, experiment: Experiment, contract: Mapping[str, Any] | None = None,
                        reports: Sequence[Mapping[str, Any]] = (), emitted: list[dict[str, Any]] | None = None) -> str:
    """Register an experiment in one transaction: its `experiments` row (when new), its contract row and its
    reports (``store.emit_report`` keyword arguments; each emitted once per dedupe key, appended to ``emitted``).
    All of it commits or none of it: no experiment is recorded without its contract. Returns 'new', 'unchanged'
    or 'conflict' (stored content differs; nothing is written)."""
    row = experiment.to_row()
    with store.begin() as conn:
        existing = conn.execute(sa.select(experiments.c.declaration_sha256)
                                .where(experiments.c.experiment_id == experiment.experiment_id)).scalar()
        if existing is not None and existing != row["declaration_sha256"]:
            return "conflict"
        outcome = "unchanged"
        if existing is None:
            row["registered_at_ms"] = int(time.time() * 1000)
            result = conn.execute(upsert(conn, experiments).values(row).on_conflict_do_nothing(index_elements=["experiment_id"]))
            outcome = "new" if result.rowcount == 1 else "unchanged"
        if contract is not None:
            insert_contract_row(conn, contract)
        bodies = [body for report in reports if (body := store.emit_report(conn, **report)) is not None]
    if emitted is not None:
        emitted.extend(bodies)
    return outcome


def experiments_without_contract(store: Store) -> list[dict[str, Any]]:
    """Recorded experiments (not set aside) that have no contract row: registered half-way by an older version."""
    e, c = experiments.c, experiment_contracts.c
    has_contract = sa.exists().where(c.experiment_id == e.experiment_id)
    return store.rows(sa.select(e.experiment_id, e.source_file).where(e.status != SET_ASIDE, ~has_contract)
                      .order_by(e.experiment_id))


def set_aside_experiment(store: Store, experiment_id: str) -> None:
    """Mark an experiment whose stored declaration cannot be used (see SET_ASIDE)."""
    set_experiment_status(store, experiment_id, SET_ASIDE)


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
