"""Fixed-horizon t interval and normal-mixture confidence sequences (always-valid CIs and p-values)."""

from __future__ import annotations

import math
from typing import Literal

from scipy import optimize, special
from scipy import stats as sps

from .sufficient import Interval, SufficientStats, _check_alpha, _infinite_interval

# Smallest n at which the confidence sequence may decide. It plugs in the sample sd where its boundary
# assumes the true one; A/A simulation (benchmarks/calibration.py, "small n": evaluated after every pair to
# n = 1,000, 20,000 experiments, tuned at n0, 100, 1,000 or 10,000) misses the true mean in up to 28% of
# experiments from n0 = 2, 5.8% from 10, 4.7% from 15 and 4.4% from 20: 20 keeps the 5% guarantee.
ALWAYS_VALID_MIN_SAMPLES = 20
# Skewed deltas: the normal approximation behind the sequence is trusted once n >= SKEW_SAMPLES_PER_G1SQ * g1^2
# (Cochran's rule is n > 25 g1^2). Chosen by simulation (benchmarks/calibration.py, "skewed deltas"; A/A
# lognormal deltas evaluated every 10 pairs from 100 to 5,000): at skewness 6.2 the false-verdict rate is 7.0%
# with no hold, 6.4% with c = 25, 4.8% with 50, 2.4% with 75; at skewness 33, 17.6%, 10.8%, 2.6% and 1.2%.
SKEW_SAMPLES_PER_G1SQ = 75


def skew_min_samples(stats: SufficientStats) -> int:
    """Pairs the observed skewness asks for before the always-valid rule may decide (0 when unknown)."""
    g1 = stats.skewness
    if not math.isfinite(g1):
        return 0
    return int(math.ceil(SKEW_SAMPLES_PER_G1SQ * g1 * g1))

# ---------------------------------------------------------------------------
# Fixed horizon
# ---------------------------------------------------------------------------


def fixed_ci(stats: SufficientStats, alpha: float = 0.05, *, null: float = 0.0) -> Interval:
    """Student t interval and two-sided one-sample t-test p-value of mean = ``null`` (spec ``computeCI95``)."""
    _check_alpha(alpha)
    if stats.n < 2:
        return _infinite_interval(stats, "fixed_horizon", alpha)
    df = stats.n - 1
    se = stats.se
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    mean = stats.mean
    if se == 0:
        p = 1.0 if mean == null else 0.0
    else:
        p = float(2 * sps.t.sf(abs(mean - null) / se, df))
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


def always_valid_p_value(stats: SufficientStats, rho: float, *, null: float = 0.0) -> float:
    """Always-valid p-value for mean = ``null``: 1 / (mixture likelihood ratio), capped at 1."""
    if stats.n < 2:
        return 1.0
    sd = stats.sd
    if sd == 0:
        return 1.0 if stats.mean == null else 0.0
    s = stats.n * (stats.mean - null) / sd  # standardized sum: sum(d_i - null) / sigma
    return float(min(1.0, math.exp(-normal_log_mixture(s, stats.n, rho))))


def confidence_sequence(stats: SufficientStats, alpha: float = 0.05, *, n_tune: float, null: float = 0.0) -> Interval:
    """Always-valid two-sided (1 - alpha) confidence sequence for the mean delta.

    ``n_tune`` is the sample size at which the sequence is tightest (the expected decision
    size). Coverage holds simultaneously at every n, so it can be re-evaluated after each pair (from
    ``ALWAYS_VALID_MIN_SAMPLES`` pairs on; the p-value tests mean = ``null``).
    """
    _check_alpha(alpha)
    if stats.n < 2:
        return _infinite_interval(stats, "always_valid", alpha)
    rho = mixture_rho(n_tune, alpha)
    sd = stats.sd
    hw = normal_mixture_halfwidth(stats.n, sd, alpha, rho)
    crit = normal_mixture_bound(stats.n, alpha, rho) / math.sqrt(stats.n)  # in SE units
    mean = stats.mean
    p = always_valid_p_value(stats, rho, null=null)
    return Interval(mean - hw, mean + hw, mean, stats.se, p, "always_valid", alpha, crit)


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


