"""Ingestion on SQLite and PostgreSQL: accounting, idempotency, redelivery, quarantine, appended files."""

import json
from pathlib import Path

import pytest

from experimenttracker_pipeline.stages.ingestion.landing import (
    IngestionResult,
    ReportBusUnavailable,
    ingest_landing,
)
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.builders import fill, write_jsonl


def _ingest(store: Store, landing: Path) -> IngestionResult:
    result = ingest_landing(store, landing, chunk_lines=7)  # small chunks exercise chunk boundaries
    assert result.balanced
    return result


def test_accounting_and_quarantine_rows(store, workdirs):
    lines = [fill(f"r{i}", "v-slug", "shadow", f"k{i}") for i in range(20)]
    lines[3] = "{broken"
    lines[8] = {**lines[9], "notional_pusd": -1, "report_id": "neg"}
    lines.insert(12, json.dumps(lines[11]))  # exact redelivery within the file
    write_jsonl(workdirs["landing"] / "a.jsonl", lines)
    result = _ingest(store, workdirs["landing"])
    assert (result.lines_read, result.accepted, result.duplicates, result.quarantined) == (21, 18, 1, 2)
    assert store.scalar("SELECT COUNT(*) FROM raw_reports") == 18
    rows = store.rows("SELECT source_file, line_number, reason_code, raw_text, report_id FROM quarantined_reports ORDER BY line_number")
    assert [(r["line_number"], r["reason_code"]) for r in rows] == [(4, "REPORT_INVALID_JSON"), (9, "REPORT_NON_POSITIVE_AMOUNT")]
    assert rows[0]["source_file"].endswith("a.jsonl") and rows[0]["raw_text"] == "{broken"
    assert rows[1]["report_id"] == "neg"
    batches = store.rows("SELECT SUM(lines_read) n, SUM(accepted) a, SUM(duplicates) d, SUM(quarantined) q FROM ingestion_batches")[0]
    assert (batches["n"], batches["a"], batches["d"], batches["q"]) == (21, 18, 1, 2)


def test_rerun_never_reingests_and_appended_lines_are_picked_up(store, workdirs):
    path = workdirs["landing"] / "a.jsonl"
    write_jsonl(path, [fill(f"r{i}", "v-slug", "shadow", f"k{i}") for i in range(5)])
    assert _ingest(store, workdirs["landing"]).accepted == 5
    again = _ingest(store, workdirs["landing"])
    assert (again.lines_read, again.files_read) == (0, 0)
    write_jsonl(path, [fill("r5", "v-slug", "shadow", "k5"), "not json"], append=True)
    more = _ingest(store, workdirs["landing"])
    assert (more.lines_read, more.accepted, more.quarantined) == (2, 1, 1)
    # Line numbers continue from where the earlier run stopped.
    assert store.scalar("SELECT line_number FROM quarantined_reports") == 7


def test_partial_last_line_waits_for_its_newline(store, workdirs):
    path = workdirs["landing"] / "a.jsonl"
    full = json.dumps(fill("r1", "v-slug", "shadow", "k1"))
    partial = json.dumps(fill("r2", "v-slug", "shadow", "k2"))
    path.write_text(full + "\n" + partial[:40])
    assert _ingest(store, workdirs["landing"]).lines_read == 1
    with path.open("a") as handle:
        handle.write(partial[40:] + "\n")
    second = _ingest(store, workdirs["landing"])
    assert (second.lines_read, second.accepted, second.quarantined) == (1, 1, 0)


def test_exact_and_conflicting_redelivery_across_files(store, workdirs):
    original = fill("dup-1", "v-slug", "shadow", "k1", edge=1.0)
    write_jsonl(workdirs["landing"] / "a.jsonl", [original])
    _ingest(store, workdirs["landing"])
    write_jsonl(workdirs["landing"] / "b.jsonl", [original, {**original, "edge_pusd": 9.0}])
    result = _ingest(store, workdirs["landing"])
    assert (result.accepted, result.duplicates, result.quarantined) == (0, 1, 1)
    assert result.quarantine_reasons == {"REPORT_CONFLICTING_REDELIVERY": 1}
    # Nothing already recorded changes: the stored edge is still the first delivery's.
    assert store.scalar("SELECT edge_pusd FROM raw_reports WHERE report_id = 'dup-1'") == 1.0
    detail = store.scalar("SELECT detail FROM quarantined_reports")
    assert "already received with different content" in detail


def test_conflict_inside_one_chunk(store, workdirs):
    original = fill("dup-1", "v-slug", "shadow", "k1")
    write_jsonl(workdirs["landing"] / "a.jsonl", [original, {**original, "slippage_bps": 99.0}])
    result = _ingest(store, workdirs["landing"])
    assert (result.accepted, result.quarantined) == (1, 1)


def test_sql_injection_is_data(store, workdirs):
    slug = "x'); DROP TABLE raw_reports; --"
    write_jsonl(workdirs["landing"] / "a.jsonl", [fill("inj", slug, "shadow", "k'1")])
    _ingest(store, workdirs["landing"])
    assert store.scalar("SELECT strategy_slug FROM raw_reports WHERE report_id = 'inj'") == slug


def test_rotated_file_is_reread_without_double_counting(store, workdirs):
    path = workdirs["landing"] / "a.jsonl"
    write_jsonl(path, [fill(f"r{i}", "v-slug", "shadow", f"k{i}") for i in range(4)])
    _ingest(store, workdirs["landing"])
    write_jsonl(path, [fill("r0", "v-slug", "shadow", "k0"), fill("new", "v-slug", "shadow", "kn")])
    result = _ingest(store, workdirs["landing"])
    assert (result.accepted, result.duplicates, result.rotated_files != []) == (1, 1, True)


def test_missing_landing_folder_is_bus_unavailable(store, tmp_path):
    with pytest.raises(ReportBusUnavailable):
        ingest_landing(store, tmp_path / "nope")


def test_values_that_look_like_copy_nulls_survive(store, workdirs):
    write_jsonl(workdirs["landing"] / "a.jsonl", [fill("n1", "\\N", "shadow", "\\N", covariates={"note": ""}),
                                                  fill("n2", "v-slug", "shadow", "k,\"2\"", market="m\n".strip())])
    assert _ingest(store, workdirs["landing"]).accepted == 2
    row = store.rows("SELECT strategy_slug, pair_key, covariates_json FROM raw_reports WHERE report_id = 'n1'")[0]
    assert row == {"strategy_slug": "\\N", "pair_key": "\\N", "covariates_json": '{"note":""}'}
    assert store.scalar("SELECT pair_key FROM raw_reports WHERE report_id = 'n2'") == 'k,"2"'
