"""Adaptive allocation for limited-live experiments (spec 15): recommended traffic shares from the posterior
probability that each arm is best, bounded by a floor per arm and the PoLB population cap.

The recommendation is advice for the router, which alone applies it; this module never routes. Bounds, in
order of precedence:

1. the PoLB ``max_population_share_bp`` caps the sum of the non-control shares (never more exposure than
   declared); the cap is a hard limit, so a floor that the cap cannot honour is a configuration error;
2. every arm, control included, keeps at least the floor (default 5%), so no arm starves and every logged
   assignment propensity stays >= the floor (this keeps the IPW/AIPW analysis valid: weights <= 1/floor);
3. within those bounds the shares follow the Thompson probabilities: ``floor + (1 - K floor) * P(best)``,
   then the treatments' excess above the floor is scaled down to the cap and the control takes the rest.

Shares are of the *eligible* units: units that ETH rules force to control (``eth_forced_control``) stay control
whatever the recommendation says, so they only add control exposure.

Posteriors are normal, from each arm's sufficient statistics (n, mean, variance) of the primary metric with a
flat prior; an arm with fewer than two observations borrows the pooled variance and a unit-information prior
centred on the pooled mean. ``P(best)`` is estimated from seeded posterior draws (Thompson sampling's
allocation probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "ArmStats", "AllocationRecommendation", "posterior", "prob_best", "bounded_shares", "recommend_allocation",
    "DEFAULT_FLOOR", "EXPERIMENT_ALLOCATION_RECOMMENDED",
]

DEFAULT_FLOOR = 0.05
EXPERIMENT_ALLOCATION_RECOMMENDED = "EXPERIMENT_ALLOCATION_RECOMMENDED"


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm's primary metric (per unit outcome, not paired deltas)."""

    arm: str
    n: int
    mean: float = 0.0
    variance: float = 0.0  # sample variance (ddof 1)

    @classmethod
    def from_values(cls, arm: str, values: Sequence[float] | np.ndarray) -> "ArmStats":
        v = np.asarray(values, dtype=float)
        return cls(arm, int(v.size), float(v.mean()) if v.size else 0.0, float(v.var(ddof=1)) if v.size > 1 else 0.0)


def posterior(arms: Sequence[ArmStats]) -> list[tuple[float, float]]:
    """(mean, sd) of each arm's normal posterior for its mean outcome."""
    total = sum(a.n for a in arms)
    pooled_mean = sum(a.n * a.mean for a in arms) / total if total else 0.0
    dof = sum(a.n - 1 for a in arms if a.n > 1)
    pooled_var = sum((a.n - 1) * a.variance for a in arms if a.n > 1) / dof if dof else 1.0
    pooled_var = pooled_var if pooled_var > 0 else 1.0
    out = []
    for a in arms:
        if a.n >= 2 and a.variance > 0:
            out.append((a.mean, math.sqrt(a.variance / a.n)))
        else:
            # Unit-information prior N(pooled mean, pooled var) updated with the arm's 0 or 1 observations.
            precision = (1 + a.n) / pooled_var
            mean = (pooled_mean + a.n * a.mean) / (1 + a.n)
            out.append((mean, math.sqrt(1 / precision)))
    return out


def prob_best(arms: Sequence[ArmStats], *, higher_is_better: bool = True, draws: int = 20_000,
              seed: int = 0) -> dict[str, float]:
    """Posterior probability that each arm has the best mean (seeded Monte Carlo over the normal posteriors)."""
    if not arms:
        raise ValueError("no arms")
    post = posterior(arms)
    rng = np.random.default_rng(seed)
    means = np.array([m for m, _ in post])
    sds = np.array([s for _, s in post])
    sample = rng.standard_normal((draws, len(arms))) * sds + means
    best = (sample if higher_is_better else -sample).argmax(axis=1)
    counts = np.bincount(best, minlength=len(arms))
    return {a.arm: float(c / draws) for a, c in zip(arms, counts)}


