"""Store queries of the ingestion stage: raw reports, quarantine, per-batch accounting, landing-file offsets and
the report-bus messages already stored."""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from experimenttracker_pipeline.stages.ingestion.validation import FILL_COLUMNS, Fill
from experimenttracker_pipeline.store import Store, bulk_load, upsert
from experimenttracker_pipeline.store.schema import (
    bus_messages,
    ingestion_batch_slugs,
    ingestion_batches,
    landing_files,
    quarantined_reports,
    raw_reports,
    utc_now,
)

RAW_COLUMNS = FILL_COLUMNS + ("source_file", "source_line")
INGESTION_LOCK = 7423002  # pg_advisory_xact_lock key: one ingesting writer at a time
_FILL_VALUES = operator.attrgetter(*FILL_COLUMNS)
_SQLITE_MAX_VARIABLES = 5_000  # ids per IN (...) probe, under SQLite's bound-variable limit


class LandingOffsetMoved(RuntimeError):
    """Another process stored the same chunk of a landing file first; nothing of this chunk was written."""


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


@dataclass(frozen=True)
class LandingPosition:
    """How far one landing path has been read: ``byte_offset`` into the file identified by ``file_identity``
    ("device:inode") and ``fingerprint`` (sha256 of its first ``fingerprint_bytes`` bytes and of the bytes just
    before the offset), and ``lines_read``, the last line number used under this path (line numbers never repeat
    under one path, so quarantine rows never collide)."""

    path: str
    byte_offset: int
    lines_read: int
    size_seen: int
    file_identity: str | None = None
    fingerprint: str | None = None
    fingerprint_bytes: int = 0


def landing_state(store: Store) -> dict[str, dict[str, int]]:
    """Per landing file: the byte offset and line count read so far, and the size seen then."""
    t = landing_files
    rows = store.rows(sa.select(t.c.path, t.c.byte_offset, t.c.lines_read, t.c.size_seen))
    return {r["path"]: {"byte_offset": r["byte_offset"], "lines_read": r["lines_read"], "size_seen": r["size_seen"]} for r in rows}


def landing_positions(store: Store) -> dict[str, LandingPosition]:
    """Every landing path's position, with the identity of the file it belongs to."""
    t = landing_files
    rows = store.rows(sa.select(t.c.path, t.c.byte_offset, t.c.lines_read, t.c.size_seen, t.c.file_identity,
                                t.c.fingerprint, t.c.fingerprint_bytes))
    return {r["path"]: LandingPosition(r["path"], int(r["byte_offset"]), int(r["lines_read"]), int(r["size_seen"]),
                                       r["file_identity"], r["fingerprint"], int(r["fingerprint_bytes"] or 0))
            for r in rows}


def landing_offset(store: Store, path: str) -> dict[str, int] | None:
    """The byte offset, line count and size seen stored for one landing file, or None before its first chunk."""
    t = landing_files
    rows = store.rows(sa.select(t.c.byte_offset, t.c.lines_read, t.c.size_seen).where(t.c.path == path))
    return rows[0] if rows else None


def set_landing_position(store: Store, position: LandingPosition) -> None:
    """Where reading a landing path starts: the file now at ``position.path`` and the offset reached in it
    (0 for a new file, or the offset a renamed file had reached under its old name)."""
    with store.begin() as conn:
        insert = upsert(conn, landing_files).values(
            path=position.path, byte_offset=position.byte_offset, lines_read=position.lines_read,
            size_seen=position.size_seen, file_identity=position.file_identity, fingerprint=position.fingerprint,
            fingerprint_bytes=position.fingerprint_bytes)
        conn.execute(insert.on_conflict_do_update(index_elements=["path"], set_={
            name: insert.excluded[name] for name in ("byte_offset", "lines_read", "size_seen", "file_identity",
                                                     "fingerprint", "fingerprint_bytes", "updated_at")}))


def record_refused_source(store: Store, path: str, detail: str) -> bool:
    """Record once that a landing-folder entry was refused unread (a quarantine row at line 0, empty raw text).
    Returns True when this is the first record of it."""
    t = quarantined_reports
    with store.begin() as conn:
        known = conn.execute(sa.select(t.c.id).where(t.c.source_file == path, t.c.line_number == 0)).first()
        if known is not None:
            return False
        conn.execute(t.insert().values(source_file=path, line_number=0, report_id=None,
                                       reason_code="REPORT_SOURCE_REFUSED", detail=detail[:1000], raw_text=""))
    return True


