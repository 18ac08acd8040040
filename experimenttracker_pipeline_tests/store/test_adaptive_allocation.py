"""Adaptive allocation wired into the pass (SQLite and PostgreSQL): a limited-live experiment with two treatments
and a control that declares `adaptive_allocation` (an A/B/n experiment: each treatment's comparison is evaluated on
its own) gets one EXPERIMENT_ALLOCATION_RECOMMENDED report per evaluation over every arm,
with every share within [floor, PoLB cap]; its verdict decides on the AIPW estimate from the logged propensities
(fills without one excluded and counted); `status --json` shows the newest recommendation. The same experiment
without the field emits none and keeps its usual basis."""

from __future__ import annotations

import json

import numpy as np

from experimenttracker_pipeline.cli import status_rows
from experimenttracker_pipeline.orchestration.due_work import EvaluationRule
from experimenttracker_pipeline.orchestration.experiment_pass import process_experiment
from experimenttracker_pipeline.stages.causal_effects.queries import latest_causal
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.design.allocation import EXPERIMENT_ALLOCATION_RECOMMENDED
from experimenttracker_pipeline.stages.design.recommendation import recommend_after_evaluation
from experimenttracker_pipeline.stages.drift.registry import registry_for
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.ingestion.queries import newest_batch_by_slug
from experimenttracker_pipeline.stages.verdict.queries import latest_verdict
from experimenttracker_pipeline_tests.builders import fill, write_jsonl

FLOOR_BP, CAP_BP = 500, 3000
EFFECTS = {"control": 0.0, "good": 3.0, "bad": -3.0}  # bps


def declaration(experiment_id: str, prefix: str, *, adaptive: bool) -> str:
    text = f"""experiment_id: {experiment_id}
principal: desk:sports
variant_slug: {prefix}-good
control_slug: {prefix}-control
mode: limited_live
traffic_split_pct: 20
min_samples_for_decision: 20
started_at: "2026-05-01T00:00:00Z"
polb_config:
  max_population_share_bp: {CAP_BP}
variants:
  control: {{slug: {prefix}-control, traffic_share_bp: 8000}}
  good: {{slug: {prefix}-good, traffic_share_bp: 1000}}
  bad: {{slug: {prefix}-bad, traffic_share_bp: 1000}}
eth_constraints:
  forbid: [market:mkt_forbidden]
"""
    if adaptive:
        text += f"adaptive_allocation: {{objective: primary_metric, floor_bp: {FLOOR_BP}}}\n"
    return text


def routed_fills(prefix: str, shares_bp: dict[str, int], start: int, count: int, seed: int,
                 tag: str | None = None) -> list[dict]:
    """Units routed by ``shares_bp``, each fill logging the probability of the arm it was routed to; plus two fills
    without a propensity and one forced-control fill in an ETH-forbidden market (both excluded from the analysis).
    ``tag``: the experiment id the treatments' fills carry (the control's are untagged)."""
    rng = np.random.default_rng(seed)
    arms = list(shares_bp)
    probs = np.array([shares_bp[a] for a in arms], dtype=float) / 10_000
    records = []
    for i in range(start, start + count):
        arm = arms[int(rng.choice(len(arms), p=probs))]
        bps = EFFECTS[arm] + float(rng.normal(0.0, 5.0))
        tagged = {"experiment_id": tag} if tag and arm != "control" else {}
        records.append(fill(f"{prefix}-{i}", f"{prefix}-{arm}", "live", f"{prefix}:{i}", edge=bps / 100.0,
                            t=i * 1000, assignment_propensity=shares_bp[arm] / 10_000, **tagged))
    records.append(fill(f"{prefix}-{start}-np1", f"{prefix}-control", "live", "np1", edge=0.0, t=start * 1000 + 1))
    records.append(fill(f"{prefix}-{start}-np2", f"{prefix}-good", "live", "np2", edge=0.03, t=start * 1000 + 2))
    records.append(fill(f"{prefix}-{start}-eth", f"{prefix}-control", "live", "eth", edge=0.0, t=start * 1000 + 3,
                        market="mkt_forbidden", assignment_propensity=1.0))
    return records


def _land(store, workdirs, name: str, records: list[dict]) -> None:
    write_jsonl(workdirs["landing"] / name, records)
    assert ingest_landing(store, workdirs["landing"]).balanced


def _pass(store, experiment_id: str):
    outcome = process_experiment(store, registry_for(None), experiment_id, EvaluationRule("growth"),
                                 newest_batch_by_slug(store))
    assert outcome.ok, outcome.error
    return outcome


def _count(store, table: str, experiment_id: str) -> int:
    return store.scalar(f"SELECT COUNT(*) FROM {table} WHERE experiment_id = :e", e=experiment_id)


