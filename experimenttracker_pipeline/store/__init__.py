"""The experiment store: every SQL statement the pipeline runs against its database lives here or in `sql/`.

One `Store` wraps a SQLAlchemy engine for SQLite (embedded default) or PostgreSQL (production). Values are
always bound parameters. Bulk writes use PostgreSQL ``COPY`` (SQLite: batched ``executemany``).
"""

from __future__ import annotations

import csv
import io
import json
import operator
import secrets
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from experimenttracker_pipeline.model.experiment import Experiment
from experimenttracker_pipeline.settings import BOT_ID, normalise_db_url
from experimenttracker_pipeline.stages.ingestion.validation import FILL_COLUMNS, Fill
from experimenttracker_pipeline.stages.samples.pairing import (
    CONTROL_MODE,
    GENESIS_HASH,
    SAMPLE_HASH_FIELDS,
    VARIANT_MODES,
    Candidate,
)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
SAMPLE_COLUMNS = SAMPLE_HASH_FIELDS + ("prev_hash", "sample_hash")
RAW_COLUMNS = FILL_COLUMNS + ("source_file", "source_line")
# Per-sample metrics of the evaluation surface (means of a per-pair value), as SQL expressions over
# experiment_samples ...
METRIC_EXPRESSIONS = {
    "edge_delta_bps": "edge_delta_bps",
    "slippage_delta_bps": "slippage_delta_bps",
    "fill_quality_delta": "fill_quality_delta",
}
# ... and ratio metrics: sum of the numerator over sum of the denominator across pairs (delta method).
RATIO_METRICS = {"fill_size_ratio": ("variant_fill_pusd", "control_fill_pusd")}
METRIC_COLUMNS = tuple(METRIC_EXPRESSIONS) + tuple(RATIO_METRICS)


def _metric(column: str) -> str:
    # Expressions cannot be bound parameters: only these known ones are ever interpolated.
    if column not in METRIC_EXPRESSIONS:
        raise ValueError(f"unknown metric {column!r}")
    return METRIC_EXPRESSIONS[column]


_FILL_GETTER = operator.attrgetter(*FILL_COLUMNS)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class StoreUnavailable(RuntimeError):
    """The experiment store cannot be reached (connection refused, bad URL, missing database)."""


class ImmutableSampleError(RuntimeError):
    """An attempt to change recorded samples, or a broken chain found before appending."""


class LandingOffsetMoved(RuntimeError):
    """Another process stored the same chunk of a landing file first; nothing of this chunk was written."""


