"""Ingest the landing folder (the report bus archive): every complete line once, validated, de-duplicated,
accounted for.

What is guaranteed:

- Only complete lines are read: a line is complete when its newline has been written. A tail without one is a
  write in progress; it is left where it is (never quarantined, never counted in ``lines_read``) and read by a
  later run once its newline arrives.
- A file is tracked by identity, not only by name: its device and inode, and a fingerprint (sha256) of its first
  bytes already read. A file renamed inside the folder (``bus.jsonl`` -> ``bus.jsonl.1``, rotated names included)
  continues from its offset under the new name; a new file under the old name is read from byte 0; a file
  truncated, rewritten or replaced under the same name is read again from byte 0 (its known reports count as
  duplicates). When in doubt a file is read again, never skipped: a doubt costs duplicates, never a report.
- Links are never followed: a symbolic link (to a file or a folder) in the landing folder is refused, recorded
  once as a ``REPORT_SOURCE_REFUSED`` quarantine row (line 0, empty raw text), and its target is never opened.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

from experimenttracker_pipeline.stages.ingestion.queries import (
    LandingOffsetMoved,
    LandingPosition,
    QuarantineRow,
    ingest_batch,
    landing_positions,
    record_refused_source,
    set_landing_position,
)
from experimenttracker_pipeline.stages.ingestion.validation import (
    Fill,
    bounded_raw_text,
    validate_line,
)
from experimenttracker_pipeline.store import Store, advisory_lock

log = logging.getLogger(__name__)

# `bus.jsonl` and its rotated generations (`bus.jsonl.1`, `bus.jsonl.2`, ...); compressed ones (`.gz`) are not read.
LANDING_NAME = re.compile(r".+\.jsonl(\.[0-9]{1,4})?")
# The fingerprint covers at most this many leading bytes of a file, and only bytes already read (complete lines).
FINGERPRINT_BYTES = 4096
# Advisory-lock namespace of the landing-folder claim (see store.advisory_lock).
LANDING_CLAIM = 7423004


class ReportBusUnavailable(RuntimeError):
    """The report bus archive (landing folder) cannot be read."""


@dataclass
class IngestionResult:
    files_seen: int = 0
    files_read: int = 0
    lines_read: int = 0  # complete lines only
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: Counter = field(default_factory=Counter)
    rotated_files: list[str] = field(default_factory=list)  # read again from byte 0: replaced or rewritten
    renamed_files: list[str] = field(default_factory=list)  # continued under a new name from the old offset
    refused_sources: list[str] = field(default_factory=list)  # links, never followed (not lines: not in the totals)
    stopped: bool = False  # a stop was requested; the files not finished are read by the next run

    @property
    def balanced(self) -> bool:
        return self.lines_read == self.accepted + self.duplicates + self.quarantined


@dataclass(frozen=True)
class LandingEntry:
    path: str
    size: int
    identity: str


@dataclass(frozen=True)
class LandingScan:
    files: list[LandingEntry]
    refused: list[tuple[str, str]]  # (path, why)


def landing_files(landing_dir: Path) -> list[Path]:
    """The landing files (regular files with a landing name; links excluded), sorted."""
    return [Path(entry.path) for entry in scan_landing(landing_dir).files]


def scan_landing(landing_dir: Path) -> LandingScan:
    """Every regular landing file under ``landing_dir`` (recursively, sorted by path) and every link refused.

    Paths are spelled under the folder's real location, so the same file always has the same path."""
    if not landing_dir.is_dir():
        raise ReportBusUnavailable(f"report bus archive {landing_dir} is not a readable folder")
    root = os.path.realpath(landing_dir)
    files: list[LandingEntry] = []
    refused: list[tuple[str, str]] = []

    def fail(exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError) and exc.filename != root:
            return  # a subfolder removed while listing
        raise ReportBusUnavailable(f"report bus archive {landing_dir} cannot be listed: {exc}") from exc

    try:
        for folder, dirnames, filenames in os.walk(root, onerror=fail, followlinks=False):
            for name in sorted(dirnames):
                full = os.path.join(folder, name)
                if os.path.islink(full):  # os.walk lists links to folders here and does not descend into them
                    refused.append((full, _link_detail(root, full, "folder")))
            for name in filenames:
                full = os.path.join(folder, name)
                if not LANDING_NAME.fullmatch(name):
                    continue
                try:
                    info = os.lstat(full)
                except FileNotFoundError:
                    continue  # renamed or removed while listing (a rotation): the next run sees it under its new name
                if stat.S_ISLNK(info.st_mode):
                    refused.append((full, _link_detail(root, full, "file")))
                elif stat.S_ISREG(info.st_mode):
                    files.append(LandingEntry(full, info.st_size, _identity(info)))
    except OSError as exc:
        raise ReportBusUnavailable(f"report bus archive {landing_dir} cannot be listed: {exc}") from exc
    return LandingScan(sorted(files, key=lambda e: e.path), sorted(refused))


