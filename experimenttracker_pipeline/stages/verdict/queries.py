"""Store queries of the verdict stage: `experiment_verdicts` (append-only)."""

from __future__ import annotations

import json
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.schema import experiment_verdicts

_v = experiment_verdicts.c


def insert_verdict(conn: Connection, row: Mapping[str, Any]) -> int:
    return conn.execute(experiment_verdicts.insert().values(dict(row)).returning(_v.id)).scalar_one()


def latest_verdict(store: Store, experiment_id: str) -> dict[str, Any] | None:
    return store.latest_row(experiment_verdicts, experiment_id)


def latest_verdicts(store: Store) -> dict[str, dict[str, Any]]:
    """The newest verdict row of every experiment (what `status` shows)."""
    return store.latest_rows(experiment_verdicts)


def _last_reported(column: sa.Column, experiment_id: str) -> sa.Select:
    return (sa.select(column).where(_v.experiment_id == experiment_id, _v.report_id.is_not(None))
            .order_by(_v.id.desc()).limit(1))


def last_reported_verdict(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """The verdict behind the experiment's last emitted result report."""
    verdict_json = store.scalar(_last_reported(_v.verdict_json, experiment_id))
    return json.loads(verdict_json) if verdict_json is not None else None


def latest_result_report_id(store: Store, experiment_id: str) -> str | None:
    return store.scalar(_last_reported(_v.report_id, experiment_id))
