"""What a user sees after `make demo`, read back from the Dagster instance: the experiments overview, a verdict
page that agrees with itself (exp_esports_ll), a promotion that is current when the sign-off job ends, per-experiment
checks that isolate a bad experiment, and the drift signal state shown on every drift_signals materialization."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.cli import run_pipeline
from experimenttracker_pipeline.definitions import build_definitions
from experimenttracker_pipeline.demo import demo_experiment_ids, demo_partition_keys, write_demo
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.governance.operations import persona_views
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id, latest_verdict
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.store.schema import promotions as promotions_table


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo pipeline run once (as `make demo` does) into a temporary data folder."""
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(data / "dagster_home"))
        mp.setenv("EXPERIMENTTRACKER_DATA_DIR", str(data))
        settings = Settings.from_env()
        write_demo(settings.experiments_dir, settings.landing_dir)
        assert run_pipeline(settings, out=io.StringIO()) == 0
        definitions = build_definitions(settings)
        store = Store(settings.db_url)
        with dg.DagsterInstance.get() as instance:
            yield settings, definitions, instance, store
        store.dispose()


def _latest(instance, key: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"no materialization of {key} {partition or ''}"
    return records[0].asset_materialization.metadata


def test_overview_lists_every_experiment_with_its_deciding_ci(demo):
    settings, _, instance, _ = demo
    meta = _latest(instance, "experiments_overview")
    table = meta["experiments"]
    rows = {r.data["experiment_id"]: r.data for r in table.records}
    assert set(rows) == set(demo_experiment_ids()) | set(demo_partition_keys())  # A/B/n: experiment and comparisons
    assert rows["exp_tennis_abn"]["verdict"] == "variant_wins (fast)"
    assert rows["exp_tennis_abn/wide"]["verdict"] == "control_wins"
    # Verdict counts are of the experiments as declared: the A/B/n one once, by its overall verdict.
    assert "| variant_wins | 2 |" in meta["verdict_counts"].value and "(fast)" not in meta["verdict_counts"].value
    assert [c.name for c in table.schema.columns][:4] == ["experiment_id", "verdict", "deciding_ci", "ci_method"]
    esports = rows["exp_esports_ll"]
    assert esports["ci_method"] == "aipw_always_valid" and esports["deciding_ci"] == "[-0.42, +3.30] bps"
    assert esports["srm_p_value"] is not None and esports["harmed_segments"] == "category=minor"
    assert esports["required_samples"] > esports["samples"] and esports["expected_days"] is not None
    assert rows["exp_sports_v2"]["verdict"] == "variant_wins" and rows["exp_crypto_v3"]["drift_state"].startswith("delivered")
    assert meta["dagster/row_count"].value == len(rows) == 9 and "data:image/png;base64," in meta["forest_plot"].value
    assert Path(meta["report_index"].value).is_file()


def test_the_esports_verdict_page_does_not_contradict_itself(demo):
    """exp_esports_ll: a harm stop rule fired and category=minor is harmed, the verdict is inconclusive."""
    settings, _, instance, store = demo
    verdict = json.loads(latest_verdict(store, "exp_esports_ll")["verdict_json"])
    assert verdict["verdict"] == "inconclusive" and verdict["harmed_segments"] == ["category=minor"]
    assert [r["reason_code"] for r in verdict["stop_rules"] if r["action"] == "stop"] == ["EVAL_STOP_HARM"]
    meta = _latest(instance, "verdicts", "exp_esports_ll")
    pages = [meta["plain_english"].value, meta["view_trader"].value, meta["view_risk"].value, meta["view_governance"].value]
    # The pass renders the HTML report after the verdict and shows it on the partition as an observation.
    shown = instance.fetch_observations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("verdicts"), asset_partitions=["exp_esports_ll"]), limit=1).records
    assert shown and "data:image/png;base64," in shown[0].asset_observation.metadata["ci_over_time"].value
    html_report = Path(shown[0].asset_observation.metadata["html_report"].value).read_text()
    for page in [*pages, html_report]:
        assert "keeps collecting" not in page and "Harm detected: no" not in page
    assert "Harm detected: YES" in meta["view_risk"].value and "category=minor" in meta["plain_english"].value
    # One deciding CI, shown first and named the same way on every surface.
    assert meta["deciding_ci"].value.startswith("[-0.42, +3.30] bps") and meta["deciding_ci_method"].value == "aipw_always_valid"
    assert meta["intervals"].value.splitlines()[2].startswith("| **deciding CI**")
    assert "supporting evidence" in meta["intervals"].value
    assert "deciding CI" in meta["view_trader"].value
    report = store.report(latest_result_report_id(store, "exp_esports_ll"))
    assert report["deciding_ci"]["method"] == "aipw_always_valid"
    assert "_micros" not in meta["view_risk"].value and "{" not in meta["stop_rules"].value
    assert meta["ci_95_low"].value == -0.425  # rounded for reading; the store keeps full precision
    assert verdict["ci_95_low"] != -0.425


