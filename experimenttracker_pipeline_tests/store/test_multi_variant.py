"""A/B/n experiments end to end on SQLite and PostgreSQL: one comparison per treatment against the shared control,
each paired and evaluated on its own at alpha / k, a verdict per variant and an overall one, one drift signal per
losing variant, and one variant promoted with its own sign-off."""

from __future__ import annotations

import json

import numpy as np

from experimenttracker_pipeline.cli import status_rows
from experimenttracker_pipeline.defs.verdict import overall_md
from experimenttracker_pipeline.orchestration.due_work import EvaluationRule, due_experiments, partition_keys
from experimenttracker_pipeline.orchestration.experiment_pass import process_experiment
from experimenttracker_pipeline.stages.declarations.queries import comparison_rows, experiment_rows
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.drift.queries import signals
from experimenttracker_pipeline.stages.drift.registry import registry_for
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.ingestion.queries import newest_batch_by_slug
from experimenttracker_pipeline.stages.intervals.queries import latest_evaluation
from experimenttracker_pipeline.stages.reporting.html_report import write_index
from experimenttracker_pipeline.stages.reporting.overview import overview_rows
from experimenttracker_pipeline.stages.promotion.signoff import (
    PROMOTION_NOT_OVERALL_WINNER,
    PROMOTION_OTHER_VARIANT_PROMOTED,
    promotion_state,
    record_signoff,
)
from experimenttracker_pipeline.stages.samples.queries import sensor_snapshot
from experimenttracker_pipeline.stages.verdict.decision import experiment_overall
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id, latest_verdict
from experimenttracker_pipeline_tests.builders import abn_shadow_fills, declaration, fill, write_jsonl

GROWTH = EvaluationRule("growth")


def _declare(workdirs, experiment_id: str, effects: dict[str, float], **extra) -> None:
    """An A/B/n shadow experiment: control `ctl` and one treatment `<id>` (slug `s-<id>`) per entry of effects."""
    share = 1000
    variants = {"control": {"slug": "ctl", "traffic_share_bp": 10000 - share * len(effects)}}
    variants.update({vid: {"slug": f"s-{vid}", "traffic_share_bp": share} for vid in effects})
    (workdirs["experiments"] / f"{experiment_id}.yaml").write_text(declaration(
        experiment_id, variant_slug=f"s-{next(iter(effects))}", control_slug="ctl",
        traffic_split_pct=share * len(effects) / 100, min_samples_for_decision=30, variants=variants, **extra))


def _land(store, workdirs, name: str, effects: dict[str, float], n: int, seed: int) -> None:
    write_jsonl(workdirs["landing"] / f"{name}.jsonl", abn_shadow_fills(effects, n, seed=seed, name=name))
    assert ingest_landing(store, workdirs["landing"]).balanced


def _run_due(store) -> list[str]:
    due = due_experiments(sensor_snapshot(store), newest_batch_by_slug(store), GROWTH)
    for item in due:
        outcome = process_experiment(store, registry_for(None), item.experiment_id, GROWTH, newest_batch_by_slug(store))
        assert outcome.ok, outcome.error
    return sorted(d.experiment_id for d in due)


