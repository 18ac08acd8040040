"""Schema migrations on SQLite and PostgreSQL: the Alembic baseline equals the hand-written schema it replaced, a
store created by those old files upgrades in place without losing a row, and concurrent upgrades do not race."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.governance.operations import assign_units, record_approval
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.ingestion.queries import ingest_bus_batch
from experimenttracker_pipeline.stages.ingestion.validation import validate_line
from experimenttracker_pipeline.stages.promotion.queries import promotions
from experimenttracker_pipeline.stages.publishing.queries import record_publications, unpublished_reports
from experimenttracker_pipeline.stages.promotion.signoff import promotion_state, record_signoff
from experimenttracker_pipeline.stages.samples.queries import pairing_states
from experimenttracker_pipeline.stages.samples.recording import verify_samples
from experimenttracker_pipeline.stages.stalls.queries import open_stall
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.migrations import (
    BASELINE,
    MigrationError,
    current_revision,
    revisions,
    schema_differences,
)
from experimenttracker_pipeline.store.schema import APPEND_ONLY, metadata
from experimenttracker_pipeline_tests.builders import fill
from experimenttracker_pipeline_tests.support.pipeline import evaluate_once, shadow_experiment

LEGACY_SQL = Path(__file__).parent / "legacy_sql"
# Every table the schema defines; those the report bus added are empty in a store from before the bus.
TABLES = sorted(metadata.tables)
BUS_TABLES = ("bus_messages", "report_publications", "stage_durations")
# Tables no hand-written store had: empty after the copy (the hand-written stores could not hold their rows).
LATER_TABLES = ("sample_chain_anchors",)
# The last hand-written migration a legacy store had run, and the revision it is adopted at.
LEGACY_LEVELS = {"0005": BASELINE, "0006": "0002_report_bus"}


def build_legacy_store(url: str, upto: str = "0006") -> Store:
    """A store created exactly as the hand-written migrations did it: the frozen sql/<dialect>/*.sql files up to
    number ``upto``, each recorded in schema_migrations."""
    store = Store(url)
    folder = LEGACY_SQL / ("postgres" if store.dialect == "postgresql" else "sqlite")
    with store.begin() as conn:
        conn.execute(sa.text("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
        for path in sorted(p for p in folder.glob("*.sql") if p.name[:4] <= upto):
            script = path.read_text(encoding="utf-8")
            if store.dialect == "sqlite":
                for statement in _sqlite_statements(script):
                    conn.exec_driver_sql(statement)
            else:
                conn.connection.driver_connection.cursor().execute(script)
            conn.execute(sa.text("INSERT INTO schema_migrations (version, applied_at) VALUES (:v, '2026-05-01T00:00:00Z')"),
                         {"v": path.name})
    return store


def _sqlite_statements(script: str) -> list[str]:
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [s for s in statements if s]


def fill_through_the_pipeline(store: Store, workdirs, *, with_bus: bool) -> None:
    """Declarations, reports (one quarantined), samples, evaluations, causal estimates, verdicts, a drift signal,
    a sign-off and a promotion, contracts, an approval, assignments and a stall episode; with the report bus's
    tables also a bus batch (one fill, one message that is not a fill), a publication and a stage duration."""
    rng = np.random.default_rng(9)
    shadow_experiment(store, workdirs, rng.normal(-5, 2, 120), exp_id="exp_down", min_samples_for_decision=100)
    evaluate_once(store, "exp_down")
    assert len(signals(store, "exp_down")) == 1
    shadow_experiment(store, workdirs, rng.normal(5, 10, 300), exp_id="exp_up", auto_promote_on_winning=True,
                require_human_signoff=True)
    verdict, _, _ = evaluate_once(store, "exp_up")
    record_signoff(store, "exp_up", "alice", verdict.report["report_id"])
    assert promotion_state(store, "exp_up", apply=True).state == "promoted"
    (workdirs["landing"] / "broken.jsonl").write_text("{not json\n")
    assert ingest_landing(store, workdirs["landing"]).quarantined == 1
    record_approval(store, "exp_up", "bob", "technical_lead")
    assign_units(store, "exp_up", [f"unit-{i}" for i in range(50)])
    assert open_stall(store, "exp_down", "no_samples", "no samples for an hour", 1_778_000_000_000) is not None
    if with_bus:
        bus_fill = validate_line(json.dumps(fill("bus-1", "c-slug", "live", "bus:1", t=999_000)).encode())
        assert ingest_bus_batch(store, stream="REPORTS", deliveries=[(1, bus_fill), (2, None)]).accepted == 1
        (report,) = unpublished_reports(store, 1)
        assert record_publications(store, [{"report_id": report["report_id"], "subject": report["topic"],
                                            "stream": "OUT", "stream_seq": 1, "duplicate": False}]) == 1
        store.record_stage_duration("ingestion", 0.25)


def copy_rows(source: Store, target: Store) -> None:
    """Every row of ``source`` into the tables and columns ``target`` has (parents first); PostgreSQL's id
    sequences are moved past the copied ids, as if the rows had been inserted there."""
    inspector = sa.inspect(target.engine)
    present = set(inspector.get_table_names())
    with source.begin() as read, target.begin() as write:
        for table in metadata.sorted_tables:
            if table.name not in present:
                continue
            columns = [c["name"] for c in inspector.get_columns(table.name)]
            rows = [dict(r) for r in read.execute(sa.select(*(table.c[c] for c in columns))).mappings()]
            if rows:
                write.execute(sa.table(table.name, *(sa.column(c) for c in columns)).insert(), rows)
            if target.dialect == "postgresql" and "id" in columns:
                write.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                      f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))


def counts(store: Store) -> dict[str, int]:
    present = sa.inspect(store.engine).get_table_names()
    return {table: int(store.scalar(f"SELECT COUNT(*) FROM {table}")) if table in present else 0 for table in TABLES}


def assert_append_only(store: Store, tables: tuple[str, ...] = APPEND_ONLY) -> None:
    """UPDATE and DELETE are refused on every append-only table (each holds rows, so the triggers fire), and
    TRUNCATE on PostgreSQL."""
    for table in tables:
        assert store.scalar(f"SELECT COUNT(*) FROM {table}") > 0, table
        for statement in (f"UPDATE {table} SET experiment_id = experiment_id", f"DELETE FROM {table}"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                with store.begin() as conn:
                    conn.execute(sa.text(statement))
    if store.dialect == "postgresql":
        for table in tables:
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                with store.begin() as conn:
                    conn.execute(sa.text(f"TRUNCATE {table} CASCADE"))


def schema_shape(store: Store) -> dict:
    """Tables, columns, keys, indexes and triggers as the database reports them (names included where the
    dialect keeps them: SQLite does not name unnamed constraints)."""
    with store.begin() as conn:
        inspector = sa.inspect(conn)
        shape: dict = {}
        for table in sorted(inspector.get_table_names()):
            pk = inspector.get_pk_constraint(table)
            shape[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"] or c["name"] in pk["constrained_columns"],
                             str(c.get("default"))) for c in inspector.get_columns(table)],
                "pk": pk["constrained_columns"],
                "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                              for f in inspector.get_foreign_keys(table)),
                "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)),
                "checks": sorted(_normalise_check(c["sqltext"]) for c in inspector.get_check_constraints(table)),
            }
            if store.dialect == "postgresql":
                shape[table]["names"] = sorted(
                    [pk["name"]] + [f["name"] for f in inspector.get_foreign_keys(table)]
                    + [u["name"] for u in inspector.get_unique_constraints(table)]
                    + [c["name"] for c in inspector.get_check_constraints(table)])
        if store.dialect == "postgresql":
            triggers = conn.execute(sa.text(
                "SELECT tgrelid::regclass::text, tgname, tgtype FROM pg_trigger WHERE NOT tgisinternal "
                "AND tgrelid::regclass::text NOT LIKE '%.%' ORDER BY 1, 2"))
        else:
            triggers = conn.execute(sa.text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger' ORDER BY 1, 2"))
        shape["triggers"] = [tuple(t) for t in triggers]
    return shape


def _normalise_check(text: str) -> str:
    return " ".join(text.replace("(", " ").replace(")", " ").split())


def test_fresh_store_matches_the_schema_definition(store):
    assert current_revision(store) == revisions()[-1]
    with store.begin() as conn:
        assert schema_differences(conn) == []


def test_baseline_equals_the_hand_written_schema(db_url, tmp_path, request):
    """A store migrated by Alembic and one built from all the frozen hand-written files have the same shape, once
    the revisions newer than the last hand-written file (those after its equivalent) are applied to the latter."""
    fresh = Store(db_url)
    assert fresh.migrate() == revisions()
    legacy = build_legacy_store(_another_store_url(fresh, tmp_path, request), upto="0006")
    newer = revisions()[revisions().index(LEGACY_LEVELS["0006"]) + 1:]
    assert legacy.migrate() == [f"{LEGACY_LEVELS['0006']} (existing schema adopted)"] + newer
    shape, legacy_shape = schema_shape(fresh), schema_shape(legacy)
    assert shape.pop("alembic_version") and legacy_shape.pop("alembic_version")
    for table in shape:
        assert shape[table] == legacy_shape[table], table
    assert shape == legacy_shape
    fresh.dispose()
    legacy.dispose()


def _another_store_url(store: Store, tmp_path: Path, request) -> str:
    """An empty store next to ``store``: another SQLite file, or another schema of the PostgreSQL test database."""
    if store.dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'another.db'}"
    return request.getfixturevalue("pg_url")


@pytest.mark.parametrize("level", sorted(LEGACY_LEVELS))
def test_legacy_store_upgrades_in_place(db_url, workdirs, tmp_path, request, level):
    """A store built by the hand-written migrations (up to 0005, or 0006 with the report bus) and filled by the
    pipeline is adopted by Alembic: no row lost, every hash chain still verifies, the append-only triggers still
    refuse changes, its schema is a fresh store's, and it keeps working."""
    with_bus = level >= "0006"
    legacy = build_legacy_store(db_url, upto=level)
    # Today's pipeline writes columns the hand-written stores had not got (ingestion_batches.ignored before the
    # report bus, experiment_pairing_state.paired_through_batch at every level), so the rows are made by the
    # pipeline in a current store and copied over, as the legacy store held them.
    source = Store(_another_store_url(legacy, tmp_path, request))
    source.migrate()
    fill_through_the_pipeline(source, workdirs, with_bus=with_bus)
    copy_rows(source, legacy)
    source.dispose()
    before = counts(legacy)
    assert all(n > 0 for t, n in before.items() if (with_bus or t not in BUS_TABLES) and t not in LATER_TABLES), before
    legacy.dispose()

    store = Store(db_url)
    applied = store.migrate()
    adopted = LEGACY_LEVELS[level]
    assert applied == [f"{adopted} (existing schema adopted)"] + revisions()[revisions().index(adopted) + 1:]
    assert store.migrate() == []
    assert current_revision(store) == revisions()[-1]
    assert "schema_migrations" not in sa.inspect(store.engine).get_table_names()
    assert counts(store) == before
    for experiment_id, state in pairing_states(store).items():
        checked, broken = verify_samples(store, experiment_id)
        assert broken is None and checked == state["samples"] > 0
    assert_append_only(store, tuple(t for t in APPEND_ONLY if t not in LATER_TABLES))
    fresh = Store(_another_store_url(store, tmp_path, request))
    fresh.migrate()
    assert schema_shape(store) == schema_shape(fresh)
    fresh.dispose()
    if store.dialect == "postgresql":  # SQLite leaves the hand-written schema's constraints unnamed
        with store.begin() as conn:
            assert schema_differences(conn) == []

    # It keeps working: new reports pair onto the existing chain, and the next look is recorded.
    rng = np.random.default_rng(10)
    shadow_experiment(store, workdirs, rng.normal(5, 10, 20), exp_id="exp_up", start=300)
    assert verify_samples(store, "exp_up") == (320, None)
    evaluate_once(store, "exp_up")
    assert len(promotions(store)) == 1
    assert verify_samples(store, "exp_up") == (320, None)
    assert_append_only(store)
    store.dispose()


def test_incomplete_legacy_store_is_refused(db_url):
    store = Store(db_url)
    with store.begin() as conn:
        conn.execute(sa.text("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
        conn.execute(sa.text("INSERT INTO schema_migrations VALUES ('0001_first.sql', 'x')"))
    with pytest.raises(MigrationError, match="0002, 0003, 0004, 0005"):
        store.migrate()
    store.dispose()


def test_concurrent_migrations_apply_each_revision_once(db_url):
    """Two processes starting together: one applies the revisions, the other waits and finds nothing to do."""
    stores = [Store(db_url), Store(db_url)]
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = stores[index].migrate()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(r, list) for r in results), results  # an exception is shown, not hidden by the sort
    assert sorted(results, key=len) == [[], revisions()], results
    for store in stores:
        store.dispose()
