"""Power, sample size, conditional power and expected duration for the paired design."""

from __future__ import annotations

import math
from typing import Callable, Literal

from scipy import special
from scipy import stats as sps

from .intervals import mixture_rho, normal_mixture_bound
from .sufficient import SufficientStats, _check_alpha

# ---------------------------------------------------------------------------
# Power and sample size (paired design = one-sample test on the deltas)
# ---------------------------------------------------------------------------


def power_at(n: float, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t-test with n pairs (noncentral t, as statsmodels TTestPower)."""
    _check_alpha(alpha)
    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    ncp = effect / sd * math.sqrt(n)
    crit = sps.t.isf(alpha / 2, df)
    # P(T < -crit | ncp) = P(T > crit | -ncp); scipy's nct.cdf returns NaN deep in the tail
    # where nct.sf does not.
    tails = [float(sps.nct.sf(crit, df, ncp)), float(sps.nct.sf(crit, df, -ncp))]
    for i, sign in enumerate((1.0, -1.0)):
        if not math.isfinite(tails[i]):  # normal approximation as a last resort
            tails[i] = float(special.ndtr(sign * ncp - crit))
    return min(1.0, tails[0] + tails[1])


def always_valid_power_at(n: float, effect: float, sd: float, alpha: float = 0.05, *, n_tune: float) -> float:
    """Probability that the confidence sequence excludes 0 when evaluated at n (normal approx.).

    A lower bound on the probability of a verdict by n under continuous monitoring (the
    sequence may also have crossed at an earlier look).
    """
    _check_alpha(alpha)
    if n < 1 or not sd > 0:
        return math.nan
    b = normal_mixture_bound(n, alpha, mixture_rho(n_tune, alpha)) / math.sqrt(n)
    shift = effect / sd * math.sqrt(n)
    return float(special.ndtr(shift - b) + special.ndtr(-b - shift))


def required_sample_size(
    mde: float,
    sd: float,
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    method: Literal["fixed_horizon", "z", "always_valid"] = "fixed_horizon",
    n_tune: float | None = None,
    n_max: int = 100_000_000,
) -> int:
    """Pairs needed to detect ``mde`` (bps) with the given power, two-sided, paired design.

    ``fixed_horizon``: exact one-sample t-test (noncentral t; statsmodels TTestPower rounded
    up). ``z``: normal approximation ((z_a/2 + z_b) sd / mde)^2, the one-sample form of spec
    13.1 (the paired delta's variance already contains both arms, so no factor 2).
    ``always_valid``: first n at which the confidence sequence (tuned at ``n_tune``, default
    this n's fixed-horizon size) excludes 0 with the given power at a single look.
    """
    _check_alpha(alpha)
    if not 0 < power < 1:
        raise ValueError("power must be in (0, 1)")
    if mde == 0 or not math.isfinite(mde):
        raise ValueError("mde must be non-zero and finite")
    if not sd > 0:
        raise ValueError("sd must be > 0")
    d = abs(mde) / sd
    z_sum = float(-special.ndtri(alpha / 2) + special.ndtri(power))
    if not z_sum < d * math.sqrt(n_max):  # vanishing effect size: no finite plan
        raise ValueError("required sample size exceeds n_max")
    n_z = (z_sum / d) ** 2
    if method == "z":
        return int(math.ceil(n_z - 1e-9))
    if method == "fixed_horizon":
        pw: Callable[[int], float] = lambda n: power_at(n, abs(mde), sd, alpha)
    elif method == "always_valid":
        tune = n_tune if n_tune is not None else required_sample_size(mde, sd, alpha, power)
        pw = lambda n: always_valid_power_at(n, abs(mde), sd, alpha, n_tune=tune)
    else:
        raise ValueError(f"unknown method {method!r}")
    # Power is increasing in n: exponential search for an upper bracket, then bisection.
    lo, hi = 1, max(2, int(math.ceil(n_z)))
    while pw(hi) < power:
        lo, hi = hi, hi * 2
        if hi > n_max:
            raise ValueError("required sample size exceeds n_max")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 2 and pw(mid) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def expected_days_to_decision(required_n: int | None, current_n: int, samples_per_day: float | None) -> float | None:
    """Days until ``required_n`` pairs at the observed rate; 0 if reached, None if unknown."""
    if required_n is None or samples_per_day is None or not math.isfinite(samples_per_day):
        return None
    remaining = max(0, required_n - current_n)
    if remaining == 0:
        return 0.0
    if samples_per_day <= 0:
        return None
    return remaining / samples_per_day


def conditional_power(
    stats: SufficientStats,
    planned_n: int,
    alpha: float = 0.05,
    assumed_effect: float | None = None,
    *,
    critical_value: float | None = None,
) -> float:
    """Probability that the final analysis at ``planned_n`` rejects mean = 0 (either side).

    Given the current sum, the remaining planned_n - n deltas are assumed N(theta, sd^2) with
    theta = ``assumed_effect`` (default: the current trend, the observed mean) and sd the
    observed one. ``critical_value`` is the final look's |z| bound (default z_{1-alpha/2});
    pass the confidence-sequence or group-sequential bound for those designs.
    """
    _check_alpha(alpha)
    n = stats.n
    if n < 2 or not stats.sd > 0:
        return math.nan
    sd = stats.sd
    theta = stats.mean if assumed_effect is None else assumed_effect
    c = float(-special.ndtri(alpha / 2)) if critical_value is None else critical_value
    big_n = max(planned_n, n)
    s_now = stats.n * stats.mean / sd  # standardized partial sum
    rem = big_n - n
    if rem == 0:
        z = s_now / math.sqrt(n)
        return 1.0 if abs(z) >= c else 0.0
    mu = s_now + rem * theta / sd
    edge = c * math.sqrt(big_n)
    sr = math.sqrt(rem)
    return float(special.ndtr((mu - edge) / sr) + special.ndtr((-edge - mu) / sr))


