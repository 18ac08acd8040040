"""A sandbox experiment's statistics (plain Python): the candidate - logged intervals cover the truth at 93-97%,
the overlap and effective-sample-size gates, and the verdict on the DR difference."""

from __future__ import annotations

import numpy as np
import yaml

from experimenttracker_pipeline.causal import evaluate_candidate_from_logs
from experimenttracker_pipeline.causal.common import OPE_LOW_ESS, OPE_TINY_PROPENSITY, OPE_WEIGHT_CONCENTRATED
from experimenttracker_pipeline.model.experiment import parse_experiment
from experimenttracker_pipeline.stages.verdict.assembly import combine_verdict, policy_of
from experimenttracker_pipeline_tests.builders import declaration
from experimenttracker_pipeline_tests.support import ope_logs as ol

SIMS, N = 1000, 1000


def test_difference_intervals_cover_the_known_difference():
    """The candidate values' coverage (IPS/SNIPS/DR with a covariate-only reward model) and the paired
    candidate - logged intervals': the library's own coverage is in benchmarks/ope_peer_check.py."""
    w = ol.world(0)
    logged = float(w.p_type @ (w.behavior * w.q).sum(axis=1))
    rng = np.random.default_rng(77)
    hits: dict[str, int] = {}
    for _ in range(SIMS):
        lg = ol.logs(w, N, rng)
        ev = evaluate_candidate_from_logs(lg.reward, lg.pscore, lg.candidate_dist[np.arange(N), lg.action], lg.X)
        for name in ("ips", "snips", "dr"):
            hits[name] = hits.get(name, 0) + getattr(ev.candidate, name).covers(w.value)
            hits[f"{name}-logged"] = hits.get(f"{name}-logged", 0) + ev.difference[name].covers(w.value - logged)
        hits["logged"] = hits.get("logged", 0) + ev.logged.covers(logged)
    coverage = {k: v / SIMS for k, v in hits.items()}
    assert all(0.93 <= c <= 0.97 for c in coverage.values()), coverage  # Monte Carlo SE 0.007


def test_overlap_and_ess_gates():
    rng = np.random.default_rng(1)
    n = 400
    reward = rng.normal(1, 2, n)
    good = evaluate_candidate_from_logs(reward, np.full(n, 0.5), np.full(n, 0.5))
    assert good.warnings == [] and good.estimate_reliable
    assert good.overlap["weight_ess"] == n and good.overlap["max_weight"] == 1.0
    # The candidate takes actions the logger took with p = 0.001 in 2.5% of the logs: tiny propensities, a few
    # huge weights, a small ESS.
    behavior = np.where(np.arange(n) % 40 == 0, 0.001, 0.5)
    poor = evaluate_candidate_from_logs(reward, behavior, np.full(n, 0.5))
    assert {OPE_TINY_PROPENSITY, OPE_WEIGHT_CONCENTRATED, OPE_LOW_ESS} <= set(poor.warnings)
    assert not poor.estimate_reliable
    assert poor.overlap["tiny_behavior_propensity"] == 10 and poor.overlap["max_weight"] == 500.0
    # A candidate that never takes the logged actions: value 0, a difference of minus the logged value.
    never = evaluate_candidate_from_logs(reward, np.full(n, 0.5), np.zeros(n))
    assert never.candidate.ips.estimate_bps == 0.0 and never.difference["snips"].estimate_bps is None


def _sandbox_experiment(min_samples: int = 500):
    text = declaration("exp_s", variant_slug="cand", control_slug="mm-live", min_samples_for_decision=min_samples,
                       polb_config={"envelope_mode": "sandbox"},
                       variants={"control": {"slug": "mm-live", "traffic_share_bp": 9000},
                                 "treatment": {"slug": "cand", "policy": "mm-greedy", "traffic_share_bp": 1000}})
    return parse_experiment(yaml.safe_load(text), "exp_s.yaml")


def _causal(logs: int, estimate: float, se: float, reliable: bool = True) -> dict:
    dr = {"estimate_bps": estimate, "se": se, "ci_95_low": estimate - 1.96 * se, "ci_95_high": estimate + 1.96 * se}
    return {"mode": "sandbox", "verdict_basis": "off_policy_dr", "estimate_reliable": reliable, "warnings": [],
            "harmed_segments": [], "sandbox": {"logs": logs, "difference": {"dr": dr}}}


NO_PAIRS = {"verdict": "insufficient_samples", "event_type": "EXPERIMENT_INSUFFICIENT_SAMPLES", "samples": 0,
            "reason_codes": ["EXPERIMENT_INSUFFICIENT_SAMPLES"], "ci_method": "always_valid", "plain_english": "x"}


def test_sandbox_verdict_on_the_dr_difference():
    experiment = _sandbox_experiment()
    assert experiment.sandbox_policy == "mm-greedy"
    policy = policy_of(experiment)
    wins = combine_verdict(experiment, NO_PAIRS, _causal(2000, 1.0, 0.1), policy)
    assert (wins["verdict"], wins["samples"], wins["event_type"]) == ("variant_wins", 2000, "EXPERIMENT_RESULT")
    assert wins["ci_95_low"] < wins["fixed_ci_95_low"] < 1.0  # widened to the always-valid footing
    assert "EXPERIMENT_INSUFFICIENT_SAMPLES" not in wins["reason_codes"]
    loses = combine_verdict(experiment, NO_PAIRS, _causal(2000, -1.0, 0.1), policy)
    assert loses["verdict"] == "control_wins"
    assert combine_verdict(experiment, NO_PAIRS, _causal(2000, 0.05, 0.1), policy)["verdict"] == "inconclusive"
    few = combine_verdict(experiment, NO_PAIRS, _causal(499, 1.0, 0.1), policy)
    assert few["verdict"] == "insufficient_samples" and few["samples"] == 499
    unreliable = combine_verdict(experiment, NO_PAIRS, _causal(2000, 1.0, 0.1, reliable=False), policy)
    assert unreliable["verdict"] == "inconclusive" and "overlap" in unreliable["plain_english"]
    no_estimate = {**_causal(10, 0, 0), "sandbox": {"logs": 10}}
    assert combine_verdict(experiment, NO_PAIRS, no_estimate, policy)["verdict"] == "insufficient_samples"
