"""Matched-pair samples on SQLite and PostgreSQL: pairing, late halves, numbering, immutability, tampering."""

import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.stages.declarations.registration import (
    sync_declarations,
)
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.samples.recording import (
    record_samples,
    verify_samples,
)
from experimenttracker_pipeline.stages.samples.recording import ImmutableSampleError
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.intervals.queries import cumulative_delta_stats
from experimenttracker_pipeline.stages.samples.queries import iter_samples, sample_count
from experimenttracker_pipeline.store.migrations import current_revision, revisions


def _setup(store, workdirs, **decl):
    (workdirs["experiments"] / "e.yaml").write_text(declaration("exp_a", **decl))
    sync = sync_declarations(store, workdirs["experiments"])
    assert sync.new == ["exp_a"]


def _ingest(store, workdirs, name, records, append=False):
    write_jsonl(workdirs["landing"] / name, records, append=append)
    assert ingest_landing(store, workdirs["landing"]).balanced


def test_shadow_pairs_late_halves_and_stable_numbering(store, workdirs):
    _setup(store, workdirs)
    _ingest(store, workdirs, "a.jsonl", [
        fill("c1", "c-slug", "live", "k1", edge=1.0, t=0), fill("v1", "v-slug", "shadow", "k1", edge=2.0, t=5),
        fill("c2", "c-slug", "live", "k2", edge=1.0, t=10), fill("v2", "v-slug", "replay", "k2", edge=0.5, t=15),
        fill("v3", "v-slug", "shadow", "k3", t=20),                     # its control arrives later
        fill("v-live", "v-slug", "live", "k9", t=21),                   # wrong mode for a shadow variant
        fill("c-old", "c-slug", "live", "k0", t=-10 ** 9),              # before the experiment started
    ])
    first = record_samples(store, "exp_a")
    assert (first.new_samples, first.total_samples, first.orphan_variant) == (2, 2, 1)
    rows = list(iter_samples(store, "exp_a"))
    assert [(r["sample_n"], r["variant_report_id"], r["control_report_id"]) for r in rows] == [(1, "v1", "c1"), (2, "v2", "c2")]
    assert rows[0]["edge_delta_bps"] == pytest.approx(100.0) and rows[1]["edge_delta_bps"] == pytest.approx(-50.0)
    assert rows[0]["variant_fill_pusd"] == 200.0 and rows[0]["control_fill_pusd"] == 200.0
    # Re-materializing with nothing new appends nothing.
    assert record_samples(store, "exp_a").new_samples == 0
    # The late control half arrives; sample 3 is appended and 1-2 keep their numbers and hashes.
    _ingest(store, workdirs, "b.jsonl", [fill("c3", "c-slug", "live", "k3", t=30)])
    third = record_samples(store, "exp_a")
    assert (third.new_samples, third.first_new_n, third.orphan_variant) == (1, 3, 0)
    after = list(iter_samples(store, "exp_a"))
    assert after[:2] == rows and after[2]["variant_report_id"] == "v3"
    assert verify_samples(store, "exp_a") == (3, None)
    reports = store.reports("exp_a", "SAMPLE_RECORDED")
    assert [r["sample_n"] for r in reports] == [2, 3] and reports[0]["samples_in_batch"] == 2


def test_limited_live_pairing(store, workdirs):
    _setup(store, workdirs, mode="limited_live", caliper_seconds=60)
    _ingest(store, workdirs, "a.jsonl", [
        fill("v1", "v-slug", "live", "p1", t=0, market="m1", assignment_propensity=0.2, covariates={"liq": "deep"}),
        fill("c_near", "c-slug", "live", "p2", t=10_000, market="m1"),
        fill("c_far", "c-slug", "live", "p3", t=50_000, market="m1"),
        fill("c_other_market", "c-slug", "live", "p4", t=1_000, market="m2"),
        fill("v2", "v-slug", "live", "p5", t=500_000, market="m1"),  # no control within 60 s
    ])
    result = record_samples(store, "exp_a")
    (row,) = list(iter_samples(store, "exp_a"))
    assert (row["variant_report_id"], row["control_report_id"]) == ("v1", "c_near")
    assert row["assignment_propensity"] == 0.2 and '"liq":"deep"' in row["covariates_json"]
    assert (result.orphan_variant, result.orphan_control) == (1, 2)


def test_database_rejects_update_delete(store, workdirs):
    _setup(store, workdirs)
    _ingest(store, workdirs, "a.jsonl", [fill("c1", "c-slug", "live", "k1"), fill("v1", "v-slug", "shadow", "k1")])
    record_samples(store, "exp_a")
    statements = ["UPDATE experiment_samples SET edge_delta_bps = 0", "DELETE FROM experiment_samples"]
    if store.dialect == "postgresql":
        statements.append("TRUNCATE experiment_samples")
    for statement in statements:
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            with store.begin() as conn:
                conn.execute(sa.text(statement))
    assert sample_count(store, "exp_a") == 1


def _bypass_triggers_and_update(store, sql):
    """Simulate tampering by someone who can switch the triggers off (a DBA, a restored backup)."""
    with store.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            conn.execute(sa.text(sql))
        else:
            conn.execute(sa.text("DROP TRIGGER IF EXISTS experiment_samples_no_update"))
            conn.execute(sa.text("DROP TRIGGER IF EXISTS experiment_samples_no_delete"))
            conn.execute(sa.text(sql))


