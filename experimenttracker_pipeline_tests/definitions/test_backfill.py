"""Backfills: an archive of old reports and declarations is ingested and every experiment partition evaluated
in a few ranged runs; re-running the backfill changes nothing already recorded."""

import io

from experimenttracker_pipeline import cli
from experimenttracker_pipeline.demo import DEMO_EXPERIMENTS, write_demo
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.samples.queries import iter_samples


def test_contiguous_chunks():
    order = ["a", "b", "c", "d", "e", "f"]
    assert cli.contiguous_chunks(order, order, 4) == [["a", "b", "c", "d"], ["e", "f"]]
    assert cli.contiguous_chunks(order, ["a", "b", "d", "f"], 25) == [["a", "b"], ["d"], ["f"]]
    assert cli.contiguous_chunks(order, [], 3) == []


TABLES = ("raw_reports", "quarantined_reports", "experiment_samples", "operations_reports", "strategy_registry_signals",
          "promotions")


def test_backfill_is_ranged_and_idempotent(tmp_path, monkeypatch, pg_url):
    archive = tmp_path / "archive"
    write_demo(archive / "declarations", archive / "reports")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    settings = Settings(data_dir=tmp_path / "data", db_url=pg_url, landing_dir=archive / "reports",
                        experiments_dir=archive / "declarations", caliper_seconds=60.0, stall_window_seconds=3600.0)
    out = io.StringIO()
    assert cli.run_backfill(settings, per_run=3, out=out)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("experiment_job[") for line in lines) == 2  # 5 experiments in runs of <= 3
    assert "(3 experiments)" in out.getvalue()
    store = Store(pg_url)
    before = {table: store.scalar(f"SELECT COUNT(*) FROM {table}") for table in TABLES}
    hashes = [r["sample_hash"] for r in iter_samples(store, "exp_sports_v2")]
    assert before["experiment_samples"] > 0 and store.scalar("SELECT COUNT(DISTINCT experiment_id) FROM experiment_verdicts") == len(DEMO_EXPERIMENTS)
    assert cli.run_backfill(settings, per_run=3, out=io.StringIO())
    after = {table: store.scalar(f"SELECT COUNT(*) FROM {table}") for table in TABLES}
    assert after == before
    assert [r["sample_hash"] for r in iter_samples(store, "exp_sports_v2")] == hashes
    store.dispose()
