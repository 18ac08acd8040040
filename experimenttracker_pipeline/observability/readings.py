"""What the metrics and the health check read from the store: a handful of aggregate queries over small tables
(experiments, pairing state, latest evaluations, signals, outbox, accounting), never sample rows, so a scrape stays
cheap however many samples there are and agrees across processes and restarts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from experimenttracker_pipeline.store import Store

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
QUERIES = {
    "experiments_by_status": "SELECT status, COUNT(*) FROM experiments GROUP BY status",
    "experiments_by_verdict": "SELECT verdict, COUNT(DISTINCT experiment_id) FROM experiment_verdicts GROUP BY verdict",
    "running": "SELECT e.experiment_id, e.status, COALESCE(p.samples, 0), COALESCE(p.last_appended_at_ms, e.registered_at_ms) "
               "FROM experiments e LEFT JOIN experiment_pairing_state p ON p.experiment_id = e.experiment_id "
               "WHERE e.status IN ('active', 'stalled') ORDER BY e.experiment_id",
    "edge_delta_bps": "SELECT v.experiment_id, v.edge_delta_bps FROM experiment_evaluations v JOIN (SELECT experiment_id, "
                      "MAX(id) AS id FROM experiment_evaluations GROUP BY experiment_id) m ON m.id = v.id "
                      "WHERE v.edge_delta_bps IS NOT NULL",
    "drift_signals_by_slug": "SELECT variant_slug, COUNT(*) FROM strategy_registry_signals GROUP BY variant_slug",
    "signals_by_status": "SELECT delivery_status, COUNT(*) FROM strategy_registry_signals GROUP BY delivery_status",
    "pending_signals": "SELECT SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), MIN(created_at) FROM strategy_registry_signals "
                       "WHERE delivery_status = 'pending'",
    "quarantined_by_reason": "SELECT reason_code, COUNT(*) FROM quarantined_reports GROUP BY reason_code",
    "ingested": "SELECT COALESCE(SUM(accepted), 0), COALESCE(SUM(duplicates), 0), COALESCE(SUM(quarantined), 0), "
                "COALESCE(SUM(ignored), 0) FROM ingestion_batches",
    "unpublished_reports": "SELECT COUNT(*) FROM operations_reports r WHERE NOT EXISTS "
                           "(SELECT 1 FROM report_publications p WHERE p.report_id = r.report_id)",
    "stage_durations": "SELECT stage, runs, total_seconds, last_seconds FROM stage_durations",
}


def read_store(store: Store) -> StoreReadings:
    """One consistent read of everything the metrics and the health check report (one transaction)."""
    out = StoreReadings()
    with store.begin() as conn:
        rows = {name: conn.execute(sa.text(sql)).all() for name, sql in QUERIES.items()}
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
