"""Bayesian read-out of the mean paired delta: a Gaussian posterior, chance to beat control, expected loss.

Reported beside the frequentist result, never the verdict's basis: a chance to win re-evaluated after every
pair is not protected against peeking the way the always-valid interval is.

Model: the mean delta's likelihood is N(mean, se^2) (the CLT, with the sample se plugged in, as GrowthBook's
default engine does) and the prior is N(prior_mean, prior_sd^2); without ``prior_sd`` the prior is flat
(improper), so the posterior is N(mean, se^2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import special

from experimenttracker_pipeline.model.numbers import to_json

from .sufficient import SufficientStats


@dataclass(frozen=True)
class BayesianReadout:
    posterior_mean: float
    posterior_sd: float
    chance_to_beat_control: float  # P(delta > 0 | data)
    expected_loss_ship: float  # E[max(0, -delta)]: bps given up per pair by shipping the variant if it is worse
    expected_loss_keep: float  # E[max(0, delta)]: bps given up by keeping control if the variant is better
    credible_low: float
    credible_high: float
    prior: str  # "flat" or "normal(mean, sd)"
    prior_mean: float | None
    prior_sd: float | None

    def to_dict(self) -> dict:
        return to_json(asdict(self), sig=10)


def gaussian_readout(
    mean: float, se: float, *, prior_mean: float = 0.0, prior_sd: float | None = None, level: float = 0.95
) -> BayesianReadout:
    """Posterior of the mean delta from its estimate and standard error (see module docstring)."""
    if not (math.isfinite(mean) and math.isfinite(se) and se > 0):
        raise ValueError("mean must be finite and se > 0")
    if prior_sd is None:
        pm, ps, prior = mean, se, "flat"
    else:
        if not prior_sd > 0:
            raise ValueError("prior_sd must be > 0")
        precision = 1 / prior_sd**2 + 1 / se**2
        ps = math.sqrt(1 / precision)
        pm = (prior_mean / prior_sd**2 + mean / se**2) / precision
        prior = f"normal({prior_mean:g}, {prior_sd:g})"
    z = pm / ps
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    ctw = float(special.ndtr(z))
    # E[max(0, -X)] and E[max(0, X)] for X ~ N(pm, ps^2).
    loss_ship = ps * pdf - pm * float(special.ndtr(-z))
    loss_keep = ps * pdf + pm * ctw
    q = float(-special.ndtri((1 - level) / 2))
    return BayesianReadout(pm, ps, ctw, max(loss_ship, 0.0), max(loss_keep, 0.0), pm - q * ps, pm + q * ps,
                           prior, None if prior_sd is None else prior_mean, prior_sd)


def bayesian_readout(
    stats: SufficientStats, *, prior_mean: float = 0.0, prior_sd: float | None = None
) -> BayesianReadout | None:
    """``gaussian_readout`` of the paired deltas' mean; None while n < 2 or the sd is 0."""
    if stats.n < 2 or not stats.se > 0:
        return None
    return gaussian_readout(stats.mean, stats.se, prior_mean=prior_mean, prior_sd=prior_sd)
