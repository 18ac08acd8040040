"""Store queries of the governance stage: contracts, approvals, the assignment log and the inputs of an EvalTrace."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from experimenttracker_pipeline.store import Store, bulk_load, upsert
from experimenttracker_pipeline.store.schema import (
    approvals,
    assignments,
    causal_estimates,
    experiment_contracts,
    experiment_evaluations,
    experiment_samples,
    experiment_verdicts,
    experiments,
    operations_reports,
    promotions,
    signoffs,
)

ASSIGNMENT_COLUMNS = ("experiment_id", "contract_digest", "unit_id", "variant", "bucket", "reason", "detail")
STOP_RULE_PREFIX = "EVAL_STOP_"
_SQLITE_MAX_VARIABLES = 5_000


def record_contract_row(store: Store, row: Mapping[str, Any]) -> bool:
    """Insert one experiment contract (idempotent on (experiment_id, contract_digest)); True if new."""
    with store.begin() as conn:
        return insert_contract_row(conn, row)


def insert_contract_row(conn: Connection, row: Mapping[str, Any]) -> bool:
    """`record_contract_row` inside the caller's transaction."""
    return conn.execute(upsert(conn, experiment_contracts).values(dict(row)).on_conflict_do_nothing(
        index_elements=["experiment_id", "contract_digest"])).rowcount == 1


def contract_rows(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    t = experiment_contracts
    return store.rows(sa.select(t).where(t.c.experiment_id == experiment_id).order_by(t.c.id))


def insert_approval(store: Store, row: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Append one approval; the same (experiment, digest, role, approver) again returns the stored row.
    Returns (row, newly_inserted)."""
    t = approvals
    key = ("experiment_id", "contract_digest", "role", "approver")
    with store.begin() as conn:
        result = conn.execute(upsert(conn, t).values(dict(row)).on_conflict_do_nothing(index_elements=list(key)))
        stored = conn.execute(sa.select(t).where(*(t.c[k] == row[k] for k in key))).mappings().one()
        return dict(stored), result.rowcount == 1


def approval_rows(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    t = approvals
    return store.rows(sa.select(t).where(t.c.experiment_id == experiment_id).order_by(t.c.id))


def append_assignments(store: Store, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append assignment records in one bulk load. Never updates. (``detail`` is never the empty string: it
    names a market, unit or principal, or is NULL.)"""
    if rows:
        with store.begin() as conn:
            bulk_load(conn, assignments, ASSIGNMENT_COLUMNS, ([row[c] for c in ASSIGNMENT_COLUMNS] for row in rows))
    return len(rows)


def assignment_counts(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """Logged assignments grouped by (contract_digest, variant, reason, detail); detail is NULL unless forced."""
    t = assignments.c
    groups = (t.contract_digest, t.variant, t.reason, t.detail)
    return store.rows(sa.select(*groups, sa.func.count().label("n")).where(t.experiment_id == experiment_id)
                      .group_by(*groups).order_by(*groups))


def assignment_rows(store: Store, experiment_id: str, unit_id: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(assignments).where(assignments.c.experiment_id == experiment_id).order_by(assignments.c.id)
    return store.rows(query if unit_id is None else query.where(assignments.c.unit_id == unit_id))


def units_assigned_off_control(store: Store, experiment_id: str, unit_ids: Sequence[str], control: str) -> list[dict[str, Any]]:
    """Logged assignments of the given units to a variant other than ``control`` (ETH audit of forbidden units)."""
    t = assignments.c
    groups = (t.unit_id, t.variant, t.contract_digest)
    units = sorted(set(unit_ids))
    found: list[dict[str, Any]] = []
    for start in range(0, len(units), _SQLITE_MAX_VARIABLES):
        found += store.rows(sa.select(*groups, sa.func.count().label("n"))
                            .where(t.experiment_id == experiment_id, t.variant != control,
                                   t.unit_id.in_(units[start:start + _SQLITE_MAX_VARIABLES]))
                            .group_by(*groups).order_by(*groups))
    return found


def stop_rule_reports(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """Emitted stop-rule reports (event_type EVAL_STOP_*) of one experiment, oldest first."""
    t = operations_reports.c
    # substr rather than LIKE: '_' in the prefix would be a LIKE wildcard.
    return store.rows(sa.select(t.report_id, t.event_type, t.payload_json, t.created_at)
                      .where(t.experiment_id == experiment_id,
                             sa.func.substr(t.event_type, 1, len(STOP_RULE_PREFIX)) == STOP_RULE_PREFIX)
                      .order_by(t.created_at, t.report_id))


# (name, table, time column): the sources of an EvalTrace's ``as_of``.
_EVENT_TIMES = (
    ("registered", experiments, "created_at"), ("last_sample_ms", experiment_samples, "recorded_at_ms"),
    ("contracts", experiment_contracts, "recorded_at"), ("approvals", approvals, "approved_at"),
    ("assignments", assignments, "assigned_at"), ("evaluations", experiment_evaluations, "evaluated_at"),
    ("causal", causal_estimates, "computed_at"), ("verdicts", experiment_verdicts, "created_at"),
    ("signoffs", signoffs, "signed_at"), ("promotions", promotions, "promoted_at"),
    ("reports", operations_reports, "created_at"),
)


def governance_event_times(store: Store, experiment_id: str) -> dict[str, Any]:
    """Latest recorded time per source for one experiment (EvalTrace ``as_of``); values are datetimes
    (PostgreSQL), ISO strings (SQLite), epoch ms (``last_sample_ms``) or None."""
    return store.rows(sa.select(*(
        sa.select(sa.func.max(table.c[column])).where(table.c.experiment_id == experiment_id).scalar_subquery().label(name)
        for name, table, column in _EVENT_TIMES)))[0]
