"""Backfills: an archive of old reports and declarations is ingested and every experiment evaluated in a few
batched runs; re-running the backfill changes nothing already recorded and starts no run."""

import io

from experimenttracker_pipeline import cli
from experimenttracker_pipeline.demo import demo_partition_keys, write_demo
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.samples.queries import iter_samples


TABLES = ("raw_reports", "quarantined_reports", "experiment_samples", "operations_reports", "strategy_registry_signals",
          "promotions")


def test_backfill_is_ranged_and_idempotent(tmp_path, monkeypatch, pg_url):
    archive = tmp_path / "archive"
    write_demo(archive / "declarations", archive / "reports")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    settings = Settings(data_dir=tmp_path / "data", db_url=pg_url, landing_dir=archive / "reports",
                        experiments_dir=archive / "declarations", caliper_seconds=60.0, stall_window_seconds=3600.0)
    out = io.StringIO()
    assert cli.run_backfill(settings, per_run=3, out=out) == 0
    lines = out.getvalue().splitlines()
    # 8 units (5 experiments, and the A/B/n experiment's 3 comparisons) in runs of <= 3, each with its own
    # partition materializations.
    assert [line.split(":")[0] for line in lines if line.startswith("experiment_pass_job[")] == [
        "experiment_pass_job[3 experiments]", "experiment_pass_job[3 experiments]", "experiment_pass_job[2 experiments]"]
    store = Store(pg_url)
    before = {table: store.scalar(f"SELECT COUNT(*) FROM {table}") for table in TABLES}
    hashes = [r["sample_hash"] for r in iter_samples(store, "exp_sports_v2")]
    assert before["experiment_samples"] > 0 and store.scalar("SELECT COUNT(DISTINCT experiment_id) FROM experiment_verdicts") == len(demo_partition_keys())
    again = io.StringIO()
    assert cli.run_backfill(settings, per_run=3, out=again) == 0
    assert again.getvalue().startswith("nothing new"), again.getvalue()
    after = {table: store.scalar(f"SELECT COUNT(*) FROM {table}") for table in TABLES}
    assert after == before
    assert [r["sample_hash"] for r in iter_samples(store, "exp_sports_v2")] == hashes
    store.dispose()
