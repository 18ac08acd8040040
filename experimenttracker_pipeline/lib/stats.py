"""Statistics for matched-pair experiments, computed from sufficient statistics only.

Every function here takes ``SufficientStats`` (n, sum, sum of squares of the paired
deltas ``d_i = variant_edge_bps - control_edge_bps``), which the database computes with one
aggregate query, so an evaluation never loads the sample rows.

Methods (all for H0: E[d] = 0, a one-sample problem on the paired deltas):

* ``fixed_ci``: Student t interval, the spec's ``computeCI95``. Valid at ONE pre-planned look.
* ``confidence_sequence``: two-sided normal-mixture confidence sequence (Howard et al. 2021,
  eq. 14; the boundary used by GrowthBook, Eppo, confseq and Optimizely's mSPRT). Valid
  uniformly over all sample sizes, so it can be re-checked after every new pair. The plug-in
  standard deviation makes it asymptotic (Waudby-Smith et al. 2023), which is why a minimum
  sample count gates decisions.
* ``group_sequential_ci``: Lan-DeMets alpha spending (O'Brien-Fleming by default) for a
  declared number of batched looks, boundaries by the Armitage-McPherson-Rowe recursion.
* Power, sample size, conditional power, sample-ratio mismatch and winsorization helpers.

No dagster or database imports: this module is pure numpy/scipy so it is cheap to test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable, Literal, Sequence

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

__all__ = [
    "SufficientStats",
    "Interval",
    "SRMResult",
    "WinsorizedStats",
    "fixed_ci",
    "mixture_rho",
    "normal_mixture_halfwidth",
    "normal_mixture_bound",
    "normal_log_mixture",
    "one_sided_normal_mixture_bound",
    "one_sided_normal_log_mixture",
    "always_valid_p_value",
    "confidence_sequence",
    "one_sided_cs_bound",
    "obf_spending",
    "pocock_spending",
    "power_spending",
    "group_sequential_boundaries",
    "group_sequential_p_value",
    "group_sequential_ci",
    "required_sample_size",
    "power_at",
    "always_valid_power_at",
    "expected_days_to_decision",
    "conditional_power",
    "srm_test",
    "winsorize_values",
]


# ---------------------------------------------------------------------------
# Sufficient statistics and result containers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SufficientStats:
    """n, sum and sum of squares of the paired deltas (bps)."""

    n: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray) -> "SufficientStats":
        arr = np.asarray(values, dtype=float).ravel()
        if not np.all(np.isfinite(arr)):
            raise ValueError("values must be finite")
        return cls(int(arr.size), float(arr.sum()), float(np.dot(arr, arr)))

    @classmethod
    def from_moments(cls, n: int, mean: float, sd: float) -> "SufficientStats":
        """Statistics of n deltas with the given mean and sample sd (ddof=1)."""
        if n < 0 or sd < 0:
            raise ValueError("n and sd must be >= 0")
        return cls(int(n), n * mean, (n - 1) * sd * sd + n * mean * mean if n > 0 else 0.0)

    @classmethod
    def empty(cls) -> "SufficientStats":
        return cls(0, 0.0, 0.0)

    def merge(self, other: "SufficientStats") -> "SufficientStats":
        """Statistics of the union of two disjoint samples (sums are additive)."""
        return SufficientStats(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); NaN when n < 2."""
        if self.n < 2:
            return math.nan
        # Textbook one-pass formula; the subtraction can go slightly negative by rounding when
        # all deltas are (nearly) equal, so clamp at 0.
        var = (self.total_sq - self.total * self.total / self.n) / (self.n - 1)
        return max(var, 0.0)

    @property
    def sd(self) -> float:
        v = self.variance
        return math.sqrt(v) if math.isfinite(v) else math.nan

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan


@dataclass(frozen=True)
class Interval:
    """A two-sided interval for the mean paired delta, with its test of mean = 0.

    ``critical_value`` is the multiplier of the standard error (t quantile, mixture boundary
    in SE units, or group-sequential z bound). ``information_fraction`` and ``look`` are set
    for group-sequential intervals only.
    """

    low: float
    high: float
    estimate: float
    se: float
    p_value: float
    method: str
    alpha: float
    critical_value: float = math.nan
    information_fraction: float | None = None
    look: int | None = None

    @property
    def width(self) -> float:
        return self.high - self.low

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {k: _json_float(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SRMResult:
    chi2: float
    p_value: float
    mismatch: bool
    observed_share: float
    expected_share: float
    n_variant: int
    n_control: int
    alpha: float

    def to_dict(self) -> dict:
        return {k: _json_float(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class WinsorizedStats:
    stats: SufficientStats
    pct: float
    low_clip: float
    high_clip: float
    n_clipped: int


def _json_float(x: float | None, sig: int = 10) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{sig}g}")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _infinite_interval(stats: SufficientStats, method: str, alpha: float) -> Interval:
    return Interval(-math.inf, math.inf, stats.mean, math.nan, 1.0, method, alpha)


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


# ---------------------------------------------------------------------------
# Group sequential (Lan-DeMets alpha spending)
# ---------------------------------------------------------------------------

SpendingFunction = Callable[[float, float], float]


def obf_spending(t: float, alpha: float = 0.05) -> float:
    """Cumulative two-sided alpha spent by information fraction t (Lan-DeMets O'Brien-Fleming).

    alpha/2 is spent per side with a_side(t) = 2 - 2 Phi(z_{1 - alpha/4} / sqrt(t)), the
    convention of R ``ldbounds``/``gsDesign`` for symmetric two-sided designs.
    """
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    z = -special.ndtri(alpha / 4)
    return float(2 * (2 * special.ndtr(-z / math.sqrt(t))))


def pocock_spending(t: float, alpha: float = 0.05) -> float:
    """Lan-DeMets Pocock-type spending alpha * ln(1 + (e - 1) t)."""
    if t <= 0:
        return 0.0
    return float(alpha * math.log(1 + (math.e - 1) * min(t, 1.0)))


def power_spending(rho: float = 2.0) -> SpendingFunction:
    """Power-family spending alpha * t**rho (Spotify confidence uses rho = 2)."""

    def spend(t: float, alpha: float = 0.05) -> float:
        return 0.0 if t <= 0 else float(alpha * min(t, 1.0) ** rho)

    return spend


_SPENDING: dict[str, SpendingFunction] = {"obf": obf_spending, "pocock": pocock_spending, "power2": power_spending(2.0)}


def _spending_fn(spending: str | SpendingFunction) -> SpendingFunction:
    if callable(spending):
        return spending
    try:
        return _SPENDING[spending]
    except KeyError:
        raise ValueError(f"unknown spending function {spending!r}; use one of {sorted(_SPENDING)}") from None


def _simpson_weights(m: int, h: float) -> np.ndarray:
    w = np.ones(m)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return w * h / 3.0


def _gs_bounds(fractions: tuple[float, ...], alpha: float, spend: SpendingFunction, grid: int) -> list[float]:
    """Two-sided symmetric z-bounds by numerical integration (Armitage-McPherson-Rowe).

    Works on the Brownian scale S_k = Z_k sqrt(t_k): f_k is the sub-density of S_k on the
    continuation region; each bound is solved so that the exit probability at look k equals
    the alpha newly spent at t_k.
    """
    cum = [spend(t, alpha) for t in fractions]
    bounds: list[float] = []
    # Look 1 is exact.
    a1 = max(cum[0], 0.0)
    c = float(-special.ndtri(a1 / 2)) if a1 > 0 else math.inf
    c = min(c, 40.0)
    bounds.append(c)
    t_prev = fractions[0]
    b_prev = c * math.sqrt(t_prev)
    m = grid if grid % 2 == 1 else grid + 1
    x = np.linspace(-b_prev, b_prev, m)
    w = _simpson_weights(m, x[1] - x[0])
    f = np.exp(-0.5 * x * x / t_prev) / math.sqrt(2 * math.pi * t_prev)
    for k in range(1, len(fractions)):
        t = fractions[k]
        sigma = math.sqrt(t - t_prev)
        target = max(cum[k] - cum[k - 1], 0.0)
        wf = w * f
        sqrt_t = math.sqrt(t)

        def exit_prob(cc: float) -> float:
            b = cc * sqrt_t
            return float(np.dot(wf, special.ndtr((x - b) / sigma) + special.ndtr((-b - x) / sigma)))

        if target <= 0 or exit_prob(40.0) >= target:
            c = 40.0
        else:
            c = float(optimize.brentq(lambda cc: exit_prob(cc) - target, 0.0, 40.0, xtol=1e-10))
        bounds.append(c)
        if k == len(fractions) - 1:
            break
        b = c * sqrt_t
        # Grid step small relative to the transition kernel's width keeps Simpson accurate.
        m_next = int(min(max(grid, math.ceil(2 * b / (sigma / 8))), 2001))
        m_next += 1 - m_next % 2
        y = np.linspace(-b, b, m_next)
        kern = np.exp(-0.5 * ((y[:, None] - x[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        f = kern @ wf
        x, f = y, f
        w = _simpson_weights(m_next, y[1] - y[0])
        t_prev = t
    return bounds


def _validate_fractions(info_fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(t) for t in info_fractions)
    if not fr:
        raise ValueError("info_fractions must not be empty")
    if any(not (0 < t <= 1) for t in fr):
        raise ValueError("information fractions must lie in (0, 1]")
    if any(b <= a for a, b in zip(fr, fr[1:])):
        raise ValueError("information fractions must be strictly increasing")
    return fr


@lru_cache(maxsize=256)
def _gs_bounds_cached(fr: tuple[float, ...], alpha: float, spending: str, grid: int) -> tuple[float, ...]:
    return tuple(_gs_bounds(fr, alpha, _spending_fn(spending), grid))


def group_sequential_boundaries(
    info_fractions: Sequence[float],
    alpha: float = 0.05,
    spending: str | SpendingFunction = "obf",
    *,
    grid: int = 501,
) -> list[float]:
    """Two-sided z-bounds per look for the given information fractions.

    Reject H0 at look k when |Z_k| >= bound_k. The default Lan-DeMets O'Brien-Fleming
    spending gives 4.3326, 2.9631, 2.3590, 2.0141 for four equal looks at alpha = 0.05.
    Bounds depend only on the fractions, so they are cached.
    """
    _check_alpha(alpha)
    fr = _validate_fractions(info_fractions)
    if isinstance(spending, str):
        return list(_gs_bounds_cached(tuple(round(t, 12) for t in fr), alpha, spending, grid))
    return _gs_bounds(fr, alpha, spending, grid)


def group_sequential_p_value(
    z: float,
    info_fractions: Sequence[float],
    spending: str | SpendingFunction = "obf",
    *,
    grid: int = 201,
) -> float:
    """Repeated p-value at the last look: the smallest alpha whose bound |z| reaches.

    Valid like the repeated confidence interval (Jennison & Turnbull ch. 9): p <= alpha
    exactly when the level-alpha design would reject at this look. A coarser grid is used
    because it is solved by root finding; it agrees with the bounds to ~1e-4.
    """
    fr = _validate_fractions(info_fractions)
    spend = _spending_fn(spending)
    az = abs(z)

    def last_bound(log_a: float) -> float:
        return _gs_bounds(fr, math.exp(log_a), spend, grid)[-1]

    lo, hi = math.log(1e-12), math.log(0.999)
    if last_bound(hi) > az:
        return 1.0
    if last_bound(lo) <= az:
        return 1e-12
    return float(math.exp(optimize.brentq(lambda la: last_bound(la) - az, lo, hi, xtol=1e-6)))


def group_sequential_ci(
    stats: SufficientStats,
    info_fractions: Sequence[float],
    alpha: float = 0.05,
    spending: str | SpendingFunction = "obf",
) -> Interval:
    """Repeated confidence interval at the last look of ``info_fractions``.

    mean +/- bound_K * SE with the z-bound of the current (last) look; the interval records
    the information fraction, the look number and the bound (``critical_value``). The
    p-value is the repeated p-value (``group_sequential_p_value``).
    """
    _check_alpha(alpha)
    fr = _validate_fractions(info_fractions)
    bounds = group_sequential_boundaries(fr, alpha, spending)
    c = bounds[-1]
    if stats.n < 2:
        return Interval(-math.inf, math.inf, stats.mean, math.nan, 1.0, "group_sequential", alpha, c, fr[-1], len(fr))
    se = stats.se
    mean = stats.mean
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = group_sequential_p_value(mean / se, fr, spending)
    return Interval(mean - c * se, mean + c * se, mean, se, p, "group_sequential", alpha, c, fr[-1], len(fr))


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
    s_now = stats.total / sd  # standardized partial sum
    rem = big_n - n
    if rem == 0:
        z = s_now / math.sqrt(n)
        return 1.0 if abs(z) >= c else 0.0
    mu = s_now + rem * theta / sd
    edge = c * math.sqrt(big_n)
    sr = math.sqrt(rem)
    return float(special.ndtr((mu - edge) / sr) + special.ndtr((-edge - mu) / sr))


# ---------------------------------------------------------------------------
# Sample ratio mismatch
# ---------------------------------------------------------------------------


def srm_test(n_variant: int, n_control: int, expected_variant_share: float, alpha: float = 0.001) -> SRMResult:
    """Pearson chi-square (1 df) of the observed variant share vs the configured one.

    A strict alpha (0.001, as Eppo) because the check is repeated at every evaluation.
    """
    _check_alpha(alpha)
    if not 0 < expected_variant_share < 1:
        raise ValueError("expected_variant_share must be in (0, 1)")
    if n_variant < 0 or n_control < 0:
        raise ValueError("counts must be >= 0")
    total = n_variant + n_control
    if total == 0:
        return SRMResult(0.0, 1.0, False, math.nan, expected_variant_share, n_variant, n_control, alpha)
    ev = total * expected_variant_share
    ec = total - ev
    chi2 = (n_variant - ev) ** 2 / ev + (n_control - ec) ** 2 / ec
    p = float(special.chdtrc(1, chi2))
    return SRMResult(float(chi2), p, p < alpha, n_variant / total, expected_variant_share, n_variant, n_control, alpha)


# ---------------------------------------------------------------------------
# Winsorization (reference implementation of the SQL version)
# ---------------------------------------------------------------------------


def winsorize_values(values: Sequence[float] | np.ndarray, pct: float) -> WinsorizedStats:
    """Clip deltas at the ``pct`` and ``100 - pct`` percentiles, return their statistics.

    Percentiles use linear interpolation (numpy's default), which is PostgreSQL's
    ``percentile_cont``, so the SQL aggregate gives the same numbers.
    """
    if not 0 <= pct < 50:
        raise ValueError("pct must be in [0, 50)")
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return WinsorizedStats(SufficientStats.empty(), pct, math.nan, math.nan, 0)
    lo, hi = np.percentile(arr, [pct, 100 - pct])
    clipped = np.clip(arr, lo, hi)
    n_clipped = int(np.count_nonzero((arr < lo) | (arr > hi)))
    return WinsorizedStats(SufficientStats.from_values(clipped), pct, float(lo), float(hi), n_clipped)
