"""The Dagster graph end to end: definitions load, jobs materialize on SQLite and PostgreSQL, the blocking
hash-chain check stops a run whose samples were tampered with."""

import json
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from experimenttracker_pipeline.definitions import build_definitions, defs
from experimenttracker_pipeline.demo import demo_experiment_ids, demo_partition_keys, write_demo
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows
from experimenttracker_pipeline.stages.promotion.queries import promotions
from experimenttracker_pipeline.stages.samples.queries import sample_count
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id, latest_verdict
from experimenttracker_pipeline.store import Store


def _settings(tmp_path: Path, db_url: str, registry_url: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path, db_url=db_url, landing_dir=tmp_path / "landing",
                    experiments_dir=tmp_path / "experiments", caliper_seconds=60.0, stall_window_seconds=3600.0,
                    registry_url=registry_url)


def test_definitions_load(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPERIMENTTRACKER_DATA_DIR", str(tmp_path))
    loaded = defs()
    dg.Definitions.validate_loadable(loaded)
    assert {k.to_user_string() for k in loaded.resolve_all_asset_keys()} >= {"experiments", "raw_reports", "experiment_samples"}
    assert loaded.resolve_job_def("experiment_job").partitions_def.name == "experiments"


def _run_all(definitions, instance, store):
    ingest = definitions.resolve_job_def("ingest_job").execute_in_process(instance=instance)
    assert ingest.success
    results = {}
    for row in experiment_rows(store, units=True):
        results[row["experiment_id"]] = definitions.resolve_job_def("experiment_job").execute_in_process(
            instance=instance, partition_key=row["experiment_id"], raise_on_error=False)
    return ingest, results


def test_blocking_check_fails_run_on_tampered_samples(pg_url, tmp_path):
    settings = _settings(tmp_path, pg_url)
    write_demo(settings.experiments_dir, settings.landing_dir)
    definitions = build_definitions(settings)
    store = Store(pg_url)
    with dg.instance_for_test() as instance:
        # Only the experiment under test: the other demo experiments add run time and nothing to this check.
        assert definitions.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        assert definitions.resolve_job_def("experiment_job").execute_in_process(
            instance=instance, partition_key="exp_crypto_v3").success
        with store.begin() as conn:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            conn.execute(sa.text("UPDATE experiment_samples SET edge_delta_bps = 50 WHERE experiment_id = 'exp_crypto_v3' AND sample_n = 7"))
        result = definitions.resolve_job_def("experiment_job").execute_in_process(
            instance=instance, partition_key="exp_crypto_v3", raise_on_error=False)
        assert not result.success
        (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "samples_hash_chain_intact"]
        assert not check.passed and "first broken sample_n 7" in check.description
        # Downstream steps never ran in the failed run.
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
                        if hasattr(e, "asset_key") and e.asset_key}
        assert materialized <= {"experiment_samples"}
    store.dispose()


def test_demo_graph_end_to_end(db_url, tmp_path, registry_server):
    """The whole graph on the demo data: every report line is accounted for, samples carry their hash chain, a
    winning, a losing, an A/A and a too-small experiment get the right verdicts, exactly one drift signal (the
    loser's) reaches a real HTTP registry, a second pass changes and emits nothing, and nothing is promoted until a
    human signs off. (One pipeline run serves all of these: it is the expensive part.)"""
    server = registry_server
    settings = _settings(tmp_path, db_url, registry_url=server.url)
    counts = write_demo(settings.experiments_dir, settings.landing_dir)
    definitions = build_definitions(settings)
    store = Store(db_url)
    with dg.instance_for_test() as instance:
        ingest, results = _run_all(definitions, instance, store)
        assert set(instance.get_dynamic_partitions("experiments")) == set(demo_partition_keys())
        meta = ingest.asset_materializations_for_node("raw_reports")[0].metadata
        assert meta["lines_read"].value == sum(counts.values())
        assert meta["lines_read"].value == meta["accepted"].value + meta["duplicates"].value + meta["quarantined"].value
        assert all(r.success for r in results.values())
        sample_meta = results["exp_sports_v2"].asset_materializations_for_node("experiment_samples")[0].metadata
        assert sample_meta["dagster/row_count"].value == 400
        checks = results["exp_sports_v2"].get_asset_check_evaluations()
        assert [c.passed for c in checks if c.check_name == "samples_hash_chain_intact"] == [True]
        verdicts = {e: json.loads(latest_verdict(store, e)["verdict_json"])["verdict"]
                    for e in results}
        assert verdicts["exp_sports_v2"] == "variant_wins"
        assert verdicts["exp_crypto_v3"] == "control_wins"
        assert verdicts["exp_politics_aa"] == "inconclusive"
        assert verdicts["exp_weather_small"] == "insufficient_samples"
        assert [verdicts[f"exp_tennis_abn/{v}"] for v in ("fast", "safe", "wide")] == [
            "variant_wins", "inconclusive", "control_wins"]
        assert sorted(body["experiment_id"] for _, body in server.received) == ["exp_crypto_v3", "exp_tennis_abn/wide"]
        assert promotions(store) == []
        check = [c for c in results["exp_sports_v2"].get_asset_check_evaluations() if c.check_name == "promotions_have_signoff"]
        assert [c.passed for c in check] == [True]
        meta = results["exp_sports_v2"].asset_materializations_for_node("confidence_intervals")[0].metadata
        assert meta["ci_95_low"].value > 0 and "confidence sequence" in meta["intervals"].value
        # A second pass changes nothing and emits nothing twice: no second start report, signal or result report.
        before = store.scalar("SELECT COUNT(*) FROM operations_reports WHERE event_type = 'EXPERIMENT_STARTED'")
        _run_all(definitions, instance, store)
        assert store.scalar("SELECT COUNT(*) FROM operations_reports WHERE event_type = 'EXPERIMENT_STARTED'") == before == len(demo_experiment_ids())
        assert sample_count(store, "exp_sports_v2") == 400
        assert len(server.received) == 2
        assert len(store.reports("exp_sports_v2", "EXPERIMENT_RESULT")) == 1
        # The sign-off job (launchable from the UI) approves the winner's report and promotes it.
        report_id = latest_result_report_id(store, "exp_sports_v2")
        signoff = definitions.resolve_job_def("signoff_job").execute_in_process(instance=instance, run_config={
            "ops": {"record_signoff": {"config": {"experiment_id": "exp_sports_v2", "approver": "alice",
                                                  "report_id": report_id}}}})
        assert signoff.success
        assert [p["experiment_id"] for p in promotions(store)] == ["exp_sports_v2"]
    store.dispose()


def test_dg_check_defs_loads_the_project(tmp_path):
    """`dg dev` / `dg launch` load the project's Definitions through [tool.dg]; `dg check defs` is that load."""
    import os
    import subprocess
    import sys

    dg_cli = Path(sys.executable).parent / "dg"
    env = {**os.environ, "EXPERIMENTTRACKER_DATA_DIR": str(tmp_path)}
    result = subprocess.run([str(dg_cli), "check", "defs"], cwd=Path(__file__).resolve().parents[2], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr
