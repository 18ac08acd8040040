"""An A/B/n experiment in Dagster: the experiments asset adds one partition per comparison (never the experiment
itself), and experiment_job materializes a comparison's partition (``<experiment_id>/<variant_id>``) with its
checks, as the UI and backfills do."""

import json

import dagster as dg

from experimenttracker_pipeline.definitions import build_definitions
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.verdict.queries import latest_verdict
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.builders import abn_shadow_fills, declaration, write_jsonl


def test_comparisons_are_partitions_and_materialize(db_url, tmp_path):
    settings = Settings(data_dir=tmp_path, db_url=db_url, landing_dir=tmp_path / "landing",
                        experiments_dir=tmp_path / "experiments", caliper_seconds=60.0, stall_window_seconds=3600.0)
    variants = {"control": {"slug": "ctl", "traffic_share_bp": 8000},
                "up": {"slug": "s-up", "traffic_share_bp": 1000}, "down": {"slug": "s-down", "traffic_share_bp": 1000}}
    settings.experiments_dir.mkdir(parents=True)
    (settings.experiments_dir / "exp_ab.yaml").write_text(declaration(
        "exp_ab", variant_slug="s-up", control_slug="ctl", traffic_split_pct=20, min_samples_for_decision=30,
        variants=variants))
    records = abn_shadow_fills({"up": 10.0, "down": -10.0}, 200, seed=2)
    write_jsonl(settings.landing_dir / "ab.jsonl", records)
    definitions = build_definitions(settings)
    with dg.instance_for_test() as instance:
        assert definitions.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        assert sorted(instance.get_dynamic_partitions("experiments")) == ["exp_ab/down", "exp_ab/up"]
        for key in ("exp_ab/up", "exp_ab/down"):
            result = definitions.resolve_job_def("experiment_job").execute_in_process(instance=instance, partition_key=key)
            assert result.success
            checks = result.get_asset_check_evaluations()
            assert checks and all(c.passed for c in checks)
        store = Store(db_url)
        assert json.loads(latest_verdict(store, "exp_ab/up")["verdict_json"])["verdict"] == "variant_wins"
        assert json.loads(latest_verdict(store, "exp_ab/down")["verdict_json"])["verdict"] == "control_wins"
        event = instance.get_latest_materialization_event(dg.AssetKey("verdicts"))
        assert "experiment_overall" in event.asset_materialization.metadata
        store.dispose()