def ingest_batch(store: Store, *, source_file: str, from_offset: int, to_offset: int, first_line: int, size_seen: int,
                 fills: Sequence[tuple[int, Fill]], rejections: Sequence[QuarantineRow], run_id: str | None = None,
                 fingerprint: tuple[str, int] | None = None) -> BatchAccount:
    """Store one chunk of a landing file atomically: accepted fills, duplicates, quarantine rows, the new
    file offset (with the file's fingerprint at that offset) and the chunk's accounting row commit
    together or not at all."""
    with store.begin() as conn:
        # The chunk is stored only if the file's offset is still where this reader started: another process
        # that read the same lines first makes this one roll back instead of counting them twice.
        _advance_landing_offset(conn, source_file, from_offset, to_offset,
                                first_line - 1 + len(fills) + len(rejections), size_seen, fingerprint)
        stored = _store_reports(conn, source_file=source_file, from_offset=from_offset, to_offset=to_offset,
                                first_line=first_line, fills=fills, rejections=rejections, run_id=run_id)
    return stored.account


def ingest_bus_batch(store: Store, *, stream: str, deliveries: Sequence[tuple[int, Fill | QuarantineRow | None]],
                     run_id: str | None = None) -> BusBatchAccount:
    """Store one batch of report-bus messages atomically, with each message's stream sequence.

    ``deliveries`` are (stream_seq, Fill | QuarantineRow | None) where None is a message that is not a fill
    (ignored). A sequence already in `bus_messages` was stored before (the ack after that commit was lost):
    it counts as a duplicate and nothing else is written for it.
    """
    seqs = [seq for seq, _ in deliveries]
    with store.begin() as conn:
        # Taken before the sequence probe: two consumers of one stream must not both store a redelivery.
        _lock_ingestion(conn)
        known = _known_sequences(conn, stream, seqs)
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
        stored = _store_reports(conn, source_file=stream, from_offset=min(seqs), to_offset=max(seqs),
                                first_line=min(seqs), fills=fills, rejections=rejections, run_id=run_id,
                                extra_duplicates=redelivered, ignored=len(ignored))
        outcomes = [(seq, "ignored") for seq in ignored]
        for seq, item in fresh.items():
            if item is None:
                continue
            outcome = ("quarantined" if seq in stored.quarantined_lines else
                       "accepted" if seq in stored.accepted_lines else "duplicate")
            outcomes.append((seq, outcome))
        if outcomes:
            bulk_load(conn, bus_messages, ("stream", "stream_seq", "batch_id", "outcome"),
                      [(stream, seq, stored.batch_id, outcome) for seq, outcome in outcomes])
    account = stored.account
    return BusBatchAccount(messages=len(deliveries), accepted=account.accepted, duplicates=account.duplicates,
                           quarantined=account.quarantined, ignored=len(ignored), redelivered=redelivered,
                           batch_id=stored.batch_id, quarantine_reasons=stored.quarantine_reasons)


def _store_reports(conn: Connection, *, source_file: str, from_offset: int, to_offset: int, first_line: int,
                   fills: Sequence[tuple[int, Fill]], rejections: Sequence[QuarantineRow], run_id: str | None,
                   extra_duplicates: int = 0, ignored: int = 0) -> _StoredReports:
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
    # Ingestion is serialised, so the probe below cannot race another writer of the same ids.
    _lock_ingestion(conn)
    known = _known_reports(conn, list(first_seen))
    new_fills: list[tuple[int, Fill]] = []
    for report_id, (line_no, fill) in first_seen.items():
        stored = known.get(report_id)
        if stored is None:
            new_fills.append((line_no, fill))
        elif stored[0] == fill.content_sha256:
            duplicates += 1
        else:
            quarantine.append(_conflict_row(line_no, fill, stored[2], stored[1]))
    if new_fills:
        bulk_load(conn, raw_reports, RAW_COLUMNS, ((*_FILL_VALUES(fill), source_file, line_no) for line_no, fill in new_fills))
    accepted = len(new_fills)
    if quarantine:
        conn.execute(quarantined_reports.insert(), [
            {"source_file": source_file, "line_number": q.line_number, "report_id": q.report_id,
             "reason_code": q.reason_code, "detail": q.detail[:1000], "raw_text": q.raw_text} for q in quarantine])
    account = BatchAccount(lines_read, accepted, duplicates, len(quarantine))
    if account.accepted + account.duplicates + account.quarantined != lines_read:
        raise RuntimeError(f"ingestion accounting mismatch in {source_file}: {account}")
    batch_id = conn.execute(ingestion_batches.insert().values(
        run_id=run_id, source_file=source_file, from_offset=from_offset, to_offset=to_offset, first_line=first_line,
        lines_read=lines_read, accepted=accepted, duplicates=duplicates, quarantined=len(quarantine), ignored=ignored)
        .returning(ingestion_batches.c.id)).scalar_one()
    slugs: dict[str, int] = {}
    for _, fill in new_fills:
        slugs[fill.strategy_slug] = slugs.get(fill.strategy_slug, 0) + 1
    if slugs:
        conn.execute(ingestion_batch_slugs.insert(),
                     [{"batch_id": batch_id, "strategy_slug": slug, "fills": n} for slug, n in slugs.items()])
    reasons: dict[str, int] = {}
    for q in quarantine:
        reasons[q.reason_code] = reasons.get(q.reason_code, 0) + 1
    return _StoredReports(account, int(batch_id), {line for line, _ in new_fills}, {q.line_number for q in quarantine},
                          reasons)