def bounded_shares(prob: Mapping[str, float], *, control: str, floor: float = DEFAULT_FLOOR,
                   cap_bp: int = 10_000) -> dict[str, int]:
    """Shares in basis points (summing to 10,000) that follow ``prob`` within the floor and the PoLB cap.

    Every arm gets >= ceil(floor * 10,000) bp; the non-control arms together get <= ``cap_bp``.
    Raises ValueError when the floor and the cap cannot both hold.
    """
    if control not in prob:
        raise ValueError(f"control arm {control!r} has no probability")
    arms = list(prob)
    k = len(arms)
    treatments = [a for a in arms if a != control]
    floor_bp = math.ceil(round(floor * 10_000, 9))
    if not 0 <= floor_bp * k <= 10_000:
        raise ValueError(f"a floor of {floor:g} for {k} arms exceeds the whole population")
    if not 0 <= cap_bp <= 10_000:
        raise ValueError("cap_bp must be in [0, 10000]")
    if floor_bp * len(treatments) > cap_bp:
        raise ValueError(f"the PoLB cap of {cap_bp} bp cannot give {len(treatments)} treatment(s) the floor of "
                         f"{floor_bp} bp each: lower the floor or drop a variant")
    p = np.array([max(0.0, float(prob[a])) for a in arms])
    p = p / p.sum() if p.sum() > 0 else np.full(k, 1 / k)
    share = floor_bp + (10_000 - k * floor_bp) * p  # >= floor, sums to 10,000
    idx_t = [arms.index(a) for a in treatments]
    excess = share[idx_t] - floor_bp
    room = cap_bp - floor_bp * len(treatments)
    if excess.sum() > room:
        share[idx_t] = floor_bp + excess * (room / excess.sum())
    out = {a: int(math.floor(share[i] + 1e-9)) for i, a in enumerate(arms) if a != control}
    out[control] = 10_000 - sum(out.values())
    return {a: out[a] for a in arms}


@dataclass(frozen=True)
class AllocationRecommendation:
    shares_bp: dict[str, int]
    prob_best: dict[str, float]
    posterior: dict[str, tuple[float, float]]
    floor_bp: int
    cap_bp: int
    control: str
    seed: int

    def to_payload(self) -> dict:
        """The body of an ``EXPERIMENT_ALLOCATION_RECOMMENDED`` OperationsReport."""
        return {
            "event_type": EXPERIMENT_ALLOCATION_RECOMMENDED,
            "recommended_shares_bp": dict(self.shares_bp),
            "prob_best": {a: round(p, 6) for a, p in self.prob_best.items()},
            "posterior": {a: {"mean": m, "sd": s} for a, (m, s) in self.posterior.items()},
            "floor_bp": self.floor_bp,
            "max_population_share_bp": self.cap_bp,
            "control": self.control,
            "applies_to": "eligible units; ETH-forced units stay control",
            "applied_by": "router",
            "method": "thompson_sampling_normal_posterior",
            "seed": self.seed,
            "analysis": "effects are estimated by IPW/AIPW with the logged assignment propensities",
        }


def recommend_allocation(arms: Sequence[ArmStats], *, control: str, cap_bp: int, floor: float = DEFAULT_FLOOR,
                         higher_is_better: bool = True, draws: int = 20_000, seed: int = 0) -> AllocationRecommendation:
    """Thompson-sampling shares for the next period, within the floor and the PoLB cap (module docstring)."""
    if control not in {a.arm for a in arms}:
        raise ValueError(f"no statistics for the control arm {control!r}")
    prob = prob_best(arms, higher_is_better=higher_is_better, draws=draws, seed=seed)
    shares = bounded_shares(prob, control=control, floor=floor, cap_bp=cap_bp)
    post = dict(zip([a.arm for a in arms], posterior(arms)))
    return AllocationRecommendation(shares, prob, post, math.ceil(round(floor * 10_000, 9)), cap_bp, control, seed)
