"""Adaptive allocation: recommended shares stay within the floor and the PoLB cap whatever the evidence
(hypothesis), follow the posterior probability of being best, and the IPW/AIPW effects under adaptive allocation
agree with independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import integrate, stats

from experimenttracker_pipeline.causal.adaptive import ADAPTIVE_LOW_PROPENSITY, adaptive_effects
from experimenttracker_pipeline.stages.design.allocation import (
    EXPERIMENT_ALLOCATION_RECOMMENDED,
    ArmStats,
    bounded_shares,
    posterior,
    prob_best,
    recommend_allocation,
)


@settings(max_examples=300, deadline=None)
@given(
    probs=hs.lists(hs.floats(0, 1, allow_nan=False), min_size=2, max_size=6),
    floor=hs.sampled_from([0.0, 0.01, 0.05, 0.1, 0.125]),
    cap_bp=hs.integers(0, 10_000),
    control_pos=hs.integers(0, 5),
)
def test_shares_respect_floor_and_cap(probs, floor, cap_bp, control_pos):
    arms = [f"a{i}" for i in range(len(probs))]
    control = arms[control_pos % len(arms)]
    prob = dict(zip(arms, probs))
    floor_bp = math.ceil(round(floor * 10_000, 9))
    feasible = floor_bp * len(arms) <= 10_000 and floor_bp * (len(arms) - 1) <= cap_bp
    if not feasible:
        with pytest.raises(ValueError):
            bounded_shares(prob, control=control, floor=floor, cap_bp=cap_bp)
        return
    shares = bounded_shares(prob, control=control, floor=floor, cap_bp=cap_bp)
    assert list(shares) == arms
    assert sum(shares.values()) == 10_000
    assert all(isinstance(v, int) and v >= floor_bp for v in shares.values())
    assert sum(v for a, v in shares.items() if a != control) <= cap_bp


@settings(max_examples=100, deadline=None)
@given(
    ns=hs.lists(hs.integers(0, 500), min_size=2, max_size=4),
    means=hs.lists(hs.floats(-50, 50, allow_nan=False), min_size=4, max_size=4),
    sds=hs.lists(hs.floats(0, 30, allow_nan=False), min_size=4, max_size=4),
    cap_bp=hs.integers(1500, 10_000),
)
def test_recommendation_from_any_evidence_is_bounded(ns, means, sds, cap_bp):
    arms = [ArmStats(f"arm{i}", n, means[i], sds[i] ** 2) for i, n in enumerate(ns)]
    rec = recommend_allocation(arms, control="arm0", cap_bp=cap_bp, draws=2000)
    assert sum(rec.shares_bp.values()) == 10_000
    assert min(rec.shares_bp.values()) >= 500
    assert sum(v for a, v in rec.shares_bp.items() if a != "arm0") <= cap_bp
    assert sum(rec.prob_best.values()) == pytest.approx(1.0)
    payload = rec.to_payload()
    assert payload["event_type"] == EXPERIMENT_ALLOCATION_RECOMMENDED and payload["applied_by"] == "router"


def test_prob_best_matches_numerical_integration():
    """P(arm j best) = integral of pdf_j(x) prod_{i != j} cdf_i(x) dx for independent normal posteriors."""
    arms = [ArmStats("c", 400, 0.0, 100.0), ArmStats("a", 300, 0.8, 120.0), ArmStats("b", 200, 0.5, 80.0)]
    post = posterior(arms)
    mc = prob_best(arms, draws=400_000, seed=3)
    for j, arm in enumerate(arms):
        m, s = post[j]
        others = [p for i, p in enumerate(post) if i != j]
        f = lambda x: stats.norm.pdf(x, m, s) * np.prod([stats.norm.cdf(x, mo, so) for mo, so in others])
        exact, _ = integrate.quad(f, m - 10 * s, m + 10 * s)
        assert mc[arm.arm] == pytest.approx(exact, abs=0.004)


def test_lower_is_better_reverses_the_ranking():
    arms = [ArmStats("c", 1000, 0.0, 1.0), ArmStats("a", 1000, 1.0, 1.0)]
    assert prob_best(arms)["a"] > 0.99
    assert prob_best(arms, higher_is_better=False)["c"] > 0.99


def test_clear_winner_gets_the_cap_and_loser_the_floor():
    arms = [ArmStats("control", 5000, 0.0, 100.0), ArmStats("good", 5000, 3.0, 100.0), ArmStats("bad", 5000, -3.0, 100.0)]
    rec = recommend_allocation(arms, control="control", cap_bp=2000)
    assert rec.shares_bp == {"control": 8000, "good": 1500, "bad": 500}
    rec = recommend_allocation(arms, control="control", cap_bp=10_000)
    assert rec.shares_bp["good"] == 9000 and rec.shares_bp["bad"] == rec.shares_bp["control"] == 500


def test_cap_below_the_treatment_floors_is_refused():
    with pytest.raises(ValueError, match="cannot give 2 treatment"):
        bounded_shares({"c": 0.3, "a": 0.3, "b": 0.4}, control="c", floor=0.05, cap_bp=900)


def test_constant_propensities_reduce_to_the_difference_of_means():
    rng = np.random.default_rng(4)
    arms = rng.choice(["control", "v"], size=2000, p=[0.7, 0.3])
    y = rng.normal(0, 5, 2000) + (arms == "v") * 1.0
    e = np.where(arms == "v", 0.3, 0.7)
    eff = adaptive_effects(arms, y, e, control="control")["v"]
    diff = y[arms == "v"].mean() - y[arms == "control"].mean()
    assert eff.ipw.estimate_bps == pytest.approx(diff, rel=1e-12)
    assert eff.naive.estimate_bps == pytest.approx(diff, rel=1e-12)
    # Hajek IF-SE with known propensities vs the Welch SE: equal up to the n/(n-1) factors.
    welch = math.sqrt(y[arms == "v"].var(ddof=1) / (arms == "v").sum() + y[arms == "control"].var(ddof=1) / (arms == "control").sum())
    assert eff.ipw.se == pytest.approx(welch, rel=0.03)


def test_ipw_corrects_the_bias_of_an_adaptive_design():
    """A design that sends more traffic to an arm after it drew low outcomes biases the sample mean; weighting by
    the logged propensities removes it (true effect 0; averaged over experiments)."""
    rng = np.random.default_rng(6)
    naive, ipw, aipw = [], [], []
    for _ in range(300):
        arms, ys, es = [], [], []
        share = 0.5
        for _ in range(10):
            a = rng.random(100) < share
            y = rng.normal(0, 1, 100)
            arms += ["v" if x else "control" for x in a]
            ys += list(y)
            es += list(np.where(a, share, 1 - share))
            vm = np.mean([yy for aa, yy in zip(arms, ys) if aa == "v"])
            share = 0.8 if vm < 0 else 0.2  # chase the unlucky arm: its early lows get diluted
        eff = adaptive_effects(arms, ys, es, control="control")["v"]
        naive.append(eff.naive.estimate_bps)
        ipw.append(eff.ipw.estimate_bps)
        aipw.append(eff.aipw.estimate_bps)
    se = lambda v: np.std(v) / np.sqrt(len(v))
    assert abs(np.mean(naive)) > 3 * se(naive)  # the adaptive design biases the plain difference
    assert abs(np.mean(ipw)) < 3 * se(ipw)
    assert abs(np.mean(aipw)) < 3 * se(aipw)


def test_low_propensities_are_flagged_not_clipped():
    arms = ["control"] * 50 + ["v"] * 50
    e = [0.5] * 50 + [0.005] + [0.5] * 49
    y = list(np.arange(100.0))
    eff = adaptive_effects(arms, y, e, control="control")["v"]
    assert ADAPTIVE_LOW_PROPENSITY in eff.warnings and eff.min_propensity == 0.005


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="propensities"):
        adaptive_effects(["control", "v"], [1.0, 2.0], [0.5, 0.0], control="control")
    with pytest.raises(ValueError, match="control arm"):
        adaptive_effects(["v", "v"], [1.0, 2.0], [0.5, 0.5], control="control")
