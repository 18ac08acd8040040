"""Off-policy evaluation against the truth and against the Open Bandit Pipeline.

Coverage: on synthetic logs whose candidate-policy value is known exactly (finite context types), the IPS, SNIPS
and DR 95% intervals of ``causal.off_policy_value`` cover it at 93-97% over many simulated log sets.

Agreement: the point values equal the Open Bandit Pipeline (obp 0.4.1) estimators' on the same logs, checked
against obp's formulas transcribed from its source (``support/ope_logs.py``) always, and against obp itself when
it is installed (``pip install obp==0.4.1``; it pulls PyTorch, so it is not a dev dependency).
"""

from __future__ import annotations

import numpy as np
import pytest

from experimenttracker_pipeline.causal import crossfit_reward_model, off_policy_value
from experimenttracker_pipeline_tests.support import ope_logs as ol

SIMS, N = 1000, 1000


def _evaluate(lg: ol.Logs, *, dr: bool = True):
    idx = np.arange(len(lg.action))
    kwargs = {}
    if dr:
        q_logged, q_cand = crossfit_reward_model(lg.X, lg.action, lg.reward, lg.candidate_dist, kind="linear",
                                                 n_folds=2, seed=0)
        kwargs = {"q_logged": q_logged, "q_candidate": q_cand}
    return off_policy_value(reward=lg.reward, logging_prob=lg.pscore, candidate_prob=lg.candidate_dist[idx, lg.action],
                            **kwargs)


def test_intervals_cover_the_known_candidate_value():
    w = ol.world(0)
    truth = w.value
    logging_value = float(w.p_type @ (w.behavior * w.q).sum(axis=1))
    assert abs(truth - logging_value) > 0.5  # the candidate genuinely differs from the logging policy
    rng = np.random.default_rng(2024)
    hits = {"ips": 0, "snips": 0, "dr": 0}
    for _ in range(SIMS):
        res = _evaluate(ol.logs(w, N, rng))
        for name in hits:
            hits[name] += getattr(res, name).covers(truth)
    coverage = {k: v / SIMS for k, v in hits.items()}
    # Monte Carlo SE of a 95% coverage over 1000 log sets: 0.007.
    for name, c in coverage.items():
        assert 0.93 <= c <= 0.97, coverage


def test_values_equal_obp_formulas():
    w = ol.world(1)
    lg = ol.logs(w, 3000, np.random.default_rng(5))
    n = len(lg.action)
    rng = np.random.default_rng(9)
    q_hat = w.q[lg.context] + rng.normal(0, 0.3, (n, ol.N_ACTIONS))  # any reward model: same one for both
    res = off_policy_value(reward=lg.reward, logging_prob=lg.pscore,
                           candidate_prob=lg.candidate_dist[np.arange(n), lg.action],
                           q_logged=q_hat[np.arange(n), lg.action],
                           q_candidate=(lg.candidate_dist * q_hat).sum(axis=1))
    args = (lg.reward, lg.action, lg.pscore, lg.candidate_dist)
    assert res.ips.estimate_bps == pytest.approx(ol.obp_ipw(*args), rel=1e-12)
    assert res.snips.estimate_bps == pytest.approx(ol.obp_snipw(*args), rel=1e-12)
    assert res.dr.estimate_bps == pytest.approx(ol.obp_dr(*args, q_hat), rel=1e-12)


def test_values_equal_obp_itself():
    import obp.ope as obp_ope  # a dev dependency: a missing obp fails here, it never skips
    w = ol.world(1)
    lg = ol.logs(w, 3000, np.random.default_rng(5))
    n = len(lg.action)
    q_hat = w.q[lg.context] + np.random.default_rng(9).normal(0, 0.3, (n, ol.N_ACTIONS))
    res = off_policy_value(reward=lg.reward, logging_prob=lg.pscore,
                           candidate_prob=lg.candidate_dist[np.arange(n), lg.action],
                           q_logged=q_hat[np.arange(n), lg.action],
                           q_candidate=(lg.candidate_dist * q_hat).sum(axis=1))
    dist = lg.candidate_dist[:, :, None]
    common = {"reward": lg.reward, "action": lg.action, "pscore": lg.pscore, "action_dist": dist}
    assert res.ips.estimate_bps == pytest.approx(
        obp_ope.InverseProbabilityWeighting().estimate_policy_value(**common), rel=1e-10)
    assert res.snips.estimate_bps == pytest.approx(
        obp_ope.SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**common), rel=1e-10)
    assert res.dr.estimate_bps == pytest.approx(obp_ope.DoublyRobust().estimate_policy_value(
        **common, estimated_rewards_by_reg_model=q_hat[:, :, None]), rel=1e-10)
    # obp's intervals are percentile bootstraps; ours are normal influence-function intervals: same width.
    boot = obp_ope.InverseProbabilityWeighting().estimate_interval(**common, n_bootstrap_samples=4000, random_state=0)
    width = res.ips.ci_95_high - res.ips.ci_95_low
    assert boot["95.0% CI (upper)"] - boot["95.0% CI (lower)"] == pytest.approx(width, rel=0.08)
