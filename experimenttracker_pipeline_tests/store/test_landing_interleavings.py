"""Property: any interleaving of a writer's appends (lines split across writes included), rotations by rename
(logrotate style: bus.jsonl.1 -> bus.jsonl.2, bus.jsonl -> bus.jsonl.1, the writer's last lines landing in the
renamed file), truncate-and-rewrite of the live file, and ingestion runs never loses or duplicates a report:
once everything is read, accepted + duplicates + quarantined = complete lines written, every line accepted once,
nothing quarantined (a line still being written is never read as a fragment). SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline_tests.builders import fill

_example = itertools.count()

operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 6)),           # complete lines (finishing a pending piece first)
    st.tuples(st.just("piece"), st.integers(1, 200)),          # the first bytes of the next line, no newline yet
    st.tuples(st.just("rotate"), st.integers(0, 3)),           # rename; then this many late lines into the old file
    st.tuples(st.just("rewrite"), st.integers(0, 8)),          # truncate the live file, write this many new lines
    st.tuples(st.just("ingest"), st.integers(2, 7)),           # a run, with this many lines per chunk
), min_size=1, max_size=25)


class Writer:
    """Appends fixed-width lines (so a rewrite often has exactly the old size) to bus.jsonl, as a producer would."""

    def __init__(self, folder: Path, prefix: str):
        self.folder, self.prefix = folder, prefix
        self.serial = 0
        self.written = 0  # complete lines written
        self.pending = b""  # the line being written: its first bytes are on disk, the rest is not
        self.pending_written = 0
        self.rotations = 0
        self.handle = (folder / "bus.jsonl").open("ab", buffering=0)

    def _line(self) -> bytes:
        self.serial += 1
        record = fill(f"{self.prefix}-{self.serial:06d}", "v-slug", "shadow", f"k{self.serial % 7}", t=self.serial)
        return (json.dumps(record) + "\n").encode()

    def _finish_pending(self, handle) -> None:
        if self.pending:
            handle.write(self.pending[self.pending_written:])
            self.written += 1
            self.pending, self.pending_written = b"", 0

    def append(self, n: int, handle=None) -> None:
        handle = handle or self.handle
        self._finish_pending(handle)
        handle.write(b"".join(self._line() for _ in range(n)))
        self.written += n

    def piece(self, size: int) -> None:
        if not self.pending:
            self.pending = self._line()
        size = min(size, len(self.pending) - 1 - self.pending_written)  # never the newline: still incomplete
        if size > 0:
            self.handle.write(self.pending[self.pending_written:self.pending_written + size])
            self.pending_written += size

    def rotate(self, late_lines: int) -> None:
        self._finish_pending(self.handle)  # a producer finishes its line before it reopens
        for k in range(self.rotations, 0, -1):
            os.rename(self.folder / f"bus.jsonl.{k}", self.folder / f"bus.jsonl.{k + 1}")
        os.rename(self.folder / "bus.jsonl", self.folder / "bus.jsonl.1")
        self.rotations += 1
        if late_lines:  # still holding the old file open: these land in bus.jsonl.1
            self.append(late_lines)
        self.handle.close()
        self.handle = (self.folder / "bus.jsonl").open("ab", buffering=0)

    def rewrite(self, n: int) -> None:
        """Truncate the live file (after the reader caught up) and write fresh lines into the same inode."""
        self.pending, self.pending_written = b"", 0  # a line never finished is not a line
        self.handle.truncate(0)
        self.handle.seek(0)
        self.append(n)

    def close(self) -> None:
        self.handle.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=operations)
def test_interleavings_never_lose_or_duplicate_a_report(store, tmp_path, ops):
    n = next(_example)
    folder = tmp_path / f"landing{n}"
    folder.mkdir()
    writer = Writer(folder, f"e{n}")
    totals = {"lines_read": 0, "accepted": 0, "duplicates": 0, "quarantined": 0}

    def ingest(chunk_lines: int = 50_000) -> None:
        result = ingest_landing(store, folder, chunk_lines=chunk_lines)
        assert result.balanced
        for key in totals:
            totals[key] += getattr(result, key)

    try:
        for op, arg in ops:
            if op == "append":
                writer.append(arg)
            elif op == "piece":
                writer.piece(arg)
            elif op == "rotate":
                writer.rotate(arg)
            elif op == "rewrite":
                ingest()  # truncating what was never read would destroy lines before anyone could read them
                writer.rewrite(arg)
            else:
                ingest(arg)
        ingest()
    finally:
        writer.close()
    assert totals["quarantined"] == 0
    assert totals["lines_read"] == totals["accepted"] + totals["duplicates"] + totals["quarantined"]
    assert totals["lines_read"] == writer.written
    assert (totals["accepted"], totals["duplicates"]) == (writer.written, 0)
    stored = store.scalar("SELECT COUNT(*) FROM raw_reports WHERE report_id LIKE :p", p=f"e{n}-%")
    assert stored == writer.written