def _lock_ingestion(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(INGESTION_LOCK)))


def _known_sequences(conn: Connection, stream: str, seqs: Sequence[int]) -> set[int]:
    """The stream sequences of ``seqs`` already stored (redeliveries)."""
    t = bus_messages.c
    ordered = sorted(set(seqs))
    known: set[int] = set()
    for start in range(0, len(ordered), _SQLITE_MAX_VARIABLES):
        known.update(int(r[0]) for r in conn.execute(sa.select(t.stream_seq).where(
            t.stream == stream, t.stream_seq.in_(ordered[start:start + _SQLITE_MAX_VARIABLES]))))
    return known


def batch_slugs_since(store: Store, batch_id: int) -> tuple[int, dict[str, int]]:
    """(newest ingestion batch id, fills per strategy slug in batches after ``batch_id``)."""
    newest = int(store.scalar(sa.select(sa.func.coalesce(sa.func.max(ingestion_batches.c.id), 0))))
    t = ingestion_batch_slugs
    rows = store.rows(sa.select(t.c.strategy_slug, sa.func.sum(t.c.fills).label("n"))
                      .where(t.c.batch_id > batch_id, t.c.batch_id <= newest).group_by(t.c.strategy_slug))
    return newest, {r["strategy_slug"]: int(r["n"]) for r in rows}


def newest_batch_by_slug(store: Store) -> dict[str, int]:
    """strategy_slug -> the newest ingestion batch that brought fills of it."""
    t = ingestion_batch_slugs.c
    rows = store.rows(sa.select(t.strategy_slug, sa.func.max(t.batch_id).label("newest")).group_by(t.strategy_slug))
    return {r["strategy_slug"]: int(r["newest"]) for r in rows}


def _advance_landing_offset(conn: Connection, path: str, from_offset: int, to_offset: int, lines_read: int,
                            size_seen: int, fingerprint: tuple[str, int] | None = None) -> None:
    """Move a file's offset from ``from_offset`` to ``to_offset``; `LandingOffsetMoved` if it is no longer there."""
    t = landing_files
    values = {"byte_offset": to_offset, "lines_read": lines_read, "size_seen": size_seen, "updated_at": utc_now()}
    if fingerprint is not None:
        values.update(fingerprint=fingerprint[0], fingerprint_bytes=fingerprint[1])
    moved = conn.execute(sa.update(t).where(t.c.path == path, t.c.byte_offset == from_offset).values(**values)).rowcount
    if not moved and from_offset == 0:
        values.pop("updated_at")
        insert = upsert(conn, t).values(path=path, **values)
        moved = conn.execute(insert.on_conflict_do_nothing(index_elements=["path"])).rowcount
    if not moved:
        raise LandingOffsetMoved(f"{path}: another ingestion stored bytes from offset {from_offset} first")


def _known_reports(conn: Connection, report_ids: list[str]) -> dict[str, tuple[str, str, int]]:
    """report_id -> (content_sha256, source_file, source_line) for the ids already stored: one indexed probe."""
    t = raw_reports
    columns = (t.c.report_id, t.c.content_sha256, t.c.source_file, t.c.source_line)
    if conn.dialect.name == "postgresql":
        chunks = [sa.select(*columns).where(t.c.report_id == sa.any_(sa.bindparam("ids", report_ids, type_=sa.ARRAY(sa.Text))))]
    else:
        chunks = [sa.select(*columns).where(t.c.report_id.in_(report_ids[start:start + _SQLITE_MAX_VARIABLES]))
                  for start in range(0, len(report_ids), _SQLITE_MAX_VARIABLES)]
    known: dict[str, tuple[str, str, int]] = {}
    for query in chunks if report_ids else []:
        known.update((r[0], (r[1], r[2], r[3])) for r in conn.execute(query))
    return known


def _conflict_row(line_no: int, fill: Fill, other_line: int, other_file: str) -> QuarantineRow:
    return QuarantineRow(
        line_number=line_no, reason_code="REPORT_CONFLICTING_REDELIVERY", report_id=fill.report_id,
        detail=f"report_id {fill.report_id} was already received with different content ({other_file}:{other_line})",
        raw_text=json.dumps({c: getattr(fill, c) for c in FILL_COLUMNS if c != "content_sha256"}, sort_keys=True)[:4096])


def tagged_for(exp: Mapping[str, Any]) -> sa.ColumnElement[bool]:
    """A fill not tagged for another experiment: untagged, tagged with this experiment, or (a comparison of an A/B/n
    experiment) tagged with the experiment it belongs to, whose fills serve each of its comparisons."""
    r = raw_reports.c
    tags = sorted({exp["experiment_id"], exp.get("parent_experiment_id") or exp["experiment_id"]})
    return sa.or_(r.experiment_id.is_(None), r.experiment_id.in_(tags))