def _assert_within_bounds(shares: dict[str, int]) -> None:
    assert sum(shares.values()) == 10_000
    assert min(shares.values()) >= FLOOR_BP
    assert shares["good"] + shares["bad"] <= CAP_BP


def _pass_all(store, experiment_id: str) -> dict:
    """One pass over the experiment's comparisons (one per treatment: it has two)."""
    return {vid: _pass(store, f"{experiment_id}/{vid}") for vid in ("good", "bad")}


def test_pass_recommends_once_per_evaluation_and_decides_on_the_logged_propensities(store, workdirs):
    (workdirs["experiments"] / "exp_adaptive.yaml").write_text(declaration("exp_adaptive", "ad", adaptive=True))
    (workdirs["experiments"] / "exp_fixed.yaml").write_text(declaration("exp_fixed", "fx", adaptive=False))
    sync_declarations(store, workdirs["experiments"])
    declared = {"control": 8000, "good": 1000, "bad": 1000}
    _land(store, workdirs, "b1.jsonl", routed_fills("ad", declared, 0, 1500, seed=1, tag="exp_adaptive")
          + routed_fills("fx", declared, 0, 1500, seed=1))

    # Each treatment's comparison is evaluated on its own; each evaluation refreshes the experiment's
    # recommendation over every arm.
    first = _pass_all(store, "exp_adaptive")
    assert all(o.evaluated and o.allocation is not None for o in first.values())
    recommendation = first["good"].allocation
    assert recommendation.report is not None and recommendation.experiment_id == "exp_adaptive"
    shares = recommendation.recommendation.shares_bp
    _assert_within_bounds(shares)
    assert shares["good"] > shares["bad"]  # the better arm gets more of the capped treatment traffic
    assert recommendation.payload["evaluation_samples"] == first["good"].verdict.verdict["samples"]

    # The next period routed by the recommendation: propensities change with the shares.
    _land(store, workdirs, "b2.jsonl", routed_fills("ad", shares, 1500, 1500, seed=2, tag="exp_adaptive"))
    second = _pass_all(store, "exp_adaptive")
    assert second["good"].evaluated and second["good"].allocation.report is not None
    _assert_within_bounds(second["good"].allocation.recommendation.shares_bp)
    assert not any(o.evaluated for o in _pass_all(store, "exp_adaptive").values())  # nothing new: no report
    latest = second["bad"].verdict.verdict["samples"]
    again = recommend_after_evaluation(store, "exp_adaptive/bad", latest)
    assert again is not None and again.report is None  # once per evaluation's sample count

    reports = store.reports("exp_adaptive", EXPERIMENT_ALLOCATION_RECOMMENDED)
    evaluated = [o.verdict.verdict["samples"] for run in (first, second) for o in run.values()]
    assert [r["evaluation_samples"] for r in reports] == list(dict.fromkeys(evaluated))
    assert len(reports) >= 2
    for report in reports:
        _assert_within_bounds(report["recommended_shares_bp"])
        assert report["objective"] == "primary_metric" and report["floor_bp"] == FLOOR_BP
        assert report["eth_forced_control_markets"] == ["mkt_forbidden"]

    # The deciding CI is the AIPW estimate from the logged propensities, widened to the always-valid footing.
    verdict = json.loads(latest_verdict(store, "exp_adaptive/good")["verdict_json"])
    causal = json.loads(latest_causal(store, "exp_adaptive/good")["result_json"])
    assert causal["verdict_basis"] == "aipw_adaptive"
    assert verdict["basis"] == "aipw_adaptive_always_valid"
    assert verdict["edge_delta_bps"] == causal["aipw_adaptive"]["estimate_bps"]
    assert verdict["ci_95_low"] <= causal["aipw_adaptive"]["ci_95_low"] < 3.0 < causal["aipw_adaptive"]["ci_95_high"]
    assert verdict["verdict"] in ("variant_wins", "inconclusive")
    excluded = verdict["adaptive_analysis"]["excluded"]
    assert excluded == {"no_logged_propensity": 4, "not_randomised": 2, "zero_propensity": 0}
    assert "CAUSAL_ADAPTIVE_FILLS_EXCLUDED" in verdict["reason_codes"]
    assert set(causal["adaptive"]["effects"]) == {"good"}  # this comparison's treatment against the control
    # Every fill of its two arms, those tagged with the experiment's id included.
    arm_fills = store.scalar("SELECT COUNT(*) FROM raw_reports WHERE strategy_slug IN ('ad-control', 'ad-good')")
    assert verdict["adaptive_analysis"]["fills"] == arm_fills
    result = store.reports("exp_adaptive/good", "EXPERIMENT_RESULT")[-1]
    assert result["ci_method"] == result["deciding_ci"]["method"] == "aipw_adaptive_always_valid"
    assert result["adaptive_analysis"]["excluded"]["no_logged_propensity"] >= 2

    # status --json: the newest recommendation on the experiment, the deciding CI's method per variant.
    _pass_all(store, "exp_fixed")
    rows = {r["experiment_id"]: r for r in status_rows(store)}
    shown = rows["exp_adaptive"]["allocation"]
    assert shown["report_id"] == reports[-1]["report_id"] and shown["evaluation_samples"] == reports[-1]["evaluation_samples"]
    assert set(shown["arms"]["good"]) == {"slug", "n", "mean", "declared_share_bp", "recommended_share_bp", "prob_best"}
    assert shown["arms"]["good"]["slug"] == "ad-good" and shown["arms"]["control"]["declared_share_bp"] == 8000
    assert rows["exp_adaptive"]["variants"]["good"]["ci_method"] == "aipw_adaptive_always_valid"

    # Without the field: evaluated as before, no recommendation, its usual basis.
    assert _count(store, "experiment_evaluations", "exp_fixed/good") == 1
    assert store.reports("exp_fixed", EXPERIMENT_ALLOCATION_RECOMMENDED) == []
    assert "allocation" not in rows["exp_fixed"]
    assert not rows["exp_fixed"]["variants"]["good"]["ci_method"].startswith("aipw_adaptive")


