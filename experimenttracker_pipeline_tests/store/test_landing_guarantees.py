"""What landing ingestion guarantees, on SQLite and PostgreSQL: complete lines only (a write in progress is never
lost nor quarantined), files tracked by identity across rename and rewrite, a byte-order mark dropped, links
refused unread, and poison lines (huge or extreme numbers, duplicate keys, lone surrogates) quarantined one by one
without stopping the others."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

from experimenttracker_pipeline.stages.ingestion import landing
from experimenttracker_pipeline.stages.ingestion.bus import classify
from experimenttracker_pipeline.stages.ingestion.landing import IngestionResult, ingest_landing
from experimenttracker_pipeline.stages.ingestion.queries import QuarantineRow
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.builders import fill, write_jsonl


def _lines(prefix: str, n: int, start: int = 0) -> list[str]:
    return [json.dumps(fill(f"{prefix}{i}", "v-slug", "shadow", f"k{i}", t=i)) for i in range(start, start + n)]


def _ingest(store: Store, folder: Path, **kwargs) -> IngestionResult:
    result = ingest_landing(store, folder, **kwargs)
    assert result.balanced
    return result


def _totals(store: Store) -> tuple[int, int]:
    return store.scalar("SELECT COUNT(*) FROM raw_reports"), store.scalar(
        "SELECT COUNT(*) FROM quarantined_reports WHERE line_number > 0")


# ---- 1. a file read while its writer is still appending ------------------------------------------------------
def test_a_line_completed_while_the_file_is_read_is_not_lost(store, workdirs, monkeypatch):
    """The writer finishes the half-written last line (and adds more) while the chunk before it is stored: the
    completed line is read whole by the next run, never as a fragment."""
    path = workdirs["landing"] / "bus.jsonl"
    lines = _lines("r", 12)
    complete = ("\n".join(lines[:10]) + "\n").encode()
    path.write_bytes(complete + lines[10][:25].encode())
    real = landing.ingest_batch

    def batch_then_writer_appends(*args, **kwargs):
        account = real(*args, **kwargs)
        if kwargs["to_offset"] == len(complete):  # the chunk that ended at the half-written line
            with path.open("ab") as handle:
                handle.write((lines[10][25:] + "\n" + lines[11] + "\n").encode())
        return account

    monkeypatch.setattr(landing, "ingest_batch", batch_then_writer_appends)
    first = _ingest(store, workdirs["landing"], chunk_lines=4)
    assert first.quarantined == 0 and first.lines_read in (10, 12)
    rest = _ingest(store, workdirs["landing"])
    assert first.lines_read + rest.lines_read == 12
    assert _totals(store) == (12, 0)


def test_writer_appending_random_pieces_during_repeated_runs_loses_nothing(store, workdirs):
    path = workdirs["landing"] / "bus.jsonl"
    payload = ("\n".join(_lines("w", 1500)) + "\n").encode()
    rng = random.Random(7)
    done = threading.Event()

    def writer() -> None:
        position = 0
        with path.open("ab", buffering=0) as handle:
            while position < len(payload):
                piece = rng.randint(1, 6000)
                handle.write(payload[position:position + piece])
                position += piece
        done.set()

    path.touch()
    thread = threading.Thread(target=writer)
    thread.start()
    lines_read = quarantined = 0
    while True:  # progress-based: ingest until the writer has finished, then once more
        finished = done.is_set()
        result = _ingest(store, workdirs["landing"], chunk_lines=97)
        lines_read += result.lines_read
        quarantined += result.quarantined
        if finished:
            break
    thread.join()
    assert quarantined == 0
    assert lines_read == 1500
    assert _totals(store) == (1500, 0)


def test_concurrent_runs_during_writes_and_a_rotation_count_every_line_once(store, workdirs):
    folder = workdirs["landing"]
    path = folder / "bus.jsonl"
    payload = [("\n".join(_lines(f"c{batch}-", 40)) + "\n").encode() for batch in range(12)]
    done = threading.Event()
    totals: list[IngestionResult] = []
    errors: list[BaseException] = []

    def writer() -> None:
        for batch, data in enumerate(payload):
            with path.open("ab", buffering=0) as handle:
                half = len(data) // 2 + 7  # a line split across two writes
                handle.write(data[:half])
                handle.write(data[half:])
            if batch == 5:
                os.rename(path, folder / "bus.jsonl.1")
        done.set()

    def reader() -> None:
        try:
            while True:
                finished = done.is_set()
                totals.append(_ingest(store, folder, chunk_lines=13))
                if finished:
                    return
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    path.touch()
    threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(r.lines_read for r in totals) == sum(r.accepted for r in totals) == 12 * 40
    assert sum(r.quarantined + r.duplicates for r in totals) == 0
    assert _totals(store) == (480, 0)


# ---- 2. rotation by rename --------------------------------------------------------------------------------
def test_rotation_by_rename_reads_the_new_file_from_its_start(store, workdirs):
    folder = workdirs["landing"]
    write_jsonl(folder / "bus.jsonl", _lines("old", 100))
    assert _ingest(store, folder).accepted == 100
    with (folder / "bus.jsonl").open("a") as still_open_by_writer:  # the writer holds the old file open
        os.rename(folder / "bus.jsonl", folder / "bus.jsonl.1")
        still_open_by_writer.write("\n".join(_lines("old", 5, start=100)) + "\n")  # its last lines land after the rename
    write_jsonl(folder / "bus.jsonl", _lines("new", 300))
    result = _ingest(store, folder)
    assert (result.accepted, result.duplicates, result.quarantined) == (305, 0, 0)
    assert result.renamed_files == [str(Path(os.path.realpath(folder)) / "bus.jsonl.1")]
    assert _totals(store) == (405, 0)
    # The renamed file's line numbers go on from where its old name stopped.
    assert store.scalar("SELECT MIN(source_line) FROM raw_reports WHERE source_file LIKE '%bus.jsonl.1'") == 101
    again = _ingest(store, folder)
    assert (again.lines_read, again.files_read) == (0, 0)


def test_a_file_replaced_under_the_same_name_and_size_is_read_again(store, workdirs):
    folder = workdirs["landing"]
    write_jsonl(folder / "bus.jsonl", _lines("a", 20))
    _ingest(store, folder)
    replacement = folder / "bus.jsonl.tmp"
    write_jsonl(replacement, _lines("b", 20))  # the same length: only identity and fingerprint tell them apart
    assert replacement.stat().st_size == (folder / "bus.jsonl").stat().st_size
    os.replace(replacement, folder / "bus.jsonl")
    result = _ingest(store, folder)
    assert (result.accepted, result.quarantined) == (20, 0) and result.rotated_files
    assert _totals(store) == (40, 0)


def test_a_file_rewritten_in_place_is_recognised_by_its_fingerprint(store, workdirs):
    folder = workdirs["landing"]
    path = folder / "bus.jsonl"
    write_jsonl(path, _lines("a", 30))
    _ingest(store, folder)
    # Same inode, longer than before, the same first line: only the bytes before the offset changed.
    kept = _lines("a", 1)
    write_jsonl(path, kept + _lines("c", 40))
    result = _ingest(store, folder)
    assert (result.accepted, result.duplicates, result.quarantined) == (40, 1, 0)


# ---- 3. byte-order mark -----------------------------------------------------------------------------------
def test_a_byte_order_mark_is_dropped(store, workdirs):
    path = workdirs["landing"] / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(_lines("bom", 3)) + "\n").encode())
    result = _ingest(store, workdirs["landing"])
    assert (result.accepted, result.quarantined) == (3, 0)


# ---- 4, 5, 8. poison lines are quarantined one by one -----------------------------------------------------
def _poison_lines() -> dict[str, str]:
    base = json.dumps(fill("p", "v-slug", "shadow", "k"))
    swap = lambda old, new, rid: base.replace(old, new).replace('"report_id": "p"', f'"report_id": "{rid}"')  # noqa: E731
    return {
        "size400": swap('"size_pusd": 200.0', '"size_pusd": 1' + "0" * 400, "size400"),
        "edge400": swap('"edge_pusd": 1.0', '"edge_pusd": -1' + "0" * 400, "edge400"),
        "cov400": swap('"slippage_bps": 2.5', '"slippage_bps": 2.5, "covariates": {"vol": 1' + "0" * 400 + "}", "cov400"),
        "edge_max": swap('"edge_pusd": 1.0', '"edge_pusd": 1.7e308', "edge_max"),
        "edge_min": swap('"edge_pusd": 1.0', '"edge_pusd": -1.7e308', "edge_min"),
        "tiny_notional": swap('"notional_pusd": 100.0', '"notional_pusd": 1e-320', "tiny_notional"),
        "dup_key": swap('"edge_pusd": 1.0', '"edge_pusd": 1.0, "edge_pusd": 900.0', "dup_key"),
        "surrogate": swap('"pair_key": "k"', '"pair_key": "\\ud800"', "surrogate"),
    }


EXPECTED_CODES = {"size400": "REPORT_OUT_OF_RANGE", "edge400": "REPORT_OUT_OF_RANGE", "cov400": "REPORT_OUT_OF_RANGE",
                  "edge_max": "REPORT_OUT_OF_RANGE", "edge_min": "REPORT_OUT_OF_RANGE",
                  "tiny_notional": "REPORT_OUT_OF_RANGE", "dup_key": "REPORT_DUPLICATE_KEY",
                  "surrogate": "REPORT_INVALID_ENCODING"}


def test_poison_lines_are_quarantined_and_later_files_are_read(store, workdirs):
    folder = workdirs["landing"]
    poison = _poison_lines()
    write_jsonl(folder / "a.jsonl", list(poison.values()))
    write_jsonl(folder / "b.jsonl", _lines("after", 5))  # sorted after the poison: must still be read
    result = _ingest(store, folder)
    assert (result.accepted, result.quarantined) == (5, len(poison))
    rows = store.rows("SELECT line_number, reason_code FROM quarantined_reports ORDER BY line_number")
    assert [r["reason_code"] for r in rows] == [EXPECTED_CODES[name] for name in poison]
    again = _ingest(store, folder)  # a re-run does not trip on the same lines
    assert again.lines_read == 0
    # Nothing extreme reached raw_reports: every edge delta derived from what is stored is finite.
    assert store.scalar("SELECT MAX(ABS(edge_pusd)) FROM raw_reports") <= 1e12
    assert store.scalar("SELECT MIN(notional_pusd) FROM raw_reports") >= 1e-6


def test_the_bus_path_quarantines_poison_with_the_same_codes():
    for seq, (name, text) in enumerate(_poison_lines().items(), start=1):
        row = classify(seq, text.encode())
        assert isinstance(row, QuarantineRow) and row.reason_code == EXPECTED_CODES[name], (name, row)
    # A repeated key that would decide whether the message is a fill at all: quarantined, not ignored.
    two_kinds = json.dumps(fill("k2", "v-slug", "shadow", "k")).replace('"event_type": "FILL"',
                                                                      '"event_type": "FILL", "event_type": "ORDER"')
    assert classify(99, two_kinds.encode()).reason_code == "REPORT_DUPLICATE_KEY"
    assert classify(100, b"\xef\xbb\xbf" + json.dumps(fill("bom", "v-slug", "shadow", "k")).encode()).report_id == "bom"


# ---- 9. links out of the landing folder ---------------------------------------------------------------------
def test_links_are_refused_recorded_and_never_read(store, workdirs, tmp_path):
    folder = workdirs["landing"]
    secret = tmp_path / "outside" / "secret.jsonl"
    write_jsonl(secret, ['{"password": "hunter2"}', *_lines("s", 2)])
    (folder / "steal.jsonl").symlink_to(secret)
    (folder / "sub").symlink_to(secret.parent, target_is_directory=True)
    write_jsonl(folder / "real.jsonl", _lines("ok", 2))
    result = _ingest(store, folder)
    assert (result.accepted, result.quarantined, result.lines_read) == (2, 0, 2)
    root = Path(os.path.realpath(folder))
    assert sorted(result.refused_sources) == [str(root / "steal.jsonl"), str(root / "sub")]
    rows = store.rows("SELECT source_file, line_number, reason_code, raw_text, detail FROM quarantined_reports "
                      "ORDER BY source_file")
    assert [(r["source_file"], r["line_number"], r["reason_code"], r["raw_text"]) for r in rows] == [
        (str(root / "steal.jsonl"), 0, "REPORT_SOURCE_REFUSED", ""), (str(root / "sub"), 0, "REPORT_SOURCE_REFUSED", "")]
    assert all("outside the landing folder" in r["detail"] for r in rows)
    assert store.scalar("SELECT COUNT(*) FROM raw_reports WHERE report_id LIKE 's%'") == 0
    assert "hunter2" not in json.dumps(store.rows("SELECT * FROM quarantined_reports"), default=str)
    again = _ingest(store, folder)  # recorded once, refused every time
    assert again.refused_sources and store.scalar("SELECT COUNT(*) FROM quarantined_reports") == 2