def test_three_treatments_get_their_own_verdicts_and_only_the_worse_one_signals_drift(store, workdirs, tmp_path):
    effects = {"better": 8.0, "flat": 0.0, "worse": -8.0}
    _declare(workdirs, "exp_abn", effects)
    sync = sync_declarations(store, workdirs["experiments"])
    assert sync.new == ["exp_abn"] and not sync.rejected
    # Recorded as the experiment and one comparison per treatment; the partitions are the comparisons.
    assert [r["experiment_id"] for r in comparison_rows(store, "exp_abn")] == [
        "exp_abn/better", "exp_abn/flat", "exp_abn/worse"]
    assert sorted(partition_keys(sensor_snapshot(store))) == ["exp_abn/better", "exp_abn/flat", "exp_abn/worse"]
    assert [r["experiment_id"] for r in experiment_rows(store, comparisons=False)] == ["exp_abn"]

    _land(store, workdirs, "abn", effects, 400, seed=7)
    assert _run_due(store) == ["exp_abn/better", "exp_abn/flat", "exp_abn/worse"]

    verdicts = {vid: json.loads(latest_verdict(store, f"exp_abn/{vid}")["verdict_json"]) for vid in effects}
    assert {vid: v["verdict"] for vid, v in verdicts.items()} == {
        "better": "variant_wins", "flat": "inconclusive", "worse": "control_wins"}
    for vid, v in verdicts.items():
        assert v["samples"] == 400  # every treatment fill found the control fill of its pair_key
        assert v["multiple_testing"]["correction"] == "bonferroni_across_treatments"
        assert abs(v["multiple_testing"]["alpha"] - 0.05 / 3) < 1e-6
        assert v["ci_95_low"] < effects[vid] < v["ci_95_high"]

    # One drift signal, for the worse variant, keyed by that variant.
    drift = signals(store)
    assert [s["experiment_id"] for s in drift] == ["exp_abn/worse"]
    payload = json.loads(drift[0]["payload_json"])
    assert (payload["variant_slug"], payload["variant_id"], payload["parent_experiment_id"]) == ("s-worse", "worse", "exp_abn")
    assert payload["idempotency_key"].startswith("exp_abn/worse:drift:")

    result = store.report(latest_result_report_id(store, "exp_abn/better"))
    assert (result["parent_experiment_id"], result["variant_id"], result["treatments"]) == ("exp_abn", "better", 3)
    table = overall_md(store, "exp_abn")
    assert "exp_abn: variant_wins** (winner: better)" in table and "| worse | s-worse | control_wins |" in table

    overall = experiment_overall(store, "exp_abn")
    assert (overall["verdict"], overall["winning_variant"]) == ("variant_wins", "better")
    assert overall["ranking"][0] == "better" and overall["ranking"][-1] == "worse"
    assert "worse" not in overall["pareto_set"] and "better" in overall["pareto_set"]

    rows = {r["experiment_id"]: r for r in status_rows(store)}
    assert list(rows) == ["exp_abn"]
    row = rows["exp_abn"]
    assert (row["verdict"], row["winning_variant"], row["samples"]) == ("variant_wins", "better", 1200)
    assert set(row["variants"]) == set(effects)
    for vid, v in row["variants"].items():
        assert {"variant_slug", "verdict", "ci_95_low", "ci_95_high", "samples", "drift_signalled"} <= set(v)
        assert (v["variant_slug"], v["verdict"], v["samples"]) == (f"s-{vid}", verdicts[vid]["verdict"], 400)
        assert v["drift_signalled"] is (vid == "worse")
    assert row["drift_signalled"] is True
    assert row["ci_95_low"] == row["variants"]["better"]["ci_95_low"]

    # The overview: the experiment's overall verdict, then each comparison on its own row; the index renders.
    overview = {r["experiment_id"]: r for r in overview_rows(store)}
    assert overview["exp_abn"]["verdict"] == "variant_wins (better)"
    assert overview["exp_abn/worse"]["verdict"] == "control_wins"
    assert overview["exp_abn/worse"]["drift_state"] != "none"
    index = write_index(store, tmp_path / "reports")
    assert 'href="exp_abn--better.html"' in index.read_text()

    # The overall result on the bus: one report once the three verdicts are in (each comparison's verdict
    # re-reads it; it is emitted again only when a verdict or the winner changes).
    published = store.reports("exp_abn", "EXPERIMENT_OVERALL_RESULT")
    assert published and (published[-1]["verdict"], published[-1]["winning_variant"]) == ("variant_wins", "better")
    assert {vid: v["verdict"] for vid, v in published[-1]["variants"].items()} == {
        "better": "variant_wins", "flat": "inconclusive", "worse": "control_wins"}
    assert published[-1]["ranking"] == overall["ranking"] and published[-1]["pareto_set"] == overall["pareto_set"]
    assert len(published) <= 3

    # Nothing new: nothing due, nothing re-signalled, no overall result again.
    assert _run_due(store) == []
    assert len(signals(store)) == 1
    assert len(store.reports("exp_abn", "EXPERIMENT_OVERALL_RESULT")) == len(published)