def test_a_failing_recommendation_is_noted_and_the_other_stages_run(store, workdirs, monkeypatch):
    (workdirs["experiments"] / "exp_adaptive.yaml").write_text(declaration("exp_adaptive", "ad", adaptive=True))
    sync_declarations(store, workdirs["experiments"])
    _land(store, workdirs, "b1.jsonl", routed_fills("ad", {"control": 8000, "good": 1000, "bad": 1000}, 0, 600, seed=3))

    def broken(*args, **kwargs):
        raise RuntimeError("router unreachable")

    monkeypatch.setattr("experimenttracker_pipeline.orchestration.experiment_pass.recommend_after_evaluation", broken)
    outcome = _pass(store, "exp_adaptive/good")
    assert outcome.evaluated and outcome.drift is not None and outcome.promotion is not None
    assert outcome.allocation is None
    assert outcome.notes == ["allocation not recommended: RuntimeError: router unreachable"]
    assert store.reports("exp_adaptive", EXPERIMENT_ALLOCATION_RECOMMENDED) == []


def test_goal_surface_objective_ranks_arms_on_the_scalarised_score(store, workdirs):
    """`objective: goal_surface` scores each fill by the surface's weighted sum (edge - 1.0 x slippage here): the
    arm with the best edge but a much worse slippage is no longer the favourite."""
    surface = """eval_surface:
  objectives:
    primary: [{name: edge_delta_bps, weight_bp: 10000}]
    secondary: [{name: slippage_delta_bps, weight_bp: -10000}]
"""
    for experiment_id, objective in (("exp_primary", "primary_metric"), ("exp_surface", "goal_surface")):
        text = declaration(experiment_id, experiment_id, adaptive=False) + surface
        text += f"adaptive_allocation: {{objective: {objective}, floor_bp: {FLOOR_BP}}}\n"
        (workdirs["experiments"] / f"{experiment_id}.yaml").write_text(text)
    sync_declarations(store, workdirs["experiments"])
    rng = np.random.default_rng(5)
    records = []
    for prefix in ("exp_primary", "exp_surface"):
        for arm, n, edge_bps, slippage in (("control", 400, 0.0, 2.0), ("good", 100, 3.0, 12.0), ("bad", 100, -1.0, 2.0)):
            for i in range(n):
                records.append(fill(f"{prefix}-{arm}-{i}", f"{prefix}-{arm}", "live", f"{prefix}:{arm}:{i}",
                                    edge=(edge_bps + float(rng.normal(0, 2))) / 100.0, t=i * 1000,
                                    slippage_bps=slippage + float(rng.normal(0, 1))))
    _land(store, workdirs, "b1.jsonl", records)
    by_primary = recommend_after_evaluation(store, "exp_primary", 0)
    by_surface = recommend_after_evaluation(store, "exp_surface", 0)
    assert by_primary.payload["objective"] == "primary_metric"
    assert max(by_primary.recommendation.prob_best, key=by_primary.recommendation.prob_best.get) == "good"
    assert by_surface.payload["objective"] == "goal_surface"
    assert by_surface.payload["objective_weights"] == {"edge_delta_bps": 1.0, "slippage_delta_bps": -1.0}
    assert by_surface.arms["good"]["mean"] < by_surface.arms["control"]["mean"]  # 3 - 12 < 0 - 2
    assert max(by_surface.recommendation.prob_best, key=by_surface.recommendation.prob_best.get) == "control"
    for result in (by_primary, by_surface):
        _assert_within_bounds(result.recommendation.shares_bp)
        assert result.report is not None