def _identity(info: os.stat_result) -> str:
    return f"{info.st_dev}:{info.st_ino}"


def _link_detail(root: str, link: str, kind: str) -> str:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    resolved = os.path.realpath(link)
    where = "inside" if resolved == root or resolved.startswith(root + os.sep) else "outside"
    return (f"symbolic link ({kind}) to {target!r} ({where} the landing folder): links are not followed and the "
            "target is not read; put the file itself in the landing folder")


def _fingerprint(handle: BinaryIO, offset: int) -> str | None:
    """The file's fingerprint at ``offset``: sha256 of its first bytes and of the bytes just before ``offset``
    (at most FINGERPRINT_BYTES each, all in complete lines already read), or None when the file is shorter.
    A file rewritten in place is recognised when either window changed."""
    head_length = min(FINGERPRINT_BYTES, offset)
    tail_start = max(0, offset - FINGERPRINT_BYTES)
    handle.seek(0)
    head = handle.read(head_length)
    handle.seek(tail_start)
    tail = handle.read(offset - tail_start)
    if len(head) != head_length or len(tail) != offset - tail_start:
        return None
    return f"{hashlib.sha256(head).hexdigest()}:{hashlib.sha256(tail).hexdigest()}"


def ingest_landing(store: Store, landing_dir: Path, *, chunk_lines: int = 50_000, run_id: str | None = None,
                   should_stop: Callable[[], bool] | None = None) -> IngestionResult:
    """Read every new complete line of every landing file once (see the module docstring for the guarantees).

    The landing folder is claimed for the time it is read: a second process ingesting the same store waits,
    then finds the offsets moved. ``should_stop`` is asked between files and chunks; each chunk commits with
    its file offset, so stopping leaves nothing half-written and the next run continues where this one stopped.
    """
    result = IngestionResult()
    scan = scan_landing(landing_dir)
    result.files_seen = len(scan.files)
    for path, detail in scan.refused:
        result.refused_sources.append(path)
        if record_refused_source(store, path, detail):
            log.warning("landing entry %s refused: %s", path, detail)
    root = os.path.realpath(landing_dir)
    with advisory_lock(store, LANDING_CLAIM, root):
        positions = landing_positions(store)  # read once the folder is claimed: another run may just have finished
        by_identity: dict[str, list[LandingPosition]] = {}
        for position in positions.values():
            if position.file_identity is not None:
                by_identity.setdefault(position.file_identity, []).append(position)
        adopted: set[str] = set()  # positions continued under a new name in this run
        for entry in scan.files:
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            try:
                _ingest_file(store, result, entry, positions, by_identity, adopted, chunk_lines, run_id, should_stop)
            except LandingOffsetMoved as exc:  # a process that does not claim the folder got there first
                log.warning("%s; the next run reads on from the stored offset", exc)
            if result.stopped:
                break
    return result