def test_one_variant_is_promoted_the_overall_winner_with_its_own_signoff(store, workdirs):
    effects = {"best": 12.0, "good": 6.0, "null": 0.0}
    _declare(workdirs, "exp_pick", effects)
    sync_declarations(store, workdirs["experiments"])
    _land(store, workdirs, "pick", effects, 400, seed=11)
    _run_due(store)
    assert experiment_overall(store, "exp_pick")["winning_variant"] == "best"
    assert json.loads(latest_verdict(store, "exp_pick/good")["verdict_json"])["verdict"] == "variant_wins"

    # A winner that is not the overall winner is never promoted, even with a sign-off.
    good = promotion_state(store, "exp_pick/good")
    assert (good.state, good.reason_code) == ("not_promotable", PROMOTION_NOT_OVERALL_WINNER)
    best = promotion_state(store, "exp_pick/best")
    assert best.state == "awaiting_signoff"
    record_signoff(store, "exp_pick/best", "alice", latest_result_report_id(store, "exp_pick/best"))
    promoted = promotion_state(store, "exp_pick/best", apply=True)
    assert promoted.state == "promoted" and promoted.promoted_now
    record_signoff(store, "exp_pick/good", "bob", latest_result_report_id(store, "exp_pick/good"))
    refused = promotion_state(store, "exp_pick/good", apply=True)
    assert refused.state == "not_promotable"
    assert refused.reason_code in (PROMOTION_NOT_OVERALL_WINNER, PROMOTION_OTHER_VARIANT_PROMOTED)
    rows = {r["experiment_id"]: r for r in status_rows(store)}
    assert rows["exp_pick"]["variants"]["best"]["promotion_state"] == "promoted"


