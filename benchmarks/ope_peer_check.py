"""Off-policy evaluation: CI coverage of the candidate policy's known value, and agreement with the Open Bandit
Pipeline (obp 0.4.1) on the same logs.

Synthetic logs (``experimenttracker_pipeline_tests/support/ope_logs.py``): 12 context types with known
probabilities, 3 actions, a softmax logging policy with a 6.7% floor, an epsilon-greedy candidate; rewards
q(x, a) + N(0, 2^2) bps. The candidate's value is exact. For each simulated log set, ``causal.off_policy_value``
gives IPS, SNIPS and DR (cross-fitted linear reward model) values with normal influence-function 95% CIs.

With obp installed (``pip install obp==0.4.1``, which pulls PyTorch), the same logs also go through obp's
InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting and DoublyRobust (same reward model) and
its bootstrap intervals.

    python benchmarks/ope_peer_check.py                    # 2000 log sets of 1000 rounds
    python benchmarks/ope_peer_check.py --sims 300 --n 4000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experimenttracker_pipeline.causal import crossfit_reward_model, off_policy_value  # noqa: E402
from experimenttracker_pipeline_tests.support import ope_logs as ol  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    w = ol.world(0)
    truth = w.value
    rng = np.random.default_rng(args.seed)
    names = ("ips", "snips", "dr")
    est = {k: [] for k in names}
    se = {k: [] for k in names}
    hits = {k: 0 for k in names}
    ess = []
    t0 = time.perf_counter()
    for _ in range(args.sims):
        lg = ol.logs(w, args.n, rng)
        idx = np.arange(args.n)
        ql, qc = crossfit_reward_model(lg.X, lg.action, lg.reward, lg.candidate_dist, kind="linear", n_folds=2, seed=0)
        res = off_policy_value(reward=lg.reward, logging_prob=lg.pscore, candidate_prob=lg.candidate_dist[idx, lg.action],
                               q_logged=ql, q_candidate=qc)
        ess.append(res.ess_share)
        for k in names:
            e = getattr(res, k)
            est[k].append(e.estimate_bps)
            se[k].append(e.se)
            hits[k] += e.covers(truth)
    dt = time.perf_counter() - t0
    print(f"OPE coverage: {args.sims} log sets of {args.n} rounds, candidate value {truth:.4f} bps "
          f"(Monte Carlo SE of a 95% coverage {np.sqrt(0.95 * 0.05 / args.sims):.3f}; {dt:.1f} s); "
          f"mean weight ESS/n {np.mean(ess):.2f}")
    print(f"{'estimator':>9} {'coverage':>9} {'bias':>8} {'SE/SD':>6}")
    for k in names:
        v = np.asarray(est[k])
        print(f"{k:>9} {hits[k] / args.sims:>9.3f} {v.mean() - truth:>8.4f} {np.mean(se[k]) / v.std(ddof=1):>6.2f}")
    try:
        from obp import __version__ as obp_version
        from obp import ope
    except ImportError:
        print("obp not installed: agreement with obp skipped (pip install obp==0.4.1)")
        return
    lg = ol.logs(w, 5000, np.random.default_rng(1))
    n = len(lg.action)
    idx = np.arange(n)
    q_hat = w.q[lg.context] + np.random.default_rng(2).normal(0, 0.3, (n, ol.N_ACTIONS))
    res = off_policy_value(reward=lg.reward, logging_prob=lg.pscore, candidate_prob=lg.candidate_dist[idx, lg.action],
                           q_logged=q_hat[idx, lg.action], q_candidate=(lg.candidate_dist * q_hat).sum(axis=1))
    common = {"reward": lg.reward, "action": lg.action, "pscore": lg.pscore, "action_dist": lg.candidate_dist[:, :, None]}
    peers = {
        "ips": ope.InverseProbabilityWeighting(),
        "snips": ope.SelfNormalizedInverseProbabilityWeighting(),
        "dr": ope.DoublyRobust(),
    }
    print(f"agreement with obp {obp_version} on one log set of {n} rounds (obp CI: percentile bootstrap, 4000 resamples):")
    print(f"{'estimator':>9} {'ours':>10} {'obp':>10} {'|diff|':>9} {'our 95% CI':>22} {'obp 95% CI':>22}")
    for k, peer in peers.items():
        extra = {"estimated_rewards_by_reg_model": q_hat[:, :, None]} if k == "dr" else {}
        v = peer.estimate_policy_value(**common, **extra)
        ci = peer.estimate_interval(**common, **extra, n_bootstrap_samples=4000, random_state=0)
        ours = getattr(res, k)
        mine = f"[{ours.ci_95_low:.4f}, {ours.ci_95_high:.4f}]"
        theirs = "[{:.4f}, {:.4f}]".format(ci["95.0% CI (lower)"], ci["95.0% CI (upper)"])
        print(f"{k:>9} {ours.estimate_bps:>10.5f} {v:>10.5f} {abs(ours.estimate_bps - v):>9.1e} {mine:>22} {theirs:>22}")


if __name__ == "__main__":
    main()
