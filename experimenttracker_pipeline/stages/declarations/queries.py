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


def has_comparisons(table: sa.Table = experiments) -> sa.ColumnElement[bool]:
    """Whether a row of ``table`` (``experiments`` or an alias of it) is an A/B/n experiment with comparisons."""
    child = experiments.alias("comparison")
    return sa.exists().where(child.c.parent_experiment_id == table.c.experiment_id)


def experiment_rows(store: Store, status: str | None = None, *, units: bool = False,
                    comparisons: bool = True) -> list[dict[str, Any]]:
    """Every recorded experiment (or those in ``status``), by experiment_id, A/B/n comparisons included.

    ``units``: only what is paired and evaluated (an experiment with one treatment, or a comparison of an A/B/n
    experiment), never an A/B/n experiment itself. ``comparisons=False``: the experiments as declared (no
    comparisons)."""
    query = sa.select(experiments).order_by(experiments.c.experiment_id)
    if status is not None:
        query = query.where(experiments.c.status == status)
    if units:
        query = query.where(~has_comparisons())
    if not comparisons:
        query = query.where(experiments.c.parent_experiment_id.is_(None))
    return store.rows(query)


def comparison_rows(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """The treatment comparisons of an A/B/n experiment, by variant id (empty for one treatment)."""
    e = experiments.c
    return store.rows(sa.select(experiments).where(e.parent_experiment_id == experiment_id).order_by(e.variant_id))


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
            # An A/B/n experiment's treatment comparisons are recorded with it, or not at all.
            for comparison in experiment.comparisons():
                conn.execute(upsert(conn, experiments).values({**comparison.to_row(), "registered_at_ms": row["registered_at_ms"]})
                             .on_conflict_do_nothing(index_elements=["experiment_id"]))
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
    return store.rows(sa.select(e.experiment_id, e.source_file).where(e.status != SET_ASIDE, ~has_contract,
                                                                      e.parent_experiment_id.is_(None))
                      .order_by(e.experiment_id))


def set_aside_experiment(store: Store, experiment_id: str) -> None:
    """Mark an experiment whose stored declaration cannot be used (see SET_ASIDE)."""
    set_experiment_status(store, experiment_id, SET_ASIDE)


def set_experiment_status(store: Store, experiment_id: str, status: str) -> None:
    """Set the experiment's status (an operator's pause or resume), and its comparisons' with it."""
    e = experiments.c
    with store.begin() as conn:
        conn.execute(experiments.update().values(status=status)
                     .where(sa.or_(e.experiment_id == experiment_id, e.parent_experiment_id == experiment_id)))


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