def test_one_treatment_experiments_are_unchanged_and_list_their_variant(store, workdirs):
    (workdirs["experiments"] / "exp_one.yaml").write_text(
        declaration("exp_one", variant_slug="v1", control_slug="c1", min_samples_for_decision=30))
    sync_declarations(store, workdirs["experiments"])
    assert comparison_rows(store, "exp_one") == []
    records = []
    for i in range(60):
        records += [fill(f"o{i}-c", "c1", "live", f"o{i}", t=i * 1000),
                    fill(f"o{i}-v", "v1", "shadow", f"o{i}", edge=1.0 + (i % 5) / 100, t=i * 1000 + 3)]
    write_jsonl(workdirs["landing"] / "one.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    assert _run_due(store) == ["exp_one"]
    verdict = json.loads(latest_verdict(store, "exp_one")["verdict_json"])
    assert verdict["multiple_testing"]["correction"] == "none"
    row = {r["experiment_id"]: r for r in status_rows(store)}["exp_one"]
    assert row["variants"] == {"variant": {
        "variant_slug": "v1", "verdict": row["verdict"], "ci_95_low": row["ci_95_low"], "ci_95_high": row["ci_95_high"],
        "samples": 60, "drift_signalled": False, "promotion_state": row["promotion_state"]}}


def test_limited_live_treatments_pair_within_the_caliper_and_check_their_own_traffic_share(store, workdirs):
    """Limited live: per tick 8 control fills and one fill of each of two treatments, all live; each treatment's
    comparison pairs its fills with the nearest control fill in the market and checks the sample ratio against its
    own share of its two arms (1000 / (1000 + 8000)), so a correct split raises no SRM."""
    variants = {"control": {"slug": "ctl", "traffic_share_bp": 8000},
                "up": {"slug": "s-up", "traffic_share_bp": 1000}, "same": {"slug": "s-same", "traffic_share_bp": 1000}}
    (workdirs["experiments"] / "exp_ll.yaml").write_text(declaration(
        "exp_ll", variant_slug="s-up", control_slug="ctl", mode="limited_live", traffic_split_pct=20,
        min_samples_for_decision=30, caliper_seconds=5, variants=variants,
        polb_config={"envelope_mode": "online", "max_population_share_bp": 2000}))
    sync = sync_declarations(store, workdirs["experiments"])
    assert not sync.rejected, sync.rejected
    rng = np.random.default_rng(5)
    records = []
    for i in range(400):
        t = i * 10_000
        market = f"m{i % 4}"
        for j in range(8):
            records.append(fill(f"t{i}-c{j}", "ctl", "live", f"t{i}-c{j}", edge=1.0 + rng.normal(0, 0.05), t=t + j * 50,
                                market=market))
        records.append(fill(f"t{i}-up", "s-up", "live", f"t{i}-up", edge=1.08 + rng.normal(0, 0.05), t=t + 10, market=market))
        records.append(fill(f"t{i}-same", "s-same", "live", f"t{i}-same", edge=1.0 + rng.normal(0, 0.05), t=t + 20,
                            market=market))
    write_jsonl(workdirs["landing"] / "ll.jsonl", records)
    assert ingest_landing(store, workdirs["landing"]).balanced
    assert _run_due(store) == ["exp_ll/same", "exp_ll/up"]
    for vid in ("up", "same"):
        verdict = json.loads(latest_verdict(store, f"exp_ll/{vid}")["verdict_json"])
        assert verdict["samples"] == 400
        assert "EXPERIMENT_SRM_DETECTED" not in verdict["reason_codes"], verdict["reason_codes"]
        srm = json.loads(latest_evaluation(store, f"exp_ll/{vid}")["evaluation_json"])["srm"]
        assert abs(srm["expected_share"] - 1 / 9) < 1e-5 and not srm["mismatch"]
    assert json.loads(latest_verdict(store, "exp_ll/up")["verdict_json"])["verdict"] == "variant_wins"
    assert json.loads(latest_verdict(store, "exp_ll/same")["verdict_json"])["verdict"] == "inconclusive"


def test_a_comparison_cannot_be_reparented_and_a_forged_one_is_detected(store, workdirs):
    import pytest
    import sqlalchemy as sa

    from experimenttracker_pipeline.stages.promotion.gate import PROMOTION_DECLARATION_TAMPERED
    from experimenttracker_pipeline_tests.support.tampering import superuser

    effects = {"good": 10.0, "null": 0.0}
    _declare(workdirs, "exp_t", effects)
    sync_declarations(store, workdirs["experiments"])
    _land(store, workdirs, "t", effects, 200, seed=3)
    _run_due(store)
    rewire = "UPDATE experiments SET variant_id = 'null' WHERE experiment_id = 'exp_t/good'"
    with pytest.raises(sa.exc.DBAPIError, match="declaration columns are immutable"):
        with store.begin() as conn:
            conn.execute(sa.text(rewire))
    # A superuser pointing the winning comparison at the other treatment's slug: the gate sees the row disagree.
    with superuser(store) as conn:
        conn.execute(sa.text("UPDATE experiments SET variant_slug = 's-null' WHERE experiment_id = 'exp_t/good'"))
    state = promotion_state(store, "exp_t/good")
    assert (state.state, state.reason_code) == ("declaration_tampered", PROMOTION_DECLARATION_TAMPERED)


def test_two_variants_promoted_at_once_record_one_promotion(store, workdirs, monkeypatch):
    """Two winning comparisons promoted at the same moment, each told (by a slow overall verdict) that it is the
    winner: the experiment's promotion lock makes the second see the first's promotion, so one variant is promoted."""
    import threading
    import time

    from experimenttracker_pipeline.stages.promotion import signoff as signoff_stage
    from experimenttracker_pipeline.stages.promotion.queries import promotions

    effects = {"a": 12.0, "b": 12.0}
    _declare(workdirs, "exp_race", effects)
    sync_declarations(store, workdirs["experiments"])
    _land(store, workdirs, "race", effects, 300, seed=13)
    _run_due(store)
    for vid in effects:
        assert json.loads(latest_verdict(store, f"exp_race/{vid}")["verdict_json"])["verdict"] == "variant_wins"
        record_signoff(store, f"exp_race/{vid}", "alice", latest_result_report_id(store, f"exp_race/{vid}"))

    asking = threading.local()

    def slow_overall(db, experiment_id):
        time.sleep(0.5)  # both callers are inside the check at once
        return {"winning_variant": asking.variant, "ranking": ["a", "b", "control"]}

    monkeypatch.setattr(signoff_stage, "experiment_overall", slow_overall)
    results = {}

    def promote(vid: str) -> None:
        asking.variant = vid
        results[vid] = promotion_state(store, f"exp_race/{vid}", apply=True)

    threads = [threading.Thread(target=promote, args=(vid,)) for vid in effects]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(r.state for r in results.values()) == ["not_promotable", "promoted"]
    refused = next(r for r in results.values() if r.state == "not_promotable")
    assert refused.reason_code == PROMOTION_OTHER_VARIANT_PROMOTED
    assert len([p for p in promotions(store) if p["experiment_id"].startswith("exp_race/")]) == 1
