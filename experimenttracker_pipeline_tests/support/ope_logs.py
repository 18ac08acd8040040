"""Synthetic logged-bandit data with an exactly known candidate-policy value, and the Open Bandit Pipeline's
estimators transcribed from its source for comparison.

Contexts are drawn from a finite set of types with known probabilities, so the candidate policy's value
V(pi_e) = sum_x p(x) sum_a pi_e(a|x) q(x, a) is exact, not itself a Monte Carlo estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_TYPES, N_ACTIONS, NOISE_SD = 12, 3, 2.0


@dataclass(frozen=True)
class OpeWorld:
    p_type: np.ndarray  # (types,)
    q: np.ndarray  # (types, actions) expected reward, bps
    behavior: np.ndarray  # (types, actions) logging policy pi_b(a|x)
    candidate: np.ndarray  # (types, actions) candidate policy pi_e(a|x)

    @property
    def value(self) -> float:
        return float(self.p_type @ (self.candidate * self.q).sum(axis=1))


def world(seed: int = 0) -> OpeWorld:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(N_TYPES, 5.0))
    q = rng.normal(1.0, 1.5, (N_TYPES, N_ACTIONS))
    logits = rng.normal(0, 1.0, (N_TYPES, N_ACTIONS))
    behavior = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    behavior = 0.8 * behavior + 0.2 / N_ACTIONS  # every action logged with probability >= 6.7%
    eps = 0.1
    candidate = np.full((N_TYPES, N_ACTIONS), eps / N_ACTIONS)
    candidate[np.arange(N_TYPES), q.argmax(1)] += 1 - eps  # epsilon-greedy on the true best action
    return OpeWorld(p, q, behavior, candidate)


@dataclass(frozen=True)
class Logs:
    context: np.ndarray  # (n,) type index
    X: np.ndarray  # (n, types) one-hot context features
    action: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray  # pi_b(a_i|x_i)
    candidate_dist: np.ndarray  # (n, actions) pi_e(.|x_i)


def logs(w: OpeWorld, n: int, rng: np.random.Generator) -> Logs:
    x = rng.choice(N_TYPES, size=n, p=w.p_type)
    cum = w.behavior[x].cumsum(axis=1)
    a = (rng.random(n)[:, None] > cum).sum(axis=1)
    r = w.q[x, a] + rng.normal(0, NOISE_SD, n)
    X = np.eye(N_TYPES)[x]
    return Logs(x, X, a, r, w.behavior[x, a], w.candidate[x])


# obp 0.4.1, obp/ope/estimators.py: each estimator's value is the mean of its `_estimate_round_rewards`
# (BaseOffPolicyEstimator.estimate_policy_value), with iw = action_dist[i, a_i, position_i] / pscore_i.
def obp_ipw(reward, action, pscore, action_dist):
    """InverseProbabilityWeighting._estimate_round_rewards (l.318-319): reward * iw."""
    iw = action_dist[np.arange(action.shape[0]), action] / pscore
    return float(np.mean(reward * iw))


def obp_snipw(reward, action, pscore, action_dist):
    """SelfNormalizedInverseProbabilityWeighting._estimate_round_rewards (l.594-595): reward * iw / iw.mean()."""
    iw = action_dist[np.arange(action.shape[0]), action] / pscore
    return float(np.mean(reward * iw / iw.mean()))


def obp_dr(reward, action, pscore, action_dist, q_hat):
    """DoublyRobust._estimate_round_rewards (l.925-946): sum_a pi_e(a|x) q_hat(x, a) + iw (reward - q_hat(x, a_i))."""
    n = action.shape[0]
    iw = action_dist[np.arange(n), action] / pscore
    est = np.average(q_hat, weights=action_dist, axis=1)
    return float(np.mean(est + iw * (reward - q_hat[np.arange(n), action])))