def _open(path: str) -> BinaryIO | None:
    """The file opened without following a link (it may have been swapped for one since the scan)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None  # rotated away since the scan: the next run finds it under its new name
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # became a link since the scan: the next run refuses it
        raise ReportBusUnavailable(f"cannot open {path}: {exc}") from exc
    return os.fdopen(fd, "rb")


def _resume_from(handle: BinaryIO, entry: LandingEntry, size: int, positions: Mapping[str, LandingPosition],
                 by_identity: Mapping[str, list[LandingPosition]], adopted: set[str]) -> LandingPosition | None:
    """The stored position this file continues from: its own path's, or (renamed) another path's with the
    same device, inode and fingerprint. None: a new file, read from byte 0."""
    own = positions.get(entry.path)
    candidates = [own] if own is not None else []
    candidates += sorted((p for p in by_identity.get(entry.identity, ()) if p.path != entry.path),
                         key=lambda p: -p.byte_offset)
    for position in candidates:
        if position.path in adopted or size < position.byte_offset:
            continue
        if position.file_identity is None:
            # Stored before identities were recorded: trusted by name, as then (a shrunken file is read again).
            if position.path != entry.path:
                continue
        elif position.file_identity != entry.identity:
            continue
        if position.fingerprint is not None and _fingerprint(handle, position.byte_offset) != position.fingerprint:
            continue
        return position
    return None


def _ingest_file(store: Store, result: IngestionResult, entry: LandingEntry, positions: Mapping[str, LandingPosition],
                 by_identity: Mapping[str, list[LandingPosition]], adopted: set[str], chunk_lines: int,
                 run_id: str | None, should_stop: Callable[[], bool] | None) -> None:
    handle = _open(entry.path)
    if handle is None:
        return
    with handle:
        info = os.fstat(handle.fileno())
        identity = _identity(info)
        if not stat.S_ISREG(info.st_mode) or identity != entry.identity:
            return  # replaced since the scan: the next run sees the new file
        size = info.st_size
        own = positions.get(entry.path)
        start = _resume_from(handle, entry, size, positions, by_identity, adopted)
        if start is not None and start.path != entry.path:
            adopted.add(start.path)
            result.renamed_files.append(entry.path)
            log.info("landing file %s is %s renamed: reading on from byte %d", entry.path, start.path, start.byte_offset)
        elif start is None and own is not None:
            result.rotated_files.append(entry.path)
            log.warning("landing file %s was replaced or rewritten: reading it again from the start", entry.path)
        # Line numbers only go up under one path, whichever file it holds.
        line_no = max(own.lines_read if own is not None else 0,
                      start.lines_read if start is not None and start.path != entry.path else 0)
        offset = start.byte_offset if start is not None else 0
        fingerprint = (start.fingerprint if start is not None and start.fingerprint is not None
                       else _fingerprint(handle, offset))
        here = LandingPosition(entry.path, offset, line_no, size, identity, fingerprint, min(FINGERPRINT_BYTES, offset))
        if own is None or (own.byte_offset, own.lines_read, own.file_identity, own.fingerprint) != (
                offset, line_no, identity, fingerprint):
            set_landing_position(store, here)
        if size == offset:
            return
        result.files_read += 1
        try:
            _read_lines(store, result, handle, here, chunk_lines, run_id, should_stop)
        except OSError as exc:
            raise ReportBusUnavailable(f"cannot read {entry.path}: {exc}") from exc


def _read_lines(store: Store, result: IngestionResult, handle: BinaryIO, here: LandingPosition, chunk_lines: int,
                run_id: str | None, should_stop: Callable[[], bool] | None) -> None:
    offset, line_no = here.byte_offset, here.lines_read
    handle.seek(offset)
    partial = False
    while not partial:
        if should_stop is not None and should_stop():
            result.stopped = True
            return
        lines: list[bytes] = []
        chunk_start = offset
        while len(lines) < chunk_lines:
            line = handle.readline()
            if not line.endswith(b"\n"):
                # EOF, or a line whose newline is not written yet. Reading stops here for this run: the bytes
                # just read are not consumed, so the next run reads the whole line once it is complete.
                partial = True
                break
            lines.append(line)
            offset += len(line)
        if not lines:
            return
        fingerprint = (_fingerprint(handle, offset), min(FINGERPRINT_BYTES, offset))
        handle.seek(offset)
        _ingest_chunk(store, result, here.path, lines, chunk_start, offset, line_no + 1, here.size_seen, run_id,
                      fingerprint)
        line_no += len(lines)


def _ingest_chunk(store: Store, result: IngestionResult, source: str, lines: list[bytes], start: int, end: int,
                  first_line: int, size: int, run_id: str | None, fingerprint: tuple[str, int] | None) -> None:
    fills: list[tuple[int, Fill]] = []
    rejections: list[QuarantineRow] = []
    for index, raw in enumerate(lines):
        body = raw.rstrip(b"\n").rstrip(b"\r")
        outcome = validate_line(body)
        line_number = first_line + index
        if isinstance(outcome, Fill):
            fills.append((line_number, outcome))
        else:
            rejections.append(QuarantineRow(line_number, outcome.reason_code, outcome.detail, bounded_raw_text(body), outcome.report_id))
    account = ingest_batch(store, source_file=source, from_offset=start, to_offset=end, first_line=first_line,
                           size_seen=size, fills=fills, rejections=rejections, run_id=run_id, fingerprint=fingerprint)
    result.lines_read += account.lines_read
    result.accepted += account.accepted
    result.duplicates += account.duplicates
    result.quarantined += account.quarantined
    for row in rejections:
        result.quarantine_reasons[row.reason_code] += 1
    conflicts = account.quarantined - len(rejections)
    if conflicts:
        result.quarantine_reasons["REPORT_CONFLICTING_REDELIVERY"] += conflicts
