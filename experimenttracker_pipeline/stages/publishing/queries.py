"""Store queries of the publishing stage: which outbox rows the relay has published to the report bus."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import sqlalchemy as sa

from experimenttracker_pipeline.store import Store, upsert
from experimenttracker_pipeline.store.schema import operations_reports, report_publications

_r = operations_reports.c
_UNPUBLISHED = ~sa.exists().where(report_publications.c.report_id == _r.report_id)


def unpublished_reports(store: Store, limit: int) -> list[dict[str, Any]]:
    """The oldest outbox rows not yet published to the bus (report_id, topic, payload_json)."""
    return store.rows(sa.select(_r.report_id, _r.topic, _r.payload_json).where(_UNPUBLISHED)
                      .order_by(_r.created_at, _r.report_id).limit(limit))


def record_publications(store: Store, rows: Sequence[Mapping[str, Any]]) -> int:
    """Record PubAcks (report_id, subject, stream, stream_seq, duplicate); a row already recorded stays."""
    if not rows:
        return 0
    with store.begin() as conn:
        result = conn.execute(upsert(conn, report_publications).on_conflict_do_nothing(index_elements=["report_id"]),
                              [dict(r) for r in rows])
        return int(result.rowcount or 0)


def unpublished_count(store: Store) -> int:
    return int(store.scalar(sa.select(sa.func.count()).select_from(operations_reports).where(_UNPUBLISHED)))