def new_ulid() -> str:
    """A ULID (48-bit ms time + 80 random bits, Crockford base32): sortable, unique report ids."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@dataclass(frozen=True)
class BatchAccount:
    lines_read: int
    accepted: int
    duplicates: int
    quarantined: int


@dataclass(frozen=True)
class BusBatchAccount:
    """One batch of report-bus messages: messages = accepted + duplicates + quarantined + ignored (duplicates
    include ``redelivered``, messages whose stream sequence was already stored)."""

    messages: int
    accepted: int
    duplicates: int
    quarantined: int
    ignored: int
    redelivered: int
    batch_id: int
    quarantine_reasons: dict[str, int]


@dataclass(frozen=True)
class _StoredReports:
    account: BatchAccount
    batch_id: int
    accepted_lines: set[int]
    quarantined_lines: set[int]
    quarantine_reasons: dict[str, int]


@dataclass(frozen=True)
class QuarantineRow:
    line_number: int
    reason_code: str
    detail: str
    raw_text: str
    report_id: str | None = None


def _split_sqlite_script(script: str) -> list[str]:
    # Trigger bodies contain ';', so split on complete statements rather than on semicolons.
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not buffer.strip().startswith("--"):
        statements.append(buffer.strip())
    return statements


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
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if sa_url.database and sa_url.database != ":memory:":
                Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 5})
        self.engine: Engine = sa.create_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)

    # ---- lifecycle -------------------------------------------------------------------------------
    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            if _is_connection_error(exc):
                raise StoreUnavailable(f"experiment store unreachable: {str(exc.orig).strip().splitlines()[0]}") from exc
            raise

    def ping(self) -> None:
        with self.begin() as conn:
            conn.execute(sa.text("SELECT 1"))

    def migrate(self) -> list[str]:
        """Apply the versioned SQL files in ``sql/<dialect>/`` that have not run yet; safe to run twice."""
        applied_now: list[str] = []
        folder = SQL_DIR / ("postgres" if self.dialect == "postgresql" else "sqlite")
        with self.begin() as conn:
            if self.dialect == "postgresql":
                # Two processes starting at once must not both apply a migration.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7423001)"))
            conn.execute(sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
            done = {row[0] for row in conn.execute(sa.text("SELECT version FROM schema_migrations"))}
            for path in sorted(folder.glob("*.sql")):
                if path.name in done:
                    continue
                script = path.read_text(encoding="utf-8")
                if self.dialect == "sqlite":
                    for statement in _split_sqlite_script(script):
                        conn.exec_driver_sql(statement)
                else:
                    # Straight to the driver: without parameters psycopg2 leaves '%' in plpgsql bodies alone.
                    conn.connection.driver_connection.cursor().execute(script)
                conn.execute(sa.text("INSERT INTO schema_migrations (version, applied_at) VALUES (:v, :t)"),
                             {"v": path.name, "t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                applied_now.append(path.name)
        return applied_now

    def applied_migrations(self) -> list[str]:
        with self.begin() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT version FROM schema_migrations ORDER BY version"))]

    # ---- experiments -----------------------------------------------------------------------------
    def get_experiment_row(self, experiment_id: str) -> dict[str, Any] | None:
        with self.begin() as conn:
            row = conn.execute(sa.text("SELECT * FROM experiments WHERE experiment_id = :e"), {"e": experiment_id}).mappings().first()
        return dict(row) if row else None

    def experiment_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM experiments" + (" WHERE status = :s" if status else "") + " ORDER BY experiment_id"
        with self.begin() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), {"s": status}).mappings()]

    def register_experiment(self, experiment: Experiment) -> str:
        """Insert a new experiment. Returns 'new', 'unchanged' or 'conflict' (stored content differs)."""
        row = experiment.to_row()
        with self.begin() as conn:
            existing = conn.execute(sa.text("SELECT declaration_sha256 FROM experiments WHERE experiment_id = :e"),
                                    {"e": experiment.experiment_id}).scalar()
            if existing is not None:
                return "unchanged" if existing == row["declaration_sha256"] else "conflict"
            row["registered_at_ms"] = int(time.time() * 1000)
            columns = ", ".join(row)
            values = ", ".join(f":{k}" for k in row)
            result = conn.execute(sa.text(f"INSERT INTO experiments ({columns}) VALUES ({values}) "
                                          "ON CONFLICT (experiment_id) DO NOTHING"), row)
            return "new" if result.rowcount == 1 else "unchanged"

    def set_experiment_status(self, experiment_id: str, status: str) -> None:
        with self.begin() as conn:
            conn.execute(sa.text("UPDATE experiments SET status = :s WHERE experiment_id = :e"), {"s": status, "e": experiment_id})

    # ---- landing files and ingestion -------------------------------------------------------------
    def landing_state(self) -> dict[str, dict[str, int]]:
        with self.begin() as conn:
            rows = conn.execute(sa.text("SELECT path, byte_offset, lines_read, size_seen FROM landing_files")).mappings()
            return {r["path"]: {"byte_offset": r["byte_offset"], "lines_read": r["lines_read"], "size_seen": r["size_seen"]} for r in rows}

    def landing_offset(self, path: str) -> dict[str, int] | None:
        rows = self.rows("SELECT byte_offset, lines_read, size_seen FROM landing_files WHERE path = :p", p=path)
        return rows[0] if rows else None

    def ingest_batch(self, *, source_file: str, from_offset: int, to_offset: int, first_line: int, size_seen: int,
                     fills: Sequence[tuple[int, Fill]], rejections: Sequence[QuarantineRow], run_id: str | None = None) -> BatchAccount:
        """Store one chunk of a landing file atomically: accepted fills, duplicates, quarantine rows, the new
        file offset and the chunk's accounting row commit together or not at all."""
        with self.begin() as conn:
            # The chunk is stored only if the file's offset is still where this reader started: another process
            # that read the same lines first makes this one roll back instead of counting them twice.
            lines_read = len(fills) + len(rejections)
            self._advance_landing_offset(conn, source_file, from_offset, to_offset, first_line - 1 + lines_read, size_seen)
            stored = self._store_reports(conn, source_file=source_file, from_offset=from_offset, to_offset=to_offset,
                                         first_line=first_line, fills=fills, rejections=rejections, run_id=run_id)
        return stored.account

    def ingest_bus_batch(self, *, stream: str, deliveries: Sequence[tuple[int, Fill | QuarantineRow | None]],
                         run_id: str | None = None) -> BusBatchAccount:
        """Store one batch of report-bus messages atomically, with each message's stream sequence.

        ``deliveries`` are (stream_seq, Fill | QuarantineRow | None) where None is a message that is not a fill
        (ignored). A sequence already in `bus_messages` was stored before (the ack after that commit was lost):
        it counts as a duplicate and nothing else is written for it.
        """
        seqs = [seq for seq, _ in deliveries]
        with self.begin() as conn:
            if self.dialect == "postgresql":
                # Taken before the sequence probe: two consumers of one stream must not both store a redelivery.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7423002)"))
            known = self._known_sequences(conn, stream, seqs)
            fresh: dict[int, Fill | QuarantineRow | None] = {}
            redelivered = 0
            for seq, item in deliveries:
                if seq in known or seq in fresh:
                    redelivered += 1
                else:
                    fresh[seq] = item
            fills = [(seq, item) for seq, item in fresh.items() if isinstance(item, Fill)]
            rejections = [item for item in fresh.values() if isinstance(item, QuarantineRow)]
            ignored = [seq for seq, item in fresh.items() if item is None]
            stored = self._store_reports(conn, source_file=stream, from_offset=min(seqs), to_offset=max(seqs),
                                         first_line=min(seqs), fills=fills, rejections=rejections, run_id=run_id,
                                         extra_duplicates=redelivered, ignored=len(ignored))
            outcomes = [(seq, "ignored") for seq in ignored]
            for seq, item in fresh.items():
                if item is None:
                    continue
                outcome = ("quarantined" if seq in stored.quarantined_lines else
                           "accepted" if seq in stored.accepted_lines else "duplicate")
                outcomes.append((seq, outcome))
            self._insert_bus_messages(conn, [(stream, seq, stored.batch_id, outcome) for seq, outcome in outcomes])
        account = stored.account
        return BusBatchAccount(messages=len(deliveries), accepted=account.accepted, duplicates=account.duplicates,
                               quarantined=account.quarantined, ignored=len(ignored), redelivered=redelivered,
                               batch_id=stored.batch_id, quarantine_reasons=stored.quarantine_reasons)

    def _insert_bus_messages(self, conn: Connection, rows: Sequence[tuple[str, int, int, str]]) -> None:
        if not rows:
            return
        cursor = conn.connection.driver_connection.cursor()
        if self.dialect == "postgresql":  # one COPY, not one round trip per message
            buffer = io.StringIO()
            csv.writer(buffer).writerows(rows)
            buffer.seek(0)
            cursor.copy_expert("COPY bus_messages (stream, stream_seq, batch_id, outcome) FROM STDIN WITH (FORMAT csv)", buffer)
        else:
            cursor.executemany("INSERT INTO bus_messages (stream, stream_seq, batch_id, outcome) VALUES (?, ?, ?, ?)", rows)

    def _known_sequences(self, conn: Connection, stream: str, seqs: Sequence[int]) -> set[int]:
        query = sa.text("SELECT stream_seq FROM bus_messages WHERE stream = :s AND stream_seq IN :q").bindparams(
            sa.bindparam("q", expanding=True))
        known: set[int] = set()
        ordered = sorted(set(seqs))
        for start in range(0, len(ordered), 5_000):  # stay under SQLite's bound-variable limit
            known.update(int(r[0]) for r in conn.execute(query, {"s": stream, "q": ordered[start:start + 5_000]}))
        return known

    def _store_reports(self, conn: Connection, *, source_file: str, from_offset: int, to_offset: int, first_line: int,
                       fills: Sequence[tuple[int, Fill]], rejections: Sequence[QuarantineRow], run_id: str | None,
                       extra_duplicates: int = 0, ignored: int = 0) -> "_StoredReports":
        """Accepted fills, duplicates and quarantine rows of one batch plus its accounting row, in ``conn``'s
        transaction. ``extra_duplicates`` are deliveries the caller already recognised as redeliveries."""
        lines_read = len(fills) + len(rejections) + extra_duplicates
        quarantine = list(rejections)
        first_seen: dict[str, tuple[int, Fill]] = {}
        duplicates = extra_duplicates
        for line_no, fill in fills:  # redeliveries inside the chunk itself
            seen = first_seen.get(fill.report_id)
            if seen is None:
                first_seen[fill.report_id] = (line_no, fill)
            elif seen[1].content_sha256 == fill.content_sha256:
                duplicates += 1
            else:
                quarantine.append(_conflict_row(line_no, fill, seen[0], source_file))
        if self.dialect == "postgresql":
            # Ingestion is serialised, so the probe below cannot race another writer of the same ids.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7423002)"))
        known = self._known_reports(conn, list(first_seen))
        new_fills: list[tuple[int, Fill]] = []
        for report_id, (line_no, fill) in first_seen.items():
            stored = known.get(report_id)
            if stored is None:
                new_fills.append((line_no, fill))
            elif stored[0] == fill.content_sha256:
                duplicates += 1
            else:
                quarantine.append(_conflict_row(line_no, fill, stored[2], stored[1]))
        self._insert_reports(conn, new_fills, source_file)
        accepted = len(new_fills)
        if quarantine:
            conn.execute(sa.text(
                "INSERT INTO quarantined_reports (source_file, line_number, report_id, reason_code, detail, raw_text) "
                "VALUES (:source_file, :line_number, :report_id, :reason_code, :detail, :raw_text)"),
                [{"source_file": source_file, "line_number": q.line_number, "report_id": q.report_id,
                  "reason_code": q.reason_code, "detail": q.detail[:1000], "raw_text": q.raw_text} for q in quarantine])
        account = BatchAccount(lines_read, accepted, duplicates, len(quarantine))
        if account.accepted + account.duplicates + account.quarantined != lines_read:
            raise RuntimeError(f"ingestion accounting mismatch in {source_file}: {account}")
        batch_id = conn.execute(sa.text(
            "INSERT INTO ingestion_batches (run_id, source_file, from_offset, to_offset, first_line, lines_read, accepted, "
            "duplicates, quarantined, ignored) VALUES (:run_id, :f, :a, :b, :first, :n, :acc, :dup, :q, :ign) RETURNING id"),
            {"run_id": run_id, "f": source_file, "a": from_offset, "b": to_offset, "first": first_line, "n": lines_read,
             "acc": accepted, "dup": duplicates, "q": len(quarantine), "ign": ignored}).scalar()
        slugs: dict[str, int] = {}
        for _, fill in new_fills:
            slugs[fill.strategy_slug] = slugs.get(fill.strategy_slug, 0) + 1
        if slugs:
            conn.execute(sa.text("INSERT INTO ingestion_batch_slugs (batch_id, strategy_slug, fills) VALUES (:b, :s, :n)"),
                         [{"b": batch_id, "s": slug, "n": n} for slug, n in slugs.items()])
        reasons: dict[str, int] = {}
        for q in quarantine:
            reasons[q.reason_code] = reasons.get(q.reason_code, 0) + 1
        return _StoredReports(account, int(batch_id), {line for line, _ in new_fills}, {q.line_number for q in quarantine},
                              reasons)

    def _advance_landing_offset(self, conn: Connection, path: str, from_offset: int, to_offset: int, lines_read: int,
                                size_seen: int) -> None:
        now = "now()" if self.dialect == "postgresql" else "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        moved = conn.execute(sa.text(
            f"UPDATE landing_files SET byte_offset = :o, lines_read = :n, size_seen = :s, updated_at = {now} "
            "WHERE path = :p AND byte_offset = :from_offset"),
            {"p": path, "o": to_offset, "n": lines_read, "s": size_seen, "from_offset": from_offset}).rowcount
        if not moved and from_offset == 0:
            moved = conn.execute(sa.text(
                "INSERT INTO landing_files (path, byte_offset, lines_read, size_seen) VALUES (:p, :o, :n, :s) "
                "ON CONFLICT (path) DO NOTHING"), {"p": path, "o": to_offset, "n": lines_read, "s": size_seen}).rowcount
        if not moved:
            raise LandingOffsetMoved(f"{path}: another ingestion stored bytes from offset {from_offset} first")

    def _set_landing_offset(self, conn: Connection, path: str, offset: int, lines_read: int, size_seen: int) -> None:
        conn.execute(sa.text(
            "INSERT INTO landing_files (path, byte_offset, lines_read, size_seen) VALUES (:p, :o, :n, :s) "
            "ON CONFLICT (path) DO UPDATE SET byte_offset = excluded.byte_offset, lines_read = excluded.lines_read, "
            "size_seen = excluded.size_seen, updated_at = excluded.updated_at"),
            {"p": path, "o": offset, "n": lines_read, "s": size_seen})

    def reset_landing_offset(self, path: str, lines_read: int) -> None:
        """A file that shrank was rotated or rewritten: read it again from byte 0 (known ids count as
        duplicates, line numbers keep counting up so quarantine rows never collide)."""
        with self.begin() as conn:
            self._set_landing_offset(conn, path, 0, lines_read, 0)

    def _known_reports(self, conn: Connection, report_ids: list[str]) -> dict[str, tuple[str, str, int]]:
        """report_id -> (content_sha256, source_file, source_line) for the ids already stored: one indexed probe."""
        known: dict[str, tuple[str, str, int]] = {}
        if not report_ids:
            return known
        if self.dialect == "postgresql":
            rows = conn.execute(sa.text("SELECT report_id, content_sha256, source_file, source_line FROM raw_reports "
                                        "WHERE report_id = ANY(:ids)"), {"ids": report_ids})
            known.update((r[0], (r[1], r[2], r[3])) for r in rows)
            return known
        query = sa.text("SELECT report_id, content_sha256, source_file, source_line FROM raw_reports "
                        "WHERE report_id IN :ids").bindparams(sa.bindparam("ids", expanding=True))
        for start in range(0, len(report_ids), 5_000):  # stay under SQLite's bound-variable limit
            rows = conn.execute(query, {"ids": report_ids[start:start + 5_000]})
            known.update((r[0], (r[1], r[2], r[3])) for r in rows)
        return known

    def _insert_reports(self, conn: Connection, fills: Sequence[tuple[int, Fill]], source_file: str) -> None:
        if not fills:
            return
        if self.dialect == "postgresql":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            fields = _FILL_GETTER
            # CSV's NULL is an unquoted empty field (what csv writes for None); validation rejects empty strings,
            # so no real value can be mistaken for NULL. Floats are written with repr, which round-trips exactly.
            writer.writerows((*fields(fill), source_file, line_no) for line_no, fill in fills)
            buffer.seek(0)
            cursor = conn.connection.driver_connection.cursor()
            cursor.copy_expert(f"COPY raw_reports ({', '.join(RAW_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buffer)
        else:
            placeholders = ", ".join("?" for _ in RAW_COLUMNS)
            conn.connection.driver_connection.cursor().executemany(
                f"INSERT INTO raw_reports ({', '.join(RAW_COLUMNS)}) VALUES ({placeholders})",
                [tuple(getattr(fill, c) for c in FILL_COLUMNS) + (source_file, line_no) for line_no, fill in fills])

    # ---- samples ---------------------------------------------------------------------------------
    def sample_tail(self, conn: Connection, experiment_id: str) -> tuple[int, str]:
        row = conn.execute(sa.text(
            "SELECT sample_n, sample_hash FROM experiment_samples WHERE experiment_id = :e ORDER BY sample_n DESC LIMIT 1"),
            {"e": experiment_id}).first()
        return (int(row[0]), row[1]) if row else (0, GENESIS_HASH)

    def unpaired_candidates(self, conn: Connection, exp: Mapping[str, Any]) -> tuple[list[Candidate], list[Candidate]]:
        """Fills eligible for this experiment that are not yet half of one of its samples, split by role."""
        fields = ", ".join(f"r.{f}" for f in Candidate.__dataclass_fields__)
        sql = sa.text(
            f"SELECT r.strategy_slug AS role_slug, {fields} FROM raw_reports r "
            "WHERE r.recorded_at_ms >= :started AND (r.experiment_id IS NULL OR r.experiment_id = :e) "
            "AND ((r.strategy_slug = :variant AND r.mode IN :variant_modes) OR (r.strategy_slug = :control AND r.mode = :control_mode)) "
            "AND NOT EXISTS (SELECT 1 FROM experiment_samples s WHERE s.experiment_id = :e AND s.variant_report_id = r.report_id) "
            "AND NOT EXISTS (SELECT 1 FROM experiment_samples s WHERE s.experiment_id = :e AND s.control_report_id = r.report_id)"
        ).bindparams(sa.bindparam("variant_modes", expanding=True))
        variants, controls = [], []
        rows = conn.execute(sql, {
            "started": exp["started_at_ms"], "e": exp["experiment_id"], "variant": exp["variant_slug"],
            "control": exp["control_slug"], "variant_modes": list(VARIANT_MODES[exp["mode"]]), "control_mode": CONTROL_MODE})
        for row in rows:
            candidate = Candidate(*row[1:])
            (variants if row[0] == exp["variant_slug"] else controls).append(candidate)
        return variants, controls

    def append_samples(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append sample rows (the caller numbered and chained them). Never updates."""
        if not rows:
            return
        if self.dialect == "postgresql":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerows([row[c] for c in SAMPLE_COLUMNS] for row in rows)
            buffer.seek(0)
            cursor = conn.connection.driver_connection.cursor()
            cursor.copy_expert(f"COPY experiment_samples ({', '.join(SAMPLE_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buffer)
        else:
            placeholders = ", ".join("?" for _ in SAMPLE_COLUMNS)
            conn.connection.driver_connection.cursor().executemany(
                f"INSERT INTO experiment_samples ({', '.join(SAMPLE_COLUMNS)}) VALUES ({placeholders})",
                [tuple(row[c] for c in SAMPLE_COLUMNS) for row in rows])

    def get_sample(self, conn: Connection, experiment_id: str, sample_n: int) -> dict[str, Any]:
        row = conn.execute(sa.text(f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM experiment_samples "
                                   "WHERE experiment_id = :e AND sample_n = :n"), {"e": experiment_id, "n": sample_n}).mappings().one()
        return dict(row)

    def last_sample_time_state(self, conn: Connection, experiment_id: str) -> int | None:
        value = conn.execute(sa.text("SELECT last_sample_at_ms FROM experiment_pairing_state WHERE experiment_id = :e"),
                             {"e": experiment_id}).scalar()
        return int(value) if value is not None else None

    def lock_experiment(self, conn: Connection, experiment_id: str) -> None:
        """Serialise writers of one experiment's samples (PostgreSQL advisory lock; SQLite locks the file)."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7423003, hashtext(:e))"), {"e": experiment_id})

    def save_pairing_state(self, conn: Connection, experiment_id: str, samples: int, orphan_variant: int,
                           orphan_control: int, last_sample_at_ms: int | None, appended: int = 0,
                           paired_through_batch: int | None = None) -> None:
        conn.execute(sa.text(
            "INSERT INTO experiment_pairing_state (experiment_id, samples, orphan_variant, orphan_control, last_sample_at_ms, "
            "last_appended_at_ms, paired_through_batch) VALUES (:e, :n, :ov, :oc, :t, :appended_at, :through) "
            "ON CONFLICT (experiment_id) DO UPDATE SET "
            "samples = excluded.samples, orphan_variant = excluded.orphan_variant, orphan_control = excluded.orphan_control, "
            "last_sample_at_ms = excluded.last_sample_at_ms, updated_at = excluded.updated_at, "
            "last_appended_at_ms = COALESCE(excluded.last_appended_at_ms, experiment_pairing_state.last_appended_at_ms), "
            "paired_through_batch = COALESCE(excluded.paired_through_batch, experiment_pairing_state.paired_through_batch)"),
            {"e": experiment_id, "n": samples, "ov": orphan_variant, "oc": orphan_control, "t": last_sample_at_ms,
             "appended_at": int(time.time() * 1000) if appended else None, "through": paired_through_batch})

    def newest_batch(self, conn: Connection) -> int:
        """The newest committed ingestion batch id. Read at the start of a pairing transaction: ingestion commits
        batches in id order (serialised), so every fill of a batch up to this id is visible to that pairing."""
        return int(conn.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM ingestion_batches")).scalar())

    def pairing_states_for(self, experiment_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM experiment_pairing_state WHERE experiment_id = :e", e=experiment_id)
        return rows[0] if rows else None

    def pairing_states(self) -> dict[str, dict[str, Any]]:
        with self.begin() as conn:
            return {r["experiment_id"]: dict(r) for r in conn.execute(sa.text("SELECT * FROM experiment_pairing_state")).mappings()}

    def iter_samples(self, experiment_id: str, batch: int = 20_000) -> Iterator[dict[str, Any]]:
        """All samples of one experiment in sample_n order, streamed in keyset pages."""
        last = 0
        columns = ", ".join(SAMPLE_COLUMNS)
        while True:
            with self.begin() as conn:
                page = [dict(r) for r in conn.execute(sa.text(
                    f"SELECT {columns} FROM experiment_samples WHERE experiment_id = :e AND sample_n > :last "
                    "ORDER BY sample_n LIMIT :lim"), {"e": experiment_id, "last": last, "lim": batch}).mappings()]
            if not page:
                return
            yield from page
            last = page[-1]["sample_n"]

    def sample_count(self, experiment_id: str) -> int:
        with self.begin() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM experiment_samples WHERE experiment_id = :e"), {"e": experiment_id}).scalar())

    # ---- outbox ----------------------------------------------------------------------------------
    def emit_report(self, conn: Connection, *, event_type: str, severity: str, dedupe_key: str, payload: Mapping[str, Any],
                    experiment_id: str | None, report_kind: str = "OperationsReport", topic: str) -> dict[str, Any] | None:
        """Write a report to the outbox once per dedupe_key. Returns the stored payload, or None if it was
        already emitted."""
        report_id = f"ops_experimenttracker_{new_ulid()}"
        body = {"report_id": report_id, "bot_id": BOT_ID, "event_type": event_type, **payload,
                "report_kind": report_kind, "topic": topic}
        if experiment_id is not None:
            body.setdefault("experiment_id", experiment_id)
        result = conn.execute(sa.text(
            "INSERT INTO operations_reports (report_id, dedupe_key, bot_id, report_kind, topic, event_type, severity, "
            "experiment_id, payload_json) VALUES (:id, :k, :bot, :kind, :topic, :ev, :sev, :e, :p) "
            "ON CONFLICT (dedupe_key) DO NOTHING"),
            {"id": report_id, "k": dedupe_key, "bot": BOT_ID, "kind": report_kind, "topic": topic, "ev": event_type,
             "sev": severity, "e": experiment_id, "p": json.dumps(body, sort_keys=True)})
        return body if result.rowcount == 1 else None

    def reports(self, experiment_id: str | None = None, event_type: str | None = None) -> list[dict[str, Any]]:
        where, params = _where(experiment_id=experiment_id, event_type=event_type)
        with self.begin() as conn:
            rows = conn.execute(sa.text(f"SELECT payload_json FROM operations_reports{where} ORDER BY created_at, report_id"), params)
            return [json.loads(r[0]) for r in rows]

    # ---- publishing the outbox to the report bus ---------------------------------------------------
    def unpublished_reports(self, limit: int) -> list[dict[str, Any]]:
        """The oldest outbox rows not yet published to the bus (report_id, topic, payload_json)."""
        return self.rows(
            "SELECT r.report_id, r.topic, r.payload_json FROM operations_reports r WHERE NOT EXISTS "
            "(SELECT 1 FROM report_publications p WHERE p.report_id = r.report_id) "
            "ORDER BY r.created_at, r.report_id LIMIT :n", n=limit)

    def record_publications(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Record PubAcks (report_id, subject, stream, stream_seq, duplicate); a row already recorded stays."""
        if not rows:
            return 0
        with self.begin() as conn:
            result = conn.execute(sa.text(
                "INSERT INTO report_publications (report_id, subject, stream, stream_seq, duplicate) "
                "VALUES (:report_id, :subject, :stream, :stream_seq, :duplicate) ON CONFLICT (report_id) DO NOTHING"),
                [dict(r) for r in rows])
            return int(result.rowcount or 0)

    def unpublished_count(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM operations_reports r WHERE NOT EXISTS "
                               "(SELECT 1 FROM report_publications p WHERE p.report_id = r.report_id)"))

    def record_stage_duration(self, stage: str, seconds: float) -> None:
        """Add one duration to the running totals of a stage (read by the metrics endpoint)."""
        with self.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO stage_durations (stage, runs, total_seconds, last_seconds, last_at_ms) VALUES (:s, 1, :d, :d, :t) "
                "ON CONFLICT (stage) DO UPDATE SET runs = stage_durations.runs + 1, "
                "total_seconds = stage_durations.total_seconds + excluded.total_seconds, "
                "last_seconds = excluded.last_seconds, last_at_ms = excluded.last_at_ms"),
                {"s": stage, "d": float(seconds), "t": int(time.time() * 1000)})

    # ---- generic reads used by tests, status and benchmarks --------------------------------------
    def scalar(self, sql: str, **params: Any) -> Any:
        with self.begin() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.begin() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


    # ---- governance (issue 6): contracts, approvals, assignment log, EvalTrace inputs ------- BEGIN governance
    # Used by governance_ops.py; tables from sql/<dialect>/0003_governance.sql.
    def record_contract_row(self, row: Mapping[str, Any]) -> bool:
        """Insert one experiment contract (idempotent on (experiment_id, contract_digest)); True if new."""
        with self.begin() as conn:
            result = conn.execute(sa.text(
                "INSERT INTO experiment_contracts (experiment_id, contract_digest, contract_json, risk_level, required_roles) "
                "VALUES (:experiment_id, :contract_digest, :contract_json, :risk_level, :required_roles) "
                "ON CONFLICT (experiment_id, contract_digest) DO NOTHING"), dict(row))
            return result.rowcount == 1

    def contract_rows(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT id, experiment_id, contract_digest, contract_json, risk_level, required_roles, recorded_at "
                         "FROM experiment_contracts WHERE experiment_id = :e ORDER BY id", e=experiment_id)

    def insert_approval(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Append one approval; the same (experiment, digest, role, approver) again returns the stored row.
        Returns (row, newly_inserted)."""
        with self.begin() as conn:
            result = conn.execute(sa.text(
                "INSERT INTO approvals (experiment_id, contract_digest, approver, role, note) "
                "VALUES (:experiment_id, :contract_digest, :approver, :role, :note) "
                "ON CONFLICT (experiment_id, contract_digest, role, approver) DO NOTHING"), dict(row))
            stored = conn.execute(sa.text(
                "SELECT id, experiment_id, contract_digest, approver, role, approved_at, note FROM approvals "
                "WHERE experiment_id = :experiment_id AND contract_digest = :contract_digest AND role = :role "
                "AND approver = :approver"), dict(row)).mappings().one()
            return dict(stored), result.rowcount == 1

    def approval_rows(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT id, experiment_id, contract_digest, approver, role, approved_at, note FROM approvals "
                         "WHERE experiment_id = :e ORDER BY id", e=experiment_id)

    def append_assignments(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Append assignment records in one bulk statement (PostgreSQL COPY, SQLite executemany). Never updates."""
        if not rows:
            return 0
        columns = ("experiment_id", "contract_digest", "unit_id", "variant", "bucket", "reason", "detail")
        with self.begin() as conn:
            if self.dialect == "postgresql":
                buffer = io.StringIO()
                # NULL is an unquoted empty field; detail is never the empty string (it names a market/unit/principal).
                csv.writer(buffer).writerows([row[c] for c in columns] for row in rows)
                buffer.seek(0)
                conn.connection.driver_connection.cursor().copy_expert(
                    f"COPY assignments ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buffer)
            else:
                conn.connection.driver_connection.cursor().executemany(
                    f"INSERT INTO assignments ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    [tuple(row[c] for c in columns) for row in rows])
        return len(rows)

    def assignment_counts(self, experiment_id: str) -> list[dict[str, Any]]:
        """Logged assignments grouped by (contract_digest, variant, reason, detail); detail is NULL unless forced."""
        return self.rows("SELECT contract_digest, variant, reason, detail, COUNT(*) AS n FROM assignments "
                         "WHERE experiment_id = :e GROUP BY contract_digest, variant, reason, detail "
                         "ORDER BY contract_digest, variant, reason, detail", e=experiment_id)

    def assignment_rows(self, experiment_id: str, unit_id: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT id, experiment_id, contract_digest, unit_id, variant, bucket, reason, detail, assigned_at "
               "FROM assignments WHERE experiment_id = :e" + (" AND unit_id = :u" if unit_id is not None else "") + " ORDER BY id")
        return self.rows(sql, e=experiment_id, u=unit_id)

    def units_assigned_off_control(self, experiment_id: str, unit_ids: Sequence[str], control: str) -> list[dict[str, Any]]:
        """Logged assignments of the given units to a variant other than ``control`` (ETH audit of forbidden units)."""
        found: list[dict[str, Any]] = []
        query = sa.text("SELECT unit_id, variant, contract_digest, COUNT(*) AS n FROM assignments "
                        "WHERE experiment_id = :e AND variant <> :c AND unit_id IN :units "
                        "GROUP BY unit_id, variant, contract_digest ORDER BY unit_id, variant, contract_digest"
                        ).bindparams(sa.bindparam("units", expanding=True))
        units = sorted(set(unit_ids))
        with self.begin() as conn:
            for start in range(0, len(units), 5_000):  # stay under SQLite's bound-variable limit
                found += [dict(r) for r in conn.execute(
                    query, {"e": experiment_id, "c": control, "units": units[start:start + 5_000]}).mappings()]
        return found

    def stop_rule_reports(self, experiment_id: str) -> list[dict[str, Any]]:
        """Emitted stop-rule reports (event_type EVAL_STOP_*) of one experiment, oldest first."""
        return self.rows("SELECT report_id, event_type, payload_json, created_at FROM operations_reports "
                         "WHERE experiment_id = :e AND substr(event_type, 1, :n) = :p ORDER BY created_at, report_id",
                         e=experiment_id, p="EVAL_STOP_", n=len("EVAL_STOP_"))

    def signoff_rows(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT id, report_id, verdict, approver, note, signed_at FROM signoffs "
                         "WHERE experiment_id = :e ORDER BY id", e=experiment_id)

    def promotion_rows(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT id, report_id, variant_slug, verdict, signoff_id, promoted_at FROM promotions "
                         "WHERE experiment_id = :e ORDER BY id", e=experiment_id)

    def sample_head(self, experiment_id: str) -> dict[str, Any] | None:
        """The last sample of an experiment's hash chain (sample_n, sample_hash, recorded_at_ms), or None."""
        rows = self.rows("SELECT sample_n, sample_hash, recorded_at_ms FROM experiment_samples WHERE experiment_id = :e "
                         "ORDER BY sample_n DESC LIMIT 1", e=experiment_id)
        return rows[0] if rows else None

    def governance_event_times(self, experiment_id: str) -> dict[str, Any]:
        """Latest recorded time per source for one experiment (EvalTrace ``as_of``); values are datetimes
        (PostgreSQL), ISO strings (SQLite), epoch ms (``last_sample_ms``) or None."""
        return self.rows(
            "SELECT (SELECT created_at FROM experiments WHERE experiment_id = :e) AS registered, "
            "(SELECT MAX(recorded_at_ms) FROM experiment_samples WHERE experiment_id = :e) AS last_sample_ms, "
            "(SELECT MAX(recorded_at) FROM experiment_contracts WHERE experiment_id = :e) AS contracts, "
            "(SELECT MAX(approved_at) FROM approvals WHERE experiment_id = :e) AS approvals, "
            "(SELECT MAX(assigned_at) FROM assignments WHERE experiment_id = :e) AS assignments, "
            "(SELECT MAX(evaluated_at) FROM experiment_evaluations WHERE experiment_id = :e) AS evaluations, "
            "(SELECT MAX(computed_at) FROM causal_estimates WHERE experiment_id = :e) AS causal, "
            "(SELECT MAX(created_at) FROM experiment_verdicts WHERE experiment_id = :e) AS verdicts, "
            "(SELECT MAX(signed_at) FROM signoffs WHERE experiment_id = :e) AS signoffs, "
            "(SELECT MAX(promoted_at) FROM promotions WHERE experiment_id = :e) AS promotions, "
            "(SELECT MAX(created_at) FROM operations_reports WHERE experiment_id = :e) AS reports", e=experiment_id)[0]
    # ---- END governance ----------------------------------------------------------------------------------------

    # ---- decisions: evaluations, causal estimates, verdicts --------------------------------------------
    def winsorized_delta_stats(self, experiment_id: str, pct: float, column: str = "edge_delta_bps",
                               upto: int | None = None) -> dict[str, Any] | None:
        """Statistics of the metric clipped at its ``pct`` and ``100 - pct`` percentiles (linear interpolation, as
        numpy and PostgreSQL's percentile_cont), computed in the database: two ordered probes and one aggregate.
        ``upto``: only the first ``upto`` pairs (a planned look). Sums are about the lower clip point."""
        col = _metric(column)
        window = "" if upto is None else " AND sample_n <= :upto"
        n = int(self.scalar(f"SELECT COUNT({col}) FROM experiment_samples WHERE experiment_id = :e{window}",
                            e=experiment_id, upto=upto))
        if n == 0:
            return None

        def quantile(q: float) -> float:
            position = q * (n - 1)
            lower = int(position)
            values = [r["v"] for r in self.rows(
                f"SELECT {col} AS v FROM experiment_samples WHERE experiment_id = :e AND {col} IS NOT NULL{window} "
                f"ORDER BY {col} LIMIT 2 OFFSET :o", e=experiment_id, o=lower, upto=upto)]
            if len(values) == 1 or position == lower:
                return float(values[0])
            return float(values[0] + (values[1] - values[0]) * (position - lower))

        lo, hi = quantile(pct / 100.0), quantile(1 - pct / 100.0)
        # Clipped values minus the lower clip point lie in [0, hi - lo]: sums of powers lose no digits.
        y = f"((CASE WHEN {col} < :lo THEN :lo WHEN {col} > :hi THEN :hi ELSE {col} END) - :lo)"
        row = self.rows(
            f"SELECT COUNT({col}) AS n, SUM({y}) AS s, SUM({y} * {y}) AS ss, SUM({y} * {y} * {y}) AS s3, "
            f"SUM(CASE WHEN {col} < :lo OR {col} > :hi THEN 1 ELSE 0 END) AS k "
            f"FROM experiment_samples WHERE experiment_id = :e AND {col} IS NOT NULL{window}",
            e=experiment_id, lo=lo, hi=hi, upto=upto)[0]
        return {"n": int(row["n"]), "total": float(row["s"]), "total_sq": float(row["ss"]), "shift": lo,
                "total_cube": float(row["s3"]), "lower": lo, "upper": hi, "n_clipped": int(row["k"]), "pct": pct}


    def arm_fill_counts(self, exp: Mapping[str, Any]) -> tuple[int, int]:
        """Live fills routed to the variant and to the control since the experiment started (for the SRM check)."""
        row = self.rows(
            "SELECT SUM(CASE WHEN strategy_slug = :v THEN 1 ELSE 0 END) AS nv, SUM(CASE WHEN strategy_slug = :c THEN 1 ELSE 0 END) AS nc "
            "FROM raw_reports WHERE mode = 'live' AND strategy_slug IN (:v, :c) AND recorded_at_ms >= :t "
            "AND (experiment_id IS NULL OR experiment_id = :e)",
            v=exp["variant_slug"], c=exp["control_slug"], t=exp["started_at_ms"], e=exp["experiment_id"])[0]
        return int(row["nv"] or 0), int(row["nc"] or 0)


    def experiment_fills(self, exp: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Live fills of both arms (limited-live causal analysis): treatment flag, outcome in bps, propensity, covariates."""
        return self.rows(
            "SELECT report_id, CASE WHEN strategy_slug = :v THEN 1 ELSE 0 END AS treatment, "
            "edge_pusd / notional_pusd * 10000.0 AS outcome_bps, assignment_propensity AS propensity, covariates_json, "
            "market_id, recorded_at_ms FROM raw_reports WHERE mode = 'live' AND strategy_slug IN (:v, :c) "
            "AND recorded_at_ms >= :t AND (experiment_id IS NULL OR experiment_id = :e) ORDER BY recorded_at_ms, report_id",
            v=exp["variant_slug"], c=exp["control_slug"], t=exp["started_at_ms"], e=exp["experiment_id"])


    def sample_deltas_with_covariates(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT edge_delta_bps, covariates_json FROM experiment_samples WHERE experiment_id = :e ORDER BY sample_n",
                          e=experiment_id)


    def _insert_returning_id(self, conn: Connection, table: str, row: Mapping[str, Any]) -> int:
        columns = ", ".join(row)
        values = ", ".join(f":{k}" for k in row)
        return int(conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING id"), dict(row)).scalar())


    def insert_evaluation(self, experiment_id: str, evaluation: Mapping[str, Any]) -> int:
        with self.begin() as conn:
            return self._insert_returning_id(conn, "experiment_evaluations", {
                "experiment_id": experiment_id, "samples": evaluation["samples"], "verdict": evaluation["verdict"],
                "ci_method": evaluation["ci_method"], "ci_95_low": evaluation.get("ci_95_low"),
                "ci_95_high": evaluation.get("ci_95_high"), "fixed_ci_95_low": evaluation.get("fixed_ci_95_low"),
                "fixed_ci_95_high": evaluation.get("fixed_ci_95_high"), "edge_delta_bps": evaluation.get("edge_delta_bps"),
                "p_value": evaluation.get("p_value"), "power": evaluation.get("power"),
                "drift_signalled": bool(evaluation.get("drift_signalled")),
                "evaluation_json": json.dumps(evaluation, sort_keys=True)})


    def latest_row(self, table: str, experiment_id: str) -> dict[str, Any] | None:
        if table not in ("experiment_evaluations", "causal_estimates", "experiment_verdicts"):
            raise ValueError(table)
        rows = self.rows(f"SELECT * FROM {table} WHERE experiment_id = :e ORDER BY id DESC LIMIT 1", e=experiment_id)
        return rows[0] if rows else None


    def insert_causal(self, experiment_id: str, samples: int, fills: int, result: Mapping[str, Any]) -> int:
        with self.begin() as conn:
            return self._insert_returning_id(conn, "causal_estimates", {
                "experiment_id": experiment_id, "samples": samples, "fills": fills, "result_json": json.dumps(result, sort_keys=True)})


    def last_reported_verdict(self, experiment_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT verdict_json FROM experiment_verdicts WHERE experiment_id = :e AND report_id IS NOT NULL "
                          "ORDER BY id DESC LIMIT 1", e=experiment_id)
        return json.loads(rows[0]["verdict_json"]) if rows else None


    def latest_result_report_id(self, experiment_id: str) -> str | None:
        return self.scalar("SELECT report_id FROM experiment_verdicts WHERE experiment_id = :e AND report_id IS NOT NULL "
                            "ORDER BY id DESC LIMIT 1", e=experiment_id)


    def _reference_sql(self, expr: str) -> str:
        """Scalar subquery: the metric's first recorded value in the experiment, the reference its sums are
        taken about (so the variance of data far from zero, e.g. 1e8 + N(0, 1), keeps its digits)."""
        return (f"COALESCE((SELECT {expr} FROM experiment_samples WHERE experiment_id = :e AND {expr} IS NOT NULL "
                f"ORDER BY sample_n LIMIT 1), 0.0)")

    def cumulative_delta_stats(self, experiment_id: str, upto: int, points: int = 200) -> list[tuple[int, float, float, float]]:
        """(n, Σ(d-k), Σ(d-k)², k) of edge_delta_bps after sample n, at about ``points`` checkpoints up to sample
        ``upto``, k the experiment's first delta: window sums computed in the database, so a chart of the confidence
        sequence never loads sample rows. sample_n runs 1..N without gaps (the hash chain guarantees it), so n is
        also the count."""
        step = max(1, -(-upto // points))
        rows = self.rows(
            f"WITH ref AS (SELECT {self._reference_sql('edge_delta_bps')} AS k) "
            "SELECT n, s, ss, k FROM (SELECT sample_n AS n, ref.k AS k, SUM(edge_delta_bps - ref.k) OVER (ORDER BY sample_n) AS s, "
            "SUM((edge_delta_bps - ref.k) * (edge_delta_bps - ref.k)) OVER (ORDER BY sample_n) AS ss "
            "FROM experiment_samples CROSS JOIN ref "
            "WHERE experiment_id = :e AND sample_n <= :upto) c WHERE n % :step = 0 OR n = :upto ORDER BY n",
            e=experiment_id, upto=upto, step=step)
        return [(int(r["n"]), float(r["s"]), float(r["ss"]), float(r["k"])) for r in rows]

    def metric_stats(self, experiment_id: str) -> dict[str, tuple]:
        """Sufficient statistics of every surface metric in one aggregate query, about each column's first value k.

        Per-pair metrics: (n, Σ(x-k), Σ(x-k)², k, Σ(x-k)³), i.e. ``stats.SufficientStats(n, total, total_sq, shift,
        total_cube)``. Ratio metrics: (n, Σu, Σv, Σu², Σv², Σuv, kx, ky) with u = numerator - kx, v = denominator - ky,
        i.e. ``stats.RatioStats``."""
        columns = dict(METRIC_EXPRESSIONS)
        for num, den in RATIO_METRICS.values():
            columns.setdefault(num, num)
            columns.setdefault(den, den)
        refs = ", ".join(f"{self._reference_sql(expr)} AS {name}_k" for name, expr in columns.items())
        parts = []
        for name, expr in METRIC_EXPRESSIONS.items():
            y = f"({expr} - ref.{name}_k)"
            parts.append(f"COUNT({expr}) AS {name}_n, COALESCE(SUM({y}), 0) AS {name}_s, "
                         f"COALESCE(SUM({y} * {y}), 0) AS {name}_ss, COALESCE(SUM({y} * {y} * {y}), 0) AS {name}_s3, "
                         f"MAX(ref.{name}_k) AS {name}_k")
        for name, (num, den) in RATIO_METRICS.items():
            u, v, both = f"({num} - ref.{num}_k)", f"({den} - ref.{den}_k)", f"{num} IS NOT NULL AND {den} IS NOT NULL"
            parts.append(f"SUM(CASE WHEN {both} THEN 1 ELSE 0 END) AS {name}_n, "
                         + ", ".join(f"COALESCE(SUM(CASE WHEN {both} THEN {e} END), 0) AS {name}_{k}" for k, e in (
                             ("su", u), ("sv", v), ("suu", f"{u} * {u}"), ("svv", f"{v} * {v}"), ("suv", f"{u} * {v}")))
                         + f", MAX(ref.{num}_k) AS {name}_kx, MAX(ref.{den}_k) AS {name}_ky")
        row = self.rows(f"WITH ref AS (SELECT {refs}) SELECT {', '.join(parts)} FROM experiment_samples CROSS JOIN ref "
                        "WHERE experiment_id = :e", e=experiment_id)[0]
        out: dict[str, tuple] = {name: (int(row[f"{name}_n"]), float(row[f"{name}_s"]), float(row[f"{name}_ss"]),
                                        float(row[f"{name}_k"] or 0.0), float(row[f"{name}_s3"])) for name in METRIC_EXPRESSIONS}
        for name in RATIO_METRICS:
            out[name] = (int(row[f"{name}_n"] or 0), *(float(row[f"{name}_{k}"]) for k in ("su", "sv", "suu", "svv", "suv")),
                         float(row[f"{name}_kx"] or 0.0), float(row[f"{name}_ky"] or 0.0))
        return out

    def look_delta_stats(self, experiment_id: str, look_samples: Sequence[int]) -> list[tuple[int, float, float, float, float]]:
        """Statistics of edge_delta_bps over the first n_k pairs for each planned look n_1 < ... < n_K, as
        ``metric_stats`` tuples: one aggregate grouped by look, accumulated here (pairs 1..N are gapless)."""
        bounds = [int(b) for b in look_samples]
        if not bounds:
            return []
        case = " ".join(f"WHEN sample_n <= :b{i} THEN {i}" for i in range(len(bounds)))
        params = {f"b{i}": b for i, b in enumerate(bounds)}
        y = "(edge_delta_bps - ref.k)"
        rows = self.rows(
            f"WITH ref AS (SELECT {self._reference_sql('edge_delta_bps')} AS k) "
            f"SELECT CASE {case} END AS look, COUNT(*) AS n, SUM({y}) AS s, SUM({y} * {y}) AS ss, "
            f"SUM({y} * {y} * {y}) AS s3, MAX(ref.k) AS k FROM experiment_samples CROSS JOIN ref "
            f"WHERE experiment_id = :e AND sample_n <= :b{len(bounds) - 1} GROUP BY CASE {case} END",
            e=experiment_id, **params)
        by_look = {int(r["look"]): r for r in rows}
        out, n, s1, s2, s3 = [], 0, 0.0, 0.0, 0.0
        k = float(rows[0]["k"]) if rows else 0.0
        for i, b in enumerate(bounds):
            r = by_look.get(i)
            if r is not None:
                n, s1, s2, s3 = n + int(r["n"]), s1 + float(r["s"]), s2 + float(r["ss"]), s3 + float(r["s3"])
            if n < b:  # this look's pairs are not all recorded yet
                break
            out.append((n, s1, s2, k, s3))
        return out

    def covariate_stats(self, experiment_id: str, covariates: Sequence[str]) -> dict[str, Any]:
        """Sufficient statistics for regressing edge_delta_bps on numeric covariates (``stats.RegressionStats``),
        about the first pair's values, in one aggregate; plus the count of pairs lacking a numeric value for
        any of them (then no adjustment is made, nothing is dropped silently)."""
        names = list(covariates)
        if self.dialect == "postgresql":
            def cov(name: str) -> str:
                lit = "'" + name.replace("'", "''") + "'"
                return (f"(CASE WHEN jsonb_typeof(CAST(covariates_json AS jsonb) -> {lit}) = 'number' "
                        f"THEN CAST(CAST(covariates_json AS jsonb) ->> {lit} AS DOUBLE PRECISION) END)")
        else:
            def cov(name: str) -> str:
                path = "'$.\"" + name.replace("'", "''").replace('"', '') + "\"'"
                return (f"(CASE WHEN json_type(covariates_json, {path}) IN ('integer', 'real') "
                        f"THEN CAST(json_extract(covariates_json, {path}) AS REAL) END)")
        xs = [cov(c) for c in names]
        complete = " AND ".join(f"{x} IS NOT NULL" for x in xs) or "1 = 1"
        first = self.rows(
            f"SELECT edge_delta_bps AS d, {', '.join(f'{x} AS x{i}' for i, x in enumerate(xs))} FROM experiment_samples "
            f"WHERE experiment_id = :e AND {complete} ORDER BY sample_n LIMIT 1", e=experiment_id)
        total = int(self.scalar("SELECT COUNT(*) FROM experiment_samples WHERE experiment_id = :e", e=experiment_id))
        if not first:
            return {"covariates": names, "pairs": total, "missing": total, "stats": None}
        kd = float(first[0]["d"])
        kx = [float(first[0][f"x{i}"]) for i in range(len(xs))]
        ys = [f"({x} - :k{i})" for i, x in enumerate(xs)]
        d = "(edge_delta_bps - :kd)"
        cols = [f"COUNT(*) AS n", f"SUM({d}) AS sd", f"SUM({d} * {d}) AS sdd"]
        cols += [f"SUM({y}) AS sx{i}" for i, y in enumerate(ys)]
        cols += [f"SUM({y} * {d}) AS sxd{i}" for i, y in enumerate(ys)]
        cols += [f"SUM({ys[i]} * {ys[j]}) AS sxx{i}_{j}" for i in range(len(ys)) for j in range(i, len(ys))]
        params = {f"k{i}": v for i, v in enumerate(kx)}
        row = self.rows(f"SELECT {', '.join(cols)} FROM experiment_samples WHERE experiment_id = :e AND {complete}",
                        e=experiment_id, kd=kd, **params)[0]
        p = len(xs)
        sxx = [[0.0] * p for _ in range(p)]
        for i in range(p):
            for j in range(i, p):
                sxx[i][j] = sxx[j][i] = float(row[f"sxx{i}_{j}"])
        stats = {"n": int(row["n"]), "sum_d": float(row["sd"]), "sum_dd": float(row["sdd"]),
                 "sum_x": tuple(float(row[f"sx{i}"]) for i in range(p)), "sum_xx": tuple(map(tuple, sxx)),
                 "sum_xd": tuple(float(row[f"sxd{i}"]) for i in range(p)), "shift_d": kd, "shift_x": tuple(kx)}
        return {"covariates": names, "pairs": total, "missing": total - int(row["n"]), "stats": stats}

    def insert_verdict(self, conn: Connection, row: Mapping[str, Any]) -> int:
        return self._insert_returning_id(conn, "experiment_verdicts", row)

    def latest_verdicts(self) -> dict[str, dict[str, Any]]:
        """The newest verdict row of every experiment (what `status` shows)."""
        rows = self.rows("SELECT v.* FROM experiment_verdicts v JOIN (SELECT experiment_id, MAX(id) AS id FROM experiment_verdicts "
                         "GROUP BY experiment_id) m ON m.id = v.id")
        return {r["experiment_id"]: r for r in rows}

    def latest_causal_all(self) -> dict[str, dict[str, Any]]:
        rows = self.rows("SELECT c.* FROM causal_estimates c JOIN (SELECT experiment_id, MAX(id) AS id FROM causal_estimates "
                         "GROUP BY experiment_id) m ON m.id = c.id")
        return {r["experiment_id"]: r for r in rows}

    # ---- drift signals (outbox to the StrategyRegistry) ------------------------------------------------
    def insert_signal(self, conn: Connection, row: Mapping[str, Any]) -> bool:
        """Record a signal once per (experiment, signal_type); False if one already exists."""
        result = conn.execute(sa.text(
            "INSERT INTO strategy_registry_signals (idempotency_key, experiment_id, variant_slug, signal_type, verdict_id, "
            "payload_json) VALUES (:idempotency_key, :experiment_id, :variant_slug, :signal_type, :verdict_id, :payload_json) "
            "ON CONFLICT DO NOTHING"), dict(row))
        return result.rowcount == 1

    def signals(self, experiment_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        where, params = _where(experiment_id=experiment_id, delivery_status=status)
        return self.rows(f"SELECT * FROM strategy_registry_signals{where} ORDER BY id", **params)

    def mark_signal(self, signal_id: int, *, delivered: bool, error: str | None = None) -> None:
        with self.begin() as conn:
            if delivered:
                conn.execute(sa.text("UPDATE strategy_registry_signals SET delivery_status = 'delivered', attempts = attempts + 1, "
                                     "last_error = NULL, delivered_at = CURRENT_TIMESTAMP WHERE id = :i AND delivery_status = 'pending'"),
                             {"i": signal_id})
            else:
                conn.execute(sa.text("UPDATE strategy_registry_signals SET attempts = attempts + 1, last_error = :err WHERE id = :i"),
                             {"i": signal_id, "err": (error or "")[:1000]})

    # ---- sign-offs and promotions ------------------------------------------------------------------------
    def insert_signoff(self, experiment_id: str, report_id: str, verdict: str, approver: str, note: str | None) -> dict[str, Any]:
        with self.begin() as conn:
            new_id = self._insert_returning_id(conn, "signoffs", {
                "experiment_id": experiment_id, "report_id": report_id, "verdict": verdict, "approver": approver, "note": note})
        return self.rows("SELECT * FROM signoffs WHERE id = :i", i=new_id)[0]

    def signoffs(self, experiment_id: str | None = None) -> list[dict[str, Any]]:
        if experiment_id is None:
            return self.rows("SELECT * FROM signoffs ORDER BY id")
        return self.rows("SELECT * FROM signoffs WHERE experiment_id = :e ORDER BY id", e=experiment_id)

    def insert_promotion(self, conn: Connection, row: Mapping[str, Any]) -> bool:
        result = conn.execute(sa.text(
            "INSERT INTO promotions (experiment_id, report_id, variant_slug, verdict, signoff_id) "
            "VALUES (:experiment_id, :report_id, :variant_slug, :verdict, :signoff_id) ON CONFLICT DO NOTHING"), dict(row))
        return result.rowcount == 1

    def promotions(self, experiment_id: str | None = None) -> list[dict[str, Any]]:
        if experiment_id is None:
            return self.rows("SELECT * FROM promotions ORDER BY id")
        return self.rows("SELECT * FROM promotions WHERE experiment_id = :e ORDER BY id", e=experiment_id)

    def report(self, report_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT payload_json FROM operations_reports WHERE report_id = :r", r=report_id)
        return json.loads(rows[0]["payload_json"]) if rows else None

    # ---- continuous operation: sensor reads and stall episodes ----------------------------------------------
    def sensor_snapshot(self, experiment_id: str | None = None) -> list[dict[str, Any]]:
        """Per experiment (or the one named), what the sensors and `run` decide from, in one query over small
        tables (never sample rows): counts, the pairing watermark and the sample count of the latest verdict (the
        evaluation watermark)."""
        where = "WHERE e.experiment_id = :e " if experiment_id is not None else ""
        return self.rows(
            "SELECT e.experiment_id, e.status, e.mode, e.variant_slug, e.control_slug, e.min_samples_for_decision, "
            "e.registered_at_ms, e.source_file, COALESCE(p.samples, 0) AS samples, p.last_appended_at_ms, "
            "p.paired_through_batch, (SELECT v.samples FROM experiment_verdicts v WHERE v.experiment_id = e.experiment_id "
            "ORDER BY v.id DESC LIMIT 1) AS evaluated_samples FROM experiments e "
            "LEFT JOIN experiment_pairing_state p ON p.experiment_id = e.experiment_id "
            f"{where}ORDER BY e.experiment_id", e=experiment_id)

    def known_experiment_ids(self, experiment_ids: Sequence[str]) -> set[str]:
        """The ids among ``experiment_ids`` that are registered experiments."""
        query = sa.text("SELECT experiment_id FROM experiments WHERE experiment_id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True))
        known: set[str] = set()
        with self.begin() as conn:
            for start in range(0, len(experiment_ids), 5_000):
                batch = list(experiment_ids[start:start + 5_000])
                if batch:
                    known.update(r[0] for r in conn.execute(query, {"ids": batch}))
        return known

    def newest_batch_by_slug(self) -> dict[str, int]:
        """strategy_slug -> the newest ingestion batch that brought fills of it."""
        rows = self.rows("SELECT strategy_slug, MAX(batch_id) AS newest FROM ingestion_batch_slugs GROUP BY strategy_slug")
        return {r["strategy_slug"]: int(r["newest"]) for r in rows}

    @contextmanager
    def advisory_lock(self, namespace: int, key: str) -> Iterator[None]:
        """Hold a lock named (namespace, key) across transactions and processes until the block ends.

        PostgreSQL: a session advisory lock on a connection held for the block. SQLite: an exclusive ``flock`` on a
        file next to the database (processes sharing a SQLite store share its host)."""
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:n, hashtext(:k))"), {"n": namespace, "k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:n, hashtext(:k))"), {"n": namespace, "k": key})
                    conn.commit()
            return
        import fcntl
        import hashlib

        database = sa.engine.make_url(self.url).database
        folder = Path(f"{database}.locks") if database and database != ":memory:" else Path(tempfile.gettempdir()) / "experimenttracker-locks"
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(f"{namespace}:{key}".encode()).hexdigest()[:32]
        with open(folder / name, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def batch_slugs_since(self, batch_id: int) -> tuple[int, dict[str, int]]:
        """(newest ingestion batch id, fills per strategy slug in batches after ``batch_id``)."""
        newest = self.scalar("SELECT COALESCE(MAX(id), 0) FROM ingestion_batches")
        rows = self.rows("SELECT strategy_slug, SUM(fills) AS n FROM ingestion_batch_slugs WHERE batch_id > :b AND batch_id <= :m "
                         "GROUP BY strategy_slug", b=batch_id, m=newest)
        return int(newest), {r["strategy_slug"]: int(r["n"]) for r in rows}

    def open_stall(self, experiment_id: str, reason: str, detail: str, now_ms: int) -> dict[str, Any] | None:
        """Start a stall episode unless one is open; returns the new episode (the caller emits once)."""
        with self.begin() as conn:
            if conn.execute(sa.text("SELECT 1 FROM experiment_stalls WHERE experiment_id = :e AND resolved_at_ms IS NULL"),
                            {"e": experiment_id}).first():
                return None
            stall_id = self._insert_returning_id(conn, "experiment_stalls", {
                "experiment_id": experiment_id, "reason": reason, "detail": detail[:1000], "started_at_ms": now_ms})
            conn.execute(sa.text("UPDATE experiments SET status = 'stalled' WHERE experiment_id = :e AND status = 'active'"),
                         {"e": experiment_id})
            return {"id": stall_id, "experiment_id": experiment_id, "reason": reason, "detail": detail, "started_at_ms": now_ms}

    def resolve_stall(self, experiment_id: str, now_ms: int) -> dict[str, Any] | None:
        with self.begin() as conn:
            row = conn.execute(sa.text("SELECT id, reason, started_at_ms FROM experiment_stalls WHERE experiment_id = :e "
                                       "AND resolved_at_ms IS NULL"), {"e": experiment_id}).mappings().first()
            if row is None:
                return None
            conn.execute(sa.text("UPDATE experiment_stalls SET resolved_at_ms = :t WHERE id = :i"), {"t": now_ms, "i": row["id"]})
            conn.execute(sa.text("UPDATE experiments SET status = 'active' WHERE experiment_id = :e AND status = 'stalled'"),
                         {"e": experiment_id})
            return {**dict(row), "resolved_at_ms": now_ms}

    def open_stalls(self) -> dict[str, dict[str, Any]]:
        return {r["experiment_id"]: r for r in self.rows("SELECT * FROM experiment_stalls WHERE resolved_at_ms IS NULL")}


def _where(**equals: Any) -> tuple[str, dict[str, Any]]:
    """A WHERE clause of column = :column for the given non-None values (column names are code, never input)."""
    present = {column: value for column, value in equals.items() if value is not None}
    clause = " AND ".join(f"{column} = :{column}" for column in present)
    return (f" WHERE {clause}" if clause else ""), present


def _conflict_row(line_no: int, fill: Fill, other_line: int, other_file: str) -> QuarantineRow:
    return QuarantineRow(
        line_number=line_no, reason_code="REPORT_CONFLICTING_REDELIVERY", report_id=fill.report_id,
        detail=f"report_id {fill.report_id} was already received with different content ({other_file}:{other_line})",
        raw_text=json.dumps({c: getattr(fill, c) for c in FILL_COLUMNS if c != "content_sha256"}, sort_keys=True)[:4096])


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def _is_connection_error(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("could not connect", "connection refused", "unable to open database", "does not exist",
                                   "server closed the connection", "timeout expired", "could not translate host"))
