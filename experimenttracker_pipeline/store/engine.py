"""The `Store`: one SQLAlchemy engine (and connection pool) per process, and what every stage shares."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from experimenttracker_pipeline.settings import BOT_ID, normalise_db_url
from experimenttracker_pipeline.store import schema
from experimenttracker_pipeline.store.bulk import upsert
from experimenttracker_pipeline.store.ids import new_ulid

Query = str | sa.sql.Executable


class StoreUnavailable(RuntimeError):
    """The experiment store cannot be reached (connection refused, bad URL, missing database)."""


class Store:
    """Access to the experiment tables; create one per process (it owns a connection pool)."""

    def __init__(self, url: str, *, echo: bool = False):
        self.url = normalise_db_url(url)
        try:
            sa_url = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise StoreUnavailable(f"EXPERIMENTTRACKER_DB_URL is not a valid SQLAlchemy URL: {exc}") from exc
        self.dialect = sa_url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise StoreUnavailable(f"unsupported database {self.dialect!r}: use sqlite or postgresql")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if sa_url.database and sa_url.database != ":memory:":
                Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 5})
        self.engine: Engine = sa.create_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", sqlite_on_connect)

    # ---- lifecycle -------------------------------------------------------------------------------
    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: committed when the block ends, rolled back on an exception."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            if is_connection_error(exc):
                raise StoreUnavailable(f"experiment store unreachable: {str(exc.orig).strip().splitlines()[0]}") from exc
            raise

    def ping(self) -> None:
        with self.begin() as conn:
            conn.execute(sa.select(1))

    def migrate(self) -> list[str]:
        """Bring the schema to the newest Alembic revision; returns the revisions applied now (safe to run twice)."""
        from experimenttracker_pipeline.store.migrations import upgrade

        return upgrade(self)

    # ---- the outbox of operations reports -----------------------------------------------------------
    def emit_report(self, conn: Connection, *, event_type: str, severity: str, dedupe_key: str, payload: Mapping[str, Any],
                    experiment_id: str | None, report_kind: str = "OperationsReport", topic: str) -> dict[str, Any] | None:
        """Write a report to the outbox once per dedupe_key. Returns the stored payload, or None if it was
        already emitted."""
        report_id = f"ops_experimenttracker_{new_ulid()}"
        body = {"report_id": report_id, "bot_id": BOT_ID, "event_type": event_type, **payload,
                "report_kind": report_kind, "topic": topic}
        if experiment_id is not None:
            body.setdefault("experiment_id", experiment_id)
        result = conn.execute(upsert(conn, schema.operations_reports).values(
            report_id=report_id, dedupe_key=dedupe_key, bot_id=BOT_ID, report_kind=report_kind, topic=topic,
            event_type=event_type, severity=severity, experiment_id=experiment_id,
            payload_json=json.dumps(body, sort_keys=True)).on_conflict_do_nothing(index_elements=["dedupe_key"]))
        return body if result.rowcount == 1 else None

    def reports(self, experiment_id: str | None = None, event_type: str | None = None) -> list[dict[str, Any]]:
        """Emitted report payloads, oldest first, optionally of one experiment and/or one event type."""
        t = schema.operations_reports
        query = sa.select(t.c.payload_json).order_by(t.c.created_at, t.c.report_id)
        if experiment_id is not None:
            query = query.where(t.c.experiment_id == experiment_id)
        if event_type is not None:
            query = query.where(t.c.event_type == event_type)
        with self.begin() as conn:
            return [json.loads(r[0]) for r in conn.execute(query)]

    def report(self, report_id: str) -> dict[str, Any] | None:
        t = schema.operations_reports
        payload = self.scalar(sa.select(t.c.payload_json).where(t.c.report_id == report_id))
        return json.loads(payload) if payload is not None else None

    def record_stage_duration(self, stage: str, seconds: float) -> None:
        """Add one duration to the running totals of a stage (read by the metrics endpoint)."""
        t = schema.stage_durations
        with self.begin() as conn:
            insert = upsert(conn, t).values(stage=stage, runs=1, total_seconds=float(seconds), last_seconds=float(seconds),
                                            last_at_ms=int(time.time() * 1000))
            conn.execute(insert.on_conflict_do_update(index_elements=["stage"], set_={
                "runs": t.c.runs + 1, "total_seconds": t.c.total_seconds + insert.excluded.total_seconds,
                "last_seconds": insert.excluded.last_seconds, "last_at_ms": insert.excluded.last_at_ms}))

    # ---- reads shared by the stages, `status`, tests and benchmarks --------------------------------------
    def scalar(self, query: Query, **params: Any) -> Any:
        with self.begin() as conn:
            return conn.execute(_executable(query), params).scalar()

    def rows(self, query: Query, **params: Any) -> list[dict[str, Any]]:
        with self.begin() as conn:
            return [dict(r) for r in conn.execute(_executable(query), params).mappings()]

    def latest_row(self, table: sa.Table, experiment_id: str) -> dict[str, Any] | None:
        """The newest row (highest id) of an append-only per-experiment table."""
        rows = self.rows(sa.select(table).where(table.c.experiment_id == experiment_id).order_by(table.c.id.desc()).limit(1))
        return rows[0] if rows else None

    def latest_rows(self, table: sa.Table) -> dict[str, dict[str, Any]]:
        """The newest row of every experiment in an append-only per-experiment table."""
        newest = sa.select(sa.func.max(table.c.id).label("id")).group_by(table.c.experiment_id).subquery()
        return {r["experiment_id"]: r for r in self.rows(sa.select(table).join(newest, newest.c.id == table.c.id))}


def _executable(query: Query) -> sa.sql.Executable:
    return sa.text(query) if isinstance(query, str) else query


def sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    # A REPLACE (INSERT OR REPLACE, REPLACE INTO) deletes the conflicting row; SQLite fires DELETE triggers for
    # that deletion only with recursive triggers on, so this is what lets the append-only triggers refuse it.
    cursor.execute("PRAGMA recursive_triggers = ON")
    cursor.close()


def is_connection_error(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("could not connect", "connection refused", "unable to open database", "does not exist",
                                   "server closed the connection", "timeout expired", "could not translate host"))