def test_tampering_is_detected_and_appending_refused(store, workdirs):
    _setup(store, workdirs)
    _ingest(store, workdirs, "a.jsonl", [r for i in range(5) for r in (
        fill(f"c{i}", "c-slug", "live", f"k{i}", t=i), fill(f"v{i}", "v-slug", "shadow", f"k{i}", t=i, edge=2.0))])
    record_samples(store, "exp_a")
    _bypass_triggers_and_update(store, "UPDATE experiment_samples SET edge_delta_bps = 999 WHERE sample_n = 3")
    checked, broken = verify_samples(store, "exp_a")
    assert broken.sample_n == 3 and "changed" in broken.problem
    _bypass_triggers_and_update(store, "UPDATE experiment_samples SET control_edge_pusd = 0 WHERE sample_n = 5")
    _ingest(store, workdirs, "b.jsonl", [fill("c9", "c-slug", "live", "k9"), fill("v9", "v-slug", "shadow", "k9")])
    with pytest.raises(ImmutableSampleError):
        record_samples(store, "exp_a")


def test_deleted_row_is_detected(store, workdirs):
    _setup(store, workdirs)
    _ingest(store, workdirs, "a.jsonl", [r for i in range(4) for r in (
        fill(f"c{i}", "c-slug", "live", f"k{i}", t=i), fill(f"v{i}", "v-slug", "shadow", f"k{i}", t=i))])
    record_samples(store, "exp_a")
    _bypass_triggers_and_update(store, "DELETE FROM experiment_samples WHERE sample_n = 2")
    assert verify_samples(store, "exp_a")[1].sample_n == 2


def test_experiment_started_once_and_conflicting_redeclaration(store, workdirs):
    _setup(store, workdirs, traffic_split_pct=60)
    again = sync_declarations(store, workdirs["experiments"])
    assert again.unchanged == ["exp_a"] and not again.emitted
    started = store.reports("exp_a", "EXPERIMENT_STARTED")
    assert len(started) == 1 and started[0]["report_kind"] == "OperationsReport"
    assert started[0]["bot_id"] == "gov.experimenttracker" and started[0]["topic"] == "polytraders.reports.operations"
    assert len(store.reports("exp_a", "EXPERIMENT_LARGE_SPLIT_WARN")) == 1
    (workdirs["experiments"] / "e.yaml").write_text(declaration("exp_a", traffic_split_pct=20))
    changed = sync_declarations(store, workdirs["experiments"])
    assert changed.rejected and changed.rejected[0].field == "experiment_id"
    assert experiment_row(store, "exp_a")["traffic_split_pct"] == 60


def test_migrations_are_recorded_and_idempotent(store):
    assert store.migrate() == []
    assert current_revision(store) == revisions()[-1]


def test_cumulative_checkpoints_match_numpy(store, workdirs):
    """The chart's checkpoints (window sums in SQL) equal cumulative sums computed independently with numpy."""
    import numpy as np

    _setup(store, workdirs)
    edges = [1.0 + ((i * 37) % 11 - 5) / 100.0 for i in range(45)]
    _ingest(store, workdirs, "a.jsonl", [r for i, e in enumerate(edges) for r in (
        fill(f"c{i}", "c-slug", "live", f"k{i}", t=i), fill(f"v{i}", "v-slug", "shadow", f"k{i}", t=i, edge=e))])
    record_samples(store, "exp_a")
    deltas = np.array([r["edge_delta_bps"] for r in iter_samples(store, "exp_a")])
    checkpoints = cumulative_delta_stats(store, "exp_a", upto=40, points=8)
    assert [n for n, _, _, _ in checkpoints] == [5, 10, 15, 20, 25, 30, 35, 40]
    for n, s, ss, k in checkpoints:  # sums about the first delta k
        assert k == deltas[0]
        assert s == pytest.approx((deltas[:n] - k).sum()) and ss == pytest.approx(((deltas[:n] - k) ** 2).sum())


def test_fills_stored_before_the_bounds_never_become_samples(store, workdirs):
    """A fill an older version stored with an extreme value (edge 1.7e308, notional 1e-320) stays unpaired and is
    counted as an orphan: no sample with an infinite edge delta, so the experiment keeps a finite CI."""
    from experimenttracker_pipeline.store.schema import raw_reports

    _setup(store, workdirs)
    _ingest(store, workdirs, "a.jsonl", [fill("c1", "c-slug", "live", "k1", t=0), fill("v1", "v-slug", "shadow", "k1", t=5)])
    (template,) = store.rows(sa.select(raw_reports).where(raw_reports.c.report_id == "v1"))
    (control,) = store.rows(sa.select(raw_reports).where(raw_reports.c.report_id == "c1"))
    with store.begin() as conn:  # as a version without bounds would have stored them
        conn.execute(sa.insert(raw_reports), [
            {**control, "report_id": "c-huge", "pair_key": "k2", "source_line": 90},
            {**template, "report_id": "v-huge", "pair_key": "k2", "edge_pusd": 1.7e308, "source_line": 91},
            {**control, "report_id": "c-tiny", "pair_key": "k3", "notional_pusd": 1e-320, "source_line": 92},
            {**template, "report_id": "v-tiny", "pair_key": "k3", "source_line": 93}])
    result = record_samples(store, "exp_a")
    assert (result.new_samples, result.orphan_variant, result.orphan_control) == (1, 2, 2)
    rows = list(iter_samples(store, "exp_a"))
    assert [r["variant_report_id"] for r in rows] == ["v1"]
