"""Fixed-horizon t interval and normal-mixture confidence sequences (always-valid CIs and p-values)."""

from __future__ import annotations

import math
from typing import Literal

from scipy import optimize, special
from scipy import stats as sps

from .sufficient import Interval, SufficientStats, _check_alpha, _infinite_interval

# ---------------------------------------------------------------------------
# Fixed horizon
# ---------------------------------------------------------------------------


def fixed_ci(stats: SufficientStats, alpha: float = 0.05) -> Interval:
    """Student t interval and two-sided one-sample t-test p-value (spec ``computeCI95``)."""
    _check_alpha(alpha)
    if stats.n < 2:
        return _infinite_interval(stats, "fixed_horizon", alpha)
    df = stats.n - 1
    se = stats.se
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    mean = stats.mean
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * sps.t.sf(abs(mean) / se, df))
    return Interval(mean - crit * se, mean + crit * se, mean, se, p, "fixed_horizon", alpha, crit)


# ---------------------------------------------------------------------------
# Normal-mixture confidence sequences (Howard et al. 2021; confseq uniform_boundaries.h)
# ---------------------------------------------------------------------------


def mixture_rho(n_tune: float, alpha: float = 0.05) -> float:
    """Mixing parameter that makes the two-sided boundary tightest at ``n_tune`` samples.

    rho = n_tune / (ln(1 - 2 ln alpha) - 2 ln alpha); confseq ``best_rho``, Eppo's and
    GrowthBook's tuning rule. For a one-sided boundary at level a, pass alpha = 2a
    (confseq's ``OneSidedNormalMixture::best_rho``).
    """
    _check_alpha(alpha)
    if n_tune <= 0:
        raise ValueError("n_tune must be > 0")
    la = math.log(alpha)
    return n_tune / (math.log(1 - 2 * la) - 2 * la)


def normal_mixture_bound(v: float, alpha: float, rho: float) -> float:
    """Two-sided normal-mixture boundary on the standardized sum S_v (intrinsic time v)."""
    return math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha * alpha)))


def normal_log_mixture(s: float, v: float, rho: float) -> float:
    """log of the two-sided normal-mixture martingale (likelihood ratio) at S=s, V=v."""
    return 0.5 * math.log(rho / (v + rho)) + s * s / (2 * (v + rho))


def one_sided_normal_log_mixture(s: float, v: float, rho: float) -> float:
    """log of the one-sided (half-normal mixing) normal-mixture martingale."""
    return (
        math.log(2.0)
        + 0.5 * math.log(rho / (v + rho))
        + s * s / (2 * (v + rho))
        + float(special.log_ndtr(s / math.sqrt(v + rho)))
    )


def one_sided_normal_mixture_bound(v: float, alpha: float, rho: float) -> float:
    """Upper boundary u(v) with P(exists v: S_v >= u(v)) <= alpha (one-sided mixture)."""
    target = -math.log(alpha)
    # The one-sided mixture is at most twice the two-sided one, so the two-sided bound at
    # level 2*alpha... is a lower bracket only when positive; use a generous bracket instead.
    hi = normal_mixture_bound(v, alpha, rho) + 1.0
    lo = 0.0
    if one_sided_normal_log_mixture(lo, v, rho) >= target:  # pragma: no cover - alpha near 1
        return 0.0
    return float(optimize.brentq(lambda s: one_sided_normal_log_mixture(s, v, rho) - target, lo, hi, xtol=1e-12))


def normal_mixture_halfwidth(n: float, sd: float, alpha: float, rho: float) -> float:
    """Half-width (sd/n) * sqrt((n+rho) ln((n+rho)/(rho alpha^2))) of the mean's CS."""
    return sd / n * normal_mixture_bound(n, alpha, rho)


def always_valid_p_value(stats: SufficientStats, rho: float) -> float:
    """Always-valid p-value for mean = 0: 1 / (mixture likelihood ratio), capped at 1."""
    if stats.n < 2:
        return 1.0
    sd = stats.sd
    if sd == 0:
        return 1.0 if stats.mean == 0 else 0.0
    s = stats.total / sd  # standardized sum: sum(d_i) / sigma
    return float(min(1.0, math.exp(-normal_log_mixture(s, stats.n, rho))))


def confidence_sequence(stats: SufficientStats, alpha: float = 0.05, *, n_tune: float) -> Interval:
    """Always-valid two-sided (1 - alpha) confidence sequence for the mean delta.

    ``n_tune`` is the sample size at which the sequence is tightest (the expected decision
    size). Coverage holds simultaneously at every n, so it can be re-evaluated after each pair.
    """
    _check_alpha(alpha)
    if stats.n < 2:
        return _infinite_interval(stats, "always_valid", alpha)
    rho = mixture_rho(n_tune, alpha)
    sd = stats.sd
    hw = normal_mixture_halfwidth(stats.n, sd, alpha, rho)
    crit = normal_mixture_bound(stats.n, alpha, rho) / math.sqrt(stats.n)  # in SE units
    mean = stats.mean
    return Interval(mean - hw, mean + hw, mean, stats.se, always_valid_p_value(stats, rho), "always_valid", alpha, crit)


def one_sided_cs_bound(
    stats: SufficientStats,
    alpha: float = 0.025,
    *,
    n_tune: float,
    side: Literal["upper", "lower"] = "upper",
) -> float:
    """Always-valid one-sided bound for the mean delta at level ``alpha``.

    ``side="upper"``: U_n with P(exists n: mean > U_n) <= alpha; U_n < 0 is time-uniform
    evidence that the variant is worse (the drift signal). Uses the one-sided normal mixture
    tuned with confseq's rule rho = mixture_rho(n_tune, 2 * alpha).
    """
    _check_alpha(alpha)
    if side not in ("upper", "lower"):
        raise ValueError("side must be 'upper' or 'lower'")
    if stats.n < 2:
        return math.inf if side == "upper" else -math.inf
    rho = mixture_rho(n_tune, min(2 * alpha, 0.999))
    hw = stats.sd / stats.n * one_sided_normal_mixture_bound(stats.n, alpha, rho)
    return stats.mean + hw if side == "upper" else stats.mean - hw


