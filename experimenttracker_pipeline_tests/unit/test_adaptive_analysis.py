"""The analysis of an experiment under adaptive allocation (pure): fills without a usable logged propensity are
excluded and counted, the arm counts are checked against the logged propensities, the verdict decides on the
AIPW estimate from them (or on nothing), and every surface names that interval."""

from __future__ import annotations

import numpy as np

from experimenttracker_pipeline.causal import adaptive
from experimenttracker_pipeline.model.experiment import parse_experiment
from experimenttracker_pipeline.stages.reporting import deciding
from experimenttracker_pipeline.stages.verdict.assembly import combine_verdict, policy_of

from experimenttracker_pipeline_tests.contract_fixtures import abn_raw


def _units(n: int, shares: dict[str, float], effects: dict[str, float], seed: int = 0):
    rng = np.random.default_rng(seed)
    arms = list(shares)
    drawn = rng.choice(arms, size=n, p=[shares[a] for a in arms])
    y = np.array([effects[a] for a in drawn]) + rng.normal(0, 5, n)
    return drawn.tolist(), y.tolist(), [shares[a] for a in drawn]


def test_the_basis_name_is_the_same_in_the_causal_layer_and_on_the_surfaces():
    assert adaptive.ADAPTIVE_BASIS == deciding.ADAPTIVE_BASIS


def test_unusable_fills_are_excluded_and_counted():
    arms, y, e = _units(800, {"control": 0.6, "good": 0.2, "bad": 0.2}, {"control": 0, "good": 2, "bad": -2})
    e = list(e)
    e[0], e[1], e[2] = None, 1.0, 0.0
    markets = ["m"] * len(arms)
    markets[3] = "forbidden"
    out = adaptive.adaptive_analysis(arms, y, e, markets, list(range(len(arms))), control="control", variant="good",
                                     forbidden_markets=["forbidden"])
    assert out["adaptive"]["excluded"] == {"no_logged_propensity": 1, "not_randomised": 2, "zero_propensity": 1}
    assert out["adaptive"]["fills_used"] == len(arms) - 4
    assert out["verdict_basis"] == "aipw_adaptive" and out["estimate_reliable"] is True
    assert out["aipw_adaptive"]["n"] == len(arms) - 4 and out["verdict_estimate"] == out["aipw_adaptive"]
    assert adaptive.ADAPTIVE_FILLS_EXCLUDED in out["warnings"]
    assert out["aipw_adaptive"]["ci_95_low"] < 2 < out["aipw_adaptive"]["ci_95_high"]
    assert not out["adaptive"]["propensity_check"]["mismatch"]


def test_too_few_usable_fills_leave_no_estimate():
    out = adaptive.adaptive_analysis(["control", "good", "control"], [0.0, 1.0, 0.5], [0.8, None, 0.8], ["m"] * 3,
                                     [0, 1, 2], control="control", variant="good")
    assert out["verdict_basis"] == "aipw_adaptive" and out["aipw_adaptive"] is None
    assert out["estimate_reliable"] is False and adaptive.ADAPTIVE_INSUFFICIENT_DATA in out["warnings"]


def test_propensity_check_flags_counts_that_disagree_with_the_logs():
    arms, _, e = _units(4000, {"control": 0.5, "good": 0.25, "bad": 0.25}, {"control": 0, "good": 0, "bad": 0}, seed=4)
    assert not adaptive.propensity_check(arms, e)["mismatch"]
    # The router logged 0.25 for "good" but sent it half the treatment traffic again: the counts give it away.
    skewed = ["good" if a == "bad" and i % 2 else a for i, a in enumerate(arms)]
    check = adaptive.propensity_check(skewed, e)
    assert check["mismatch"] and check["arms"]["good"]["z"] > 5


def _experiment():
    return parse_experiment(abn_raw() | {"adaptive_allocation": {}, "min_samples_for_decision": 20}, "a.yaml")


EVALUATION = {"verdict": "variant_wins", "event_type": "EXPERIMENT_RESULT", "ci_method": "always_valid",
              "ci_95_low": 0.5, "ci_95_high": 3.0, "edge_delta_bps": 1.7, "samples": 200,
              "plain_english": "variant wins", "reason_codes": []}


def test_the_verdict_decides_on_the_adaptive_estimate():
    experiment = _experiment()
    causal = {"verdict_basis": "aipw_adaptive", "estimate_reliable": True, "n": 150,
              "aipw_adaptive": {"estimate_bps": -2.0, "se": 0.3, "ci_95_low": -2.6, "ci_95_high": -1.4, "n": 1000},
              "adaptive": {"fills": 1003, "fills_used": 1000, "excluded": {"no_logged_propensity": 3}}}
    final = combine_verdict(experiment, EVALUATION, causal, policy_of(experiment))
    assert final["basis"] == "aipw_adaptive_always_valid" and final["verdict"] == "control_wins"
    assert final["edge_delta_bps"] == -2.0 and final["ci_95_low"] < -2.6 and final["ci_95_high"] > -1.4
    assert final["paired_ci_95_low"] == 0.5  # the paired interval stays visible as supporting evidence
    assert final["adaptive_analysis"]["excluded"] == {"no_logged_propensity": 3}
    ci = deciding.deciding_ci(final)
    assert "adaptive allocation" in ci["method_name"] and "adaptive allocation" in ci["why"]
    labels = [s["label"] for s in deciding.supporting_intervals(final, causal)]
    assert "AIPW 95% interval from the logged propensities (single look)" in labels


def test_without_the_adaptive_estimate_there_is_no_winner():
    experiment = _experiment()
    causal = {"verdict_basis": "aipw_adaptive", "estimate_reliable": False, "aipw_adaptive": None,
              "warnings": [adaptive.ADAPTIVE_INSUFFICIENT_DATA], "adaptive": {"fills": 10, "fills_used": 1}}
    final = combine_verdict(experiment, EVALUATION, causal, policy_of(experiment))
    assert final["verdict"] == "inconclusive" and "logged assignment propensity" in final["plain_english"]
    assert adaptive.ADAPTIVE_INSUFFICIENT_DATA in final["reason_codes"]
