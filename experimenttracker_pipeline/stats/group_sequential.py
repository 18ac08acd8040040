"""Group-sequential designs: Lan-DeMets alpha spending, boundaries, p-values and CIs."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

from .sufficient import Interval, SufficientStats, _check_alpha

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


def _gs_recursion(
    fractions: tuple[float, ...], alpha: float, spend: SpendingFunction, grid: int
) -> tuple[list[float], list[Callable[[float], float]]]:
    """Two-sided symmetric z-bounds by numerical integration (Armitage-McPherson-Rowe).

    Works on the Brownian scale S_k = Z_k sqrt(t_k): f_k is the sub-density of S_k on the
    continuation region; each bound is solved so that the exit probability at look k equals
    the alpha newly spent at t_k. Also returns, per look, ``exit_prob(c)``: the probability under H0
    of reaching look k without crossing and then |Z_k| >= c (for stage-wise p-values).
    """
    cum = [spend(t, alpha) for t in fractions]
    bounds: list[float] = []
    exits: list[Callable[[float], float]] = [lambda cc: float(2 * special.ndtr(-cc))]
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

        def exit_prob(cc: float, x=x, wf=wf, sigma=sigma, sqrt_t=sqrt_t) -> float:
            b = cc * sqrt_t
            return float(np.dot(wf, special.ndtr((x - b) / sigma) + special.ndtr((-b - x) / sigma)))

        exits.append(exit_prob)
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
    return bounds, exits


def _gs_bounds(fractions: tuple[float, ...], alpha: float, spend: SpendingFunction, grid: int) -> list[float]:
    return _gs_recursion(fractions, alpha, spend, grid)[0]


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
# A declared design: planned looks at fixed sample counts
# ---------------------------------------------------------------------------


def planned_look_samples(planned_max_samples: int, planned_looks: int) -> list[int]:
    """Sample counts of the K equally spaced planned looks: ceil(k N / K), the last one at N."""
    if planned_looks < 1 or planned_max_samples < planned_looks:
        raise ValueError("need 1 <= planned_looks <= planned_max_samples")
    return [-(-k * planned_max_samples // planned_looks) for k in range(1, planned_looks + 1)]


class GroupSequentialDesign:
    """A group-sequential design with K planned looks at fixed sample counts (the last at the plan).

    Each look is analysed on the first n_k pairs (the samples are immutable, so a look's statistics never
    change), which makes the information fractions n_k / N exact and the design fixed before any data:
    its bounds and per-look exit probabilities are computed once (O(K)) and cached, so evaluating a look
    costs O(1) whatever the number of earlier looks or sensor evaluations. Data past the plan are never
    tested again.
    """

    def __init__(self, look_samples: Sequence[int], alpha: float = 0.05, spending: str = "obf", grid: int = 501):
        _check_alpha(alpha)
        looks = tuple(int(n) for n in look_samples)
        if not looks or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1:
            raise ValueError("look sample counts must be positive and strictly increasing")
        self.look_samples = looks
        self.alpha = alpha
        self.spending = spending
        self.fractions = tuple(n / looks[-1] for n in looks)
        bounds, self._exits = _gs_recursion(self.fractions, alpha, _spending_fn(spending), grid)
        self.bounds = tuple(bounds)
        spend = _spending_fn(spending)
        self.cumulative_alpha = tuple(spend(t, alpha) for t in self.fractions)

    @property
    def planned_looks(self) -> int:
        return len(self.look_samples)

    def looks_reached(self, n: int) -> int:
        """Number of planned looks whose sample count has been reached at n pairs."""
        return sum(1 for m in self.look_samples if m <= n)

    def t_bound(self, look: int, df: int) -> float:
        """The look's z-bound carried to Student t with ``df`` degrees of freedom (same tail probability):
        the small-sample correction for the estimated sd."""
        z = self.bounds[look - 1]
        if df < 1:
            return math.inf
        return float(sps.t.isf(special.ndtr(-z), df)) if z < 40 else math.inf

    def stagewise_p_value(self, look: int, z: float) -> float:
        """Stage-wise ordering p-value (Jennison & Turnbull 8.4) for stopping at ``look`` with |Z| = |z|:
        alpha spent at earlier looks plus the chance of reaching this look and exceeding |z|. It is <= alpha
        exactly when the design rejects at this look (and did not before)."""
        if not 1 <= look <= len(self.bounds):
            raise ValueError(f"look must be in 1..{len(self.bounds)}")
        before = self.cumulative_alpha[look - 2] if look >= 2 else 0.0
        return float(min(1.0, before + self._exits[look - 1](min(abs(z), 40.0))))


@lru_cache(maxsize=256)
def group_sequential_design(
    planned_max_samples: int, planned_looks: int, alpha: float = 0.05, spending: str = "obf"
) -> GroupSequentialDesign:
    """The cached design for K equally spaced looks up to ``planned_max_samples`` (see ``GroupSequentialDesign``)."""
    return GroupSequentialDesign(planned_look_samples(planned_max_samples, planned_looks), alpha, spending)