def test_signoff_job_leaves_promotions_current(demo):
    settings, definitions, instance, store = demo
    assert _latest(instance, "promotions", "exp_sports_v2")["state"].value == "awaiting_signoff"
    # Launchpad-style: the experiment is the partition, only the approver is typed; the latest report is approved.
    result = definitions.resolve_job_def("signoff_job").execute_in_process(
        instance=instance, partition_key="exp_sports_v2",
        run_config={"ops": {"record_signoff": {"config": {"approver": "alice"}}}})
    assert result.success
    assert _latest(instance, "promotions", "exp_sports_v2")["state"].value == "promoted"
    rows = {r.data["experiment_id"]: r.data for r in _latest(instance, "experiments_overview")["experiments"].records}
    assert rows["exp_sports_v2"]["promotion_state"] == "promoted"
    report = (settings.data_dir / "reports" / "exp_sports_v2.html").read_text()
    assert "<td>promoted</td>" in report and "alice" in report
    assert "Promoted: sports-model-v2" in persona_views(store, "exp_sports_v2")["trader"]
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("promotions"), "promotions_have_signoff"), limit=20)
    assert any(h.partition == "exp_sports_v2" and h.status.value == "SUCCEEDED" for h in history)


def test_a_hand_inserted_promotion_fails_only_its_own_experiments_check(demo):
    settings, definitions, instance, store = demo
    with store.begin() as conn:  # bypasses the gate: no sign-off, not a winner
        conn.execute(promotions_table.insert().values(
            experiment_id="exp_politics_aa", report_id=latest_result_report_id(store, "exp_politics_aa"),
            variant_slug="politics-model-aa", verdict="inconclusive", signoff_id=None))
    job = definitions.resolve_job_def("experiment_job")
    bad = job.execute_in_process(instance=instance, partition_key="exp_politics_aa", raise_on_error=False)
    good = job.execute_in_process(instance=instance, partition_key="exp_weather_small", raise_on_error=False)
    assert not bad.success and good.success

    def checks(result):
        return {c.check_name: c for c in result.get_asset_check_evaluations()}

    failed = checks(bad)["promotions_have_signoff"]
    assert not failed.passed and failed.partition == "exp_politics_aa"
    assert failed.metadata["experiment_id"].value == "exp_politics_aa" and failed.metadata["violations"].value == 1
    passed = checks(good)["promotions_have_signoff"]
    assert passed.passed and passed.partition == "exp_weather_small"
    chain = checks(good)["samples_hash_chain_intact"]
    assert chain.partition == "exp_weather_small" and chain.metadata["samples_verified"].value == 50
    assert chain.metadata["chain_head_sample_n"].value == 50 and len(chain.metadata["chain_head_hash"].value) >= 32
    # A range over every experiment: each gets its own evaluation, the step's result names the bad one.
    check_key = dg.AssetCheckKey(dg.AssetKey("promotions"), "promotions_have_signoff")
    keys = instance.get_dynamic_partitions("experiments")
    checks_job = dg.define_asset_job("signoff_check_only", selection=dg.AssetSelection.checks(check_key))
    ranged = dg.Definitions(assets=definitions.assets, asset_checks=definitions.asset_checks, jobs=[checks_job],
                            resources=definitions.resources).resolve_job_def("signoff_check_only")
    run = ranged.execute_in_process(instance=instance, raise_on_error=False, tags={
        "dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    per_partition = {c.partition: c.passed for c in run.get_asset_check_evaluations() if c.partition}
    assert per_partition == {key: key != "exp_politics_aa" for key in keys}
    overall = [c for c in run.get_asset_check_evaluations() if c.partition is None]
    assert overall and not overall[0].passed and "exp_politics_aa" in overall[0].description


def test_drift_signals_shows_the_signal_state_every_time(demo):
    settings, definitions, instance, store = demo
    result = definitions.resolve_job_def("experiment_job").execute_in_process(instance=instance, partition_key="exp_crypto_v3")
    assert result.success
    meta = _latest(instance, "drift_signals", "exp_crypto_v3")
    assert meta["signalled_now"].value is False  # nothing new this time ...
    assert meta["delivery_status"].value == "delivered" and meta["attempts"].value == 1  # ... and the state is shown
    assert meta["sent_at"].value and meta["signal_state"].value == "delivered (1 attempt)"
    quiet = _latest(instance, "drift_signals", "exp_politics_aa")
    assert quiet["signal_state"].value == "none" and quiet["attempts"].value == 0
