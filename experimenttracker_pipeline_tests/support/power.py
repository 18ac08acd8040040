"""Power by simulation of the verdict's own decision interval, for checking planned sample sizes."""

from __future__ import annotations

import numpy as np
from scipy import special

import experimenttracker_pipeline.stats as st


def simulated_power(n: int, effect: float, sd: float, alpha: float, n_tune: int, sims: int,
                    rng: np.random.Generator, ci_method: str = "always_valid") -> float:
    """Share of simulated experiments of n normal deltas whose decision interval (the verdict's own: the
    confidence sequence tuned at n_tune, or the fixed t interval) excludes zero at n."""
    hits = 0
    for start in range(0, sims, 500):
        block = rng.normal(effect, sd, size=(min(500, sims - start), n))
        for row in block:
            stats = st.SufficientStats.from_values(row)
            if ci_method == "always_valid":
                iv = st.confidence_sequence(stats, alpha, n_tune=n_tune)
            else:
                iv = st.fixed_ci(stats, alpha)
            hits += iv.low > 0 or iv.high < 0
    return hits / sims


def simulated_size(n0: int, effect: float, sd: float, alpha: float, power: float, *, sims: int, seed: int,
                   ci_method: str = "always_valid") -> tuple[float, list[tuple[int, float]]]:
    """The n at which simulated power reaches ``power``: power at five n around n0 (the interval tuned at n0, as
    the declaration tunes it), probit(power) fitted linear in sqrt(n), solved for the target. Returns the n and
    the (n, power) table."""
    rng = np.random.default_rng(seed)
    grid = [int(round(n0 * f)) for f in (0.85, 0.925, 1.0, 1.075, 1.15)]
    table = [(n, simulated_power(n, effect, sd, alpha, n0, sims, rng, ci_method)) for n in grid]
    x = np.sqrt([n for n, _ in table])
    z = special.ndtri(np.clip([p for _, p in table], 1e-4, 1 - 1e-4))
    b, a = np.polyfit(x, z, 1)
    return float(((special.ndtri(power) - a) / b) ** 2), table
