"""A/B/n in the model and the overall verdict, without a database: the comparisons an A/B/n declaration yields,
their policy (alpha / k), and the overall verdict's choice of winner on the goal surface."""

from __future__ import annotations

import math

import pytest

from experimenttracker_pipeline.model.experiment import parse_experiment
from experimenttracker_pipeline.stages.verdict.assembly import policy_of
from experimenttracker_pipeline.stages.verdict.overall import overall_verdict

RAW = {
    "experiment_id": "exp_m", "principal": "desk:sports", "variant_slug": "s-a", "control_slug": "ctl",
    "mode": "shadow_only", "traffic_split_pct": 30, "min_samples_for_decision": 50,
    "started_at": "2026-05-01T00:00:00Z",
    "variants": {"control": {"slug": "ctl", "traffic_share_bp": 7000}, "a": {"slug": "s-a", "traffic_share_bp": 1000},
                 "b": {"slug": "s-b", "traffic_share_bp": 1000}, "c": {"slug": "s-c", "traffic_share_bp": 1000}},
}


def test_an_abn_declaration_yields_one_comparison_per_treatment():
    experiment = parse_experiment(RAW, "exp_m.yaml")
    assert experiment.has_comparisons
    comparisons = experiment.comparisons()
    assert [c.experiment_id for c in comparisons] == ["exp_m/a", "exp_m/b", "exp_m/c"]
    b = experiment.comparison("b")
    assert (b.variant_slug, b.control_slug, b.variant_id, b.family_size) == ("s-b", "ctl", "b", 3)
    assert [v.id for v in b.contract.variants] == ["control", "b"] and b.contract.treatments[0].slug == "s-b"
    # Governed by the experiment's contract: approvals pin its digest, not a comparison's.
    assert b.governing is experiment and b.governing.contract.digest == experiment.contract.digest
    row = b.to_row()
    assert (row["experiment_id"], row["parent_experiment_id"], row["variant_id"]) == ("exp_m/b", "exp_m", "b")
    assert row["declaration_sha256"] == experiment.declaration_sha256  # the stored declaration is the experiment's
    assert b.traffic_split_pct == 10 and math.isclose(b.srm_split_pct, 100 / 8)
    assert not b.has_comparisons and b.comparisons() == ()
    with pytest.raises(KeyError):
        experiment.comparison("control")


def test_a_comparison_is_tested_at_alpha_over_k_and_a_single_treatment_at_alpha():
    experiment = parse_experiment(RAW, "exp_m.yaml")
    policy = policy_of(experiment.comparison("a"))
    assert math.isclose(policy.alpha, 0.05 / 3) and policy.treatments == 3
    single = parse_experiment({k: v for k, v in RAW.items() if k != "variants"} | {"traffic_split_pct": 10}, "one.yaml")
    assert not single.has_comparisons and single.comparisons() == ()
    assert policy_of(single).alpha == 0.05 and policy_of(single).treatments == 1


def _final(verdict: str, estimate: float, half: float = 1.0, n: int = 500) -> dict:
    return {"verdict": verdict, "edge_delta_bps": estimate, "ci_95_low": estimate - half, "ci_95_high": estimate + half,
            "samples": n, "basis": "always_valid", "reason_codes": []}


def test_the_overall_winner_is_the_best_ranked_winning_treatment():
    experiment = parse_experiment(RAW, "exp_m.yaml")
    out = overall_verdict(experiment, {
        "a": {"final": _final("variant_wins", 3.0), "samples": 500},
        "b": {"final": _final("variant_wins", 6.0), "samples": 500},
        "c": {"final": _final("control_wins", -4.0), "samples": 500, "drift_signalled": True}})
    assert (out["verdict"], out["winning_variant"], out["winning_variant_slug"]) == ("variant_wins", "b", "s-b")
    assert out["ranking"] == ["b", "a", "control", "c"]
    assert out["pareto_set"] == ["b"]  # one objective: the best point dominates the others
    assert (out["ci_95_low"], out["ci_95_high"], out["ci_variant"]) == (5.0, 7.0, "b")
    assert out["samples"] == 1500 and out["drift_signalled"] is True
    assert out["variants"]["c"]["drift_signalled"] is True and out["variants"]["a"]["drift_signalled"] is False


@pytest.mark.parametrize("verdicts, expected", [
    (("control_wins", "control_wins", "control_wins"), "control_wins"),
    (("control_wins", "inconclusive", "control_wins"), "inconclusive"),
    ((None, None, None), "insufficient_samples"),
    (("insufficient_samples", None, "insufficient_samples"), "insufficient_samples"),
    (("harm_detected", "inconclusive", "control_wins"), "inconclusive"),
])
def test_without_a_winner(verdicts, expected):
    experiment = parse_experiment(RAW, "exp_m.yaml")
    inputs = {vid: {"final": _final(v, -1.0) if v else None, "samples": 10} for vid, v in zip("abc", verdicts)}
    out = overall_verdict(experiment, inputs)
    assert out["verdict"] == expected and out["winning_variant"] is None
    assert set(out["variants"]) == {"a", "b", "c"}
