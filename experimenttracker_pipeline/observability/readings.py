"""What the metrics and the health check read from the store: a handful of aggregate queries over small tables
(experiments, pairing state, latest evaluations, signals, outbox, accounting), never sample rows, so a scrape stays
cheap however many samples there are and agrees across processes and restarts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from experimenttracker_pipeline.store import Store, schema
from experimenttracker_pipeline.stages.declarations.queries import has_comparisons

RUNNING_STATUSES = ("active", "stalled")  # experiments that are expected to keep sampling


@dataclass
class StoreReadings:
    experiments_by_status: dict[str, int] = field(default_factory=dict)
    experiments_by_verdict: dict[str, int] = field(default_factory=dict)
    running: list[dict[str, Any]] = field(default_factory=list)  # experiment_id, status, samples, last_ms
    edge_delta_bps: dict[str, float] = field(default_factory=dict)
    drift_signals_by_slug: dict[str, int] = field(default_factory=dict)
    signals_by_status: dict[str, int] = field(default_factory=dict)
    signals_failing: int = 0
    oldest_pending_signal_at: datetime | None = None
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    ingested_by_outcome: dict[str, int] = field(default_factory=dict)
    unpublished_reports: int = 0
    stage_durations: dict[str, dict[str, float]] = field(default_factory=dict)


# Every statement a scrape runs, by name (the scrape benchmark times them one by one).
_e, _p, _v = schema.experiments.c, schema.experiment_pairing_state.c, schema.experiment_evaluations.c
_sig, _b = schema.strategy_registry_signals.c, schema.ingestion_batches.c
_latest_evaluation = sa.select(sa.func.max(_v.id).label("id")).group_by(_v.experiment_id).subquery()
QUERIES: dict[str, sa.Select] = {
    # Experiments as declared (an A/B/n experiment once, not its comparisons).
    "experiments_by_status": sa.select(_e.status, sa.func.count()).where(_e.parent_experiment_id.is_(None))
                             .group_by(_e.status),
    "experiments_by_verdict": sa.select(schema.experiment_verdicts.c.verdict,
                                        sa.func.count(schema.experiment_verdicts.c.experiment_id.distinct()))
                              .group_by(schema.experiment_verdicts.c.verdict),
    "running": sa.select(_e.experiment_id, _e.status, sa.func.coalesce(_p.samples, 0),
                         sa.func.coalesce(_p.last_appended_at_ms, _e.registered_at_ms))
               .select_from(schema.experiments.outerjoin(schema.experiment_pairing_state, _p.experiment_id == _e.experiment_id))
               # What samples: an experiment with one treatment, or each comparison of an A/B/n experiment.
               .where(_e.status.in_(RUNNING_STATUSES), ~has_comparisons()).order_by(_e.experiment_id),
    "edge_delta_bps": sa.select(_v.experiment_id, _v.edge_delta_bps)
                      .join(_latest_evaluation, _latest_evaluation.c.id == _v.id).where(_v.edge_delta_bps.is_not(None)),
    "drift_signals_by_slug": sa.select(_sig.variant_slug, sa.func.count()).group_by(_sig.variant_slug),
    "signals_by_status": sa.select(_sig.delivery_status, sa.func.count()).group_by(_sig.delivery_status),
    "pending_signals": sa.select(sa.func.sum(sa.case((_sig.attempts > 0, 1), else_=0)), sa.func.min(_sig.created_at))
                       .where(_sig.delivery_status == "pending"),
    "quarantined_by_reason": sa.select(schema.quarantined_reports.c.reason_code, sa.func.count())
                             .group_by(schema.quarantined_reports.c.reason_code),
    "ingested": sa.select(*(sa.func.coalesce(sa.func.sum(column), 0) for column in (_b.accepted, _b.duplicates, _b.quarantined, _b.ignored))),
    "unpublished_reports": sa.select(sa.func.count()).select_from(schema.operations_reports).where(
        ~sa.exists().where(schema.report_publications.c.report_id == schema.operations_reports.c.report_id)),
    "stage_durations": sa.select(schema.stage_durations.c.stage, schema.stage_durations.c.runs,
                                 schema.stage_durations.c.total_seconds, schema.stage_durations.c.last_seconds),
}


def read_store(store: Store) -> StoreReadings:
    """One consistent read of everything the metrics and the health check report (one transaction)."""
    out = StoreReadings()
    with store.begin() as conn:
        rows = {name: conn.execute(query).all() for name, query in QUERIES.items()}
    out.experiments_by_status = {r[0]: int(r[1]) for r in rows["experiments_by_status"]}
    out.experiments_by_verdict = {r[0]: int(r[1]) for r in rows["experiments_by_verdict"]}
    out.running = [{"experiment_id": r[0], "status": r[1], "samples": int(r[2]), "last_ms": r[3]} for r in rows["running"]]
    out.edge_delta_bps = {r[0]: float(r[1]) for r in rows["edge_delta_bps"]}
    out.drift_signals_by_slug = {r[0]: int(r[1]) for r in rows["drift_signals_by_slug"]}
    out.signals_by_status = {r[0]: int(r[1]) for r in rows["signals_by_status"]}
    failing, oldest = rows["pending_signals"][0]
    out.signals_failing = int(failing or 0)
    out.oldest_pending_signal_at = _as_datetime(oldest)
    out.quarantined_by_reason = {r[0]: int(r[1]) for r in rows["quarantined_by_reason"]}
    accepted, duplicates, quarantined, ignored = rows["ingested"][0]
    out.ingested_by_outcome = {"accepted": int(accepted), "duplicate": int(duplicates), "quarantined": int(quarantined),
                               "ignored": int(ignored)}
    out.unpublished_reports = int(rows["unpublished_reports"][0][0])
    out.stage_durations = {r[0]: {"runs": int(r[1]), "total_seconds": float(r[2]), "last_seconds": float(r[3])}
                           for r in rows["stage_durations"]}
    return out


def _as_datetime(value: Any) -> datetime | None:
    """PostgreSQL returns datetimes, SQLite ISO-8601 text ('...Z')."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00").replace(" ", "T"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
