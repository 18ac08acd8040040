"""Ingest the landing folder (the report bus archive): every new complete line once, validated, de-duplicated, accounted for."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from experimenttracker_pipeline.stages.ingestion.validation import (
    Fill,
    bounded_raw_text,
    validate_line,
)
from experimenttracker_pipeline.stages.ingestion.queries import (
    LandingOffsetMoved,
    QuarantineRow,
    ingest_batch,
    landing_offset,
    landing_state,
    reset_landing_offset,
)
from experimenttracker_pipeline.store import Store, advisory_lock

log = logging.getLogger(__name__)


class ReportBusUnavailable(RuntimeError):
    """The report bus archive (landing folder) cannot be read."""


@dataclass
class IngestionResult:
    files_seen: int = 0
    files_read: int = 0
    lines_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: Counter = field(default_factory=Counter)
    rotated_files: list[str] = field(default_factory=list)
    stopped: bool = False  # a stop was requested; the files not finished are read by the next run

    @property
    def balanced(self) -> bool:
        return self.lines_read == self.accepted + self.duplicates + self.quarantined


def landing_files(landing_dir: Path) -> list[Path]:
    if not landing_dir.is_dir():
        raise ReportBusUnavailable(f"report bus archive {landing_dir} is not a readable folder")
    try:
        return sorted(p for p in landing_dir.rglob("*.jsonl") if p.is_file())
    except OSError as exc:
        raise ReportBusUnavailable(f"report bus archive {landing_dir} cannot be listed: {exc}") from exc


# Advisory-lock namespace of landing-file claims (see store.advisory_lock).
LANDING_CLAIM = 7423004


def ingest_landing(store: Store, landing_dir: Path, *, chunk_lines: int = 50_000, run_id: str | None = None,
                   should_stop: Callable[[], bool] | None = None) -> IngestionResult:
    """Read every new complete line of every landing file once; appended lines are picked up next time.

    A trailing line without its newline is a write in progress: it is left for the next run. Each file is claimed
    for the time it is read (two processes ingesting one store never read a line twice: the second waits, then
    finds the offset moved). ``should_stop`` is asked between chunks; each chunk commits with its file offset, so
    stopping leaves nothing half-written and the next run continues where this one stopped.
    """
    result = IngestionResult()
    state = landing_state(store)
    for path in landing_files(landing_dir):
        result.files_seen += 1
        key = str(path.resolve())
        try:
            if path.stat().st_size == state.get(key, {}).get("byte_offset", 0):
                continue  # read to the end already (offsets only ever move forward): no claim needed
        except OSError as exc:
            raise ReportBusUnavailable(f"cannot stat {path}: {exc}") from exc
        if should_stop is not None and should_stop():
            result.stopped = True
            break
        files_read = result.files_read
        with advisory_lock(store, LANDING_CLAIM, key):
            while True:
                try:
                    _ingest_file(store, result, path, key, chunk_lines, run_id, should_stop)
                    break
                except LandingOffsetMoved as exc:  # a writer that does not claim files got there first
                    log.warning("%s; reading on from the stored offset", exc)
        result.files_read = min(result.files_read, files_read + 1)
        if result.stopped:
            break
    return result


def _ingest_file(store: Store, result: IngestionResult, path: Path, key: str, chunk_lines: int, run_id: str | None,
                 should_stop: Callable[[], bool] | None) -> None:
    # Read the offset only once the file is claimed: another process may have just finished it.
    known = landing_offset(store, key) or {"byte_offset": 0, "lines_read": 0}
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReportBusUnavailable(f"cannot stat {path}: {exc}") from exc
    offset, line_no = known["byte_offset"], known["lines_read"]
    if size < offset:
        log.warning("landing file %s shrank (%d < %d bytes): reading it again from the start", path, size, offset)
        result.rotated_files.append(key)
        reset_landing_offset(store, key, line_no)
        offset = 0
    if size == offset:
        return
    result.files_read += 1
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            while True:
                if should_stop is not None and should_stop():
                    result.stopped = True
                    return
                lines: list[bytes] = []
                chunk_start = offset
                while len(lines) < chunk_lines:
                    line = handle.readline()
                    if not line.endswith(b"\n"):
                        break  # EOF, or a partial last line still being written
                    lines.append(line)
                    offset += len(line)
                if not lines:
                    break
                _ingest_chunk(store, result, key, lines, chunk_start, offset, line_no + 1, size, run_id)
                line_no += len(lines)
    except OSError as exc:
        raise ReportBusUnavailable(f"cannot read {path}: {exc}") from exc


def _ingest_chunk(store: Store, result: IngestionResult, source: str, lines: list[bytes], start: int, end: int,
                  first_line: int, size: int, run_id: str | None) -> None:
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
                                 size_seen=size, fills=fills, rejections=rejections, run_id=run_id)
    result.lines_read += account.lines_read
    result.accepted += account.accepted
    result.duplicates += account.duplicates
    result.quarantined += account.quarantined
    for row in rejections:
        result.quarantine_reasons[row.reason_code] += 1
    conflicts = account.quarantined - len(rejections)
    if conflicts:
        result.quarantine_reasons["REPORT_CONFLICTING_REDELIVERY"] += conflicts


