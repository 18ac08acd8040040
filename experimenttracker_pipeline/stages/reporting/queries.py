"""Store queries of the reporting stage: what the overview and the experiment reports read (small tables only,
never sample rows except through the intervals stage's aggregated checkpoints)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.schema import experiment_evaluations, experiment_verdicts, strategy_registry_signals


def latest_evaluations(store: Store) -> dict[str, dict[str, Any]]:
    """The newest evaluation row of every experiment."""
    return store.latest_rows(experiment_evaluations)


def evaluation_history(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """Every look of one experiment, oldest first: samples, verdict and the chosen interval."""
    e = experiment_evaluations.c
    return store.rows(sa.select(e.id, e.samples, e.verdict, e.ci_method, e.ci_95_low, e.ci_95_high, e.edge_delta_bps,
                                e.evaluated_at).where(e.experiment_id == experiment_id).order_by(e.id))


def verdict_history(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """Every verdict of one experiment, oldest first (samples, verdict, the deciding interval, report id)."""
    v = experiment_verdicts.c
    return store.rows(sa.select(v.id, v.samples, v.verdict, v.basis, v.ci_95_low, v.ci_95_high, v.edge_delta_bps,
                                v.report_id, v.created_at).where(v.experiment_id == experiment_id).order_by(v.id))


def drift_signal_states(store: Store, experiment_id: str | None = None) -> dict[str, dict[str, Any]]:
    """The newest drift signal of every experiment (or of one): sent at, delivery status, attempts, delivered at,
    last error."""
    s = strategy_registry_signals.c
    query = sa.select(s.experiment_id, s.signal_type, s.delivery_status, s.attempts, s.last_error,
                      s.created_at, s.delivered_at, s.id).order_by(s.id)
    if experiment_id is not None:
        query = query.where(s.experiment_id == experiment_id)
    rows = store.rows(query)
    return {r["experiment_id"]: r for r in rows}


def latest_verdict_ids(store: Store, experiment_ids: list[str]) -> dict[str, int]:
    """experiment_id -> id of its newest verdict, for those of ``experiment_ids`` that have one."""
    if not experiment_ids:
        return {}
    v = experiment_verdicts.c
    rows = store.rows(sa.select(v.experiment_id, sa.func.max(v.id).label("id"))
                      .where(v.experiment_id.in_(experiment_ids)).group_by(v.experiment_id))
    return {r["experiment_id"]: int(r["id"]) for r in rows}
