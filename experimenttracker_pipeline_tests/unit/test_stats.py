"""Statistics engine checked against independent references.

References: scipy / statsmodels for the fixed-horizon t interval, power and sample size,
scipy.stats.chisquare for SRM, pandas quantiles for winsorization, published fixture values
of confseq (gostevehoward/confseq test/uniform_boundaries_unittest.cpp) and GrowthBook
gbstats (TestSequentialTTest) for the normal mixture, the standard Lan-DeMets boundaries for
group-sequential designs, and seeded simulations for the sequential guarantees.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower, TTestPower
from statsmodels.stats.weightstats import DescrStatsW

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.stats import SufficientStats

RNG_SEED = 20240611


# --------------------------------------------------------------------------- sufficient stats


def test_sufficient_stats_match_numpy():
    x = np.random.default_rng(1).normal(2.0, 7.0, size=333)
    s = SufficientStats.from_values(x)
    assert s.n == 333
    assert s.mean == pytest.approx(x.mean(), rel=1e-12)
    assert s.variance == pytest.approx(x.var(ddof=1), rel=1e-10)
    assert s.sd == pytest.approx(x.std(ddof=1), rel=1e-10)
    assert s.se == pytest.approx(sps.sem(x), rel=1e-10)


def test_merge_equals_concatenation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=40), rng.normal(3, 2, size=61)
    merged = SufficientStats.from_values(a).merge(SufficientStats.from_values(b))
    both = SufficientStats.from_values(np.concatenate([a, b]))
    assert merged.n == both.n
    assert merged.sum == pytest.approx(both.sum)
    assert merged.variance == pytest.approx(both.variance, rel=1e-10)


def test_from_moments_roundtrip():
    s = SufficientStats.from_moments(150, 3.2, 11.5)
    assert (s.n, s.mean, s.sd) == (150, pytest.approx(3.2), pytest.approx(11.5))


def test_variance_guards():
    assert math.isnan(SufficientStats(1, 5.0, 25.0).variance)
    assert math.isnan(SufficientStats.empty().se)
    # The one-pass formula can round below zero for constant data (here sum of squares one ulp
    # under n * mean^2); it must clamp at 0, not return a negative variance or a NaN sd.
    s = SufficientStats(3, 3.0, np.nextafter(3.0, 0.0))
    assert s.variance == 0.0 and s.sd == 0.0
    x = SufficientStats.from_values(np.full(1000, 1234.5))
    assert x.variance == pytest.approx(0.0, abs=1e-6) and x.variance >= 0.0


# --------------------------------------------------------------------------- fixed horizon


@pytest.mark.parametrize("seed,n,mu,sd", [(3, 150, 3.2, 12.0), (4, 12, -1.0, 4.0), (5, 2000, 0.0, 30.0)])
def test_fixed_ci_matches_scipy_and_statsmodels(seed, n, mu, sd):
    x = np.random.default_rng(seed).normal(mu, sd, size=n)
    ci = st.fixed_ci(SufficientStats.from_values(x))
    lo, hi = sps.t.interval(0.95, n - 1, loc=x.mean(), scale=sps.sem(x))
    assert (ci.low, ci.high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    dlo, dhi = DescrStatsW(x).tconfint_mean(alpha=0.05)
    assert (ci.low, ci.high) == (pytest.approx(dlo, rel=1e-9), pytest.approx(dhi, rel=1e-9))
    assert ci.p_value == pytest.approx(sps.ttest_1samp(x, 0.0).pvalue, rel=1e-8)
    assert ci.method == "fixed_horizon"


def test_fixed_ci_other_alpha():
    x = np.random.default_rng(6).normal(1, 3, size=40)
    ci = st.fixed_ci(SufficientStats.from_values(x), alpha=0.1)
    lo, hi = sps.t.interval(0.90, 39, loc=x.mean(), scale=sps.sem(x))
    assert ci.low == pytest.approx(lo) and ci.high == pytest.approx(hi)


def test_fixed_ci_degenerate_cases():
    one = st.fixed_ci(SufficientStats.from_values([3.0]))
    assert one.low == -math.inf and one.high == math.inf and one.p_value == 1.0
    const = st.fixed_ci(SufficientStats.from_values([2.0] * 10))
    assert const.low == const.high == pytest.approx(2.0)
    assert const.p_value == 0.0
    d = one.to_dict()
    assert d["low"] is None and d["high"] is None  # JSON-safe


# --------------------------------------------------------------------------- normal mixture


def test_confseq_fixture_two_sided():
    # confseq uniform_boundaries_unittest.cpp: v_opt = 100, alpha_opt = alpha = 0.05
    rho = st.mixture_rho(100, 0.05)
    assert rho == pytest.approx(12.60056, abs=5e-6)
    assert st.normal_mixture_bound(100, 0.05, rho) == pytest.approx(30.35209, abs=5e-6)
    assert st.normal_log_mixture(10, 100, rho) == pytest.approx(-0.6510052, abs=5e-8)


def test_confseq_fixture_one_sided():
    rho = st.mixture_rho(100, 2 * 0.05)  # confseq OneSidedNormalMixture::best_rho
    assert st.one_sided_normal_log_mixture(10, 100, rho) == pytest.approx(-0.06502391, abs=5e-9)
    assert st.one_sided_normal_mixture_bound(100, 0.05, rho) == pytest.approx(27.66071, abs=5e-6)


def test_one_sided_cs_bound_reproduces_confseq_fixture():
    # n = 100 deltas with sd 1: S_n / sigma lives in intrinsic time v = n, so the one-sided
    # bound is mean + u(100) / 100 with u(100) = 27.66071 (v_opt = 100, alpha = 0.05).
    s = SufficientStats.from_moments(100, 0.0, 1.0)
    assert st.one_sided_cs_bound(s, 0.05, n_tune=100, side="upper") == pytest.approx(0.2766071, abs=1e-7)
    assert st.one_sided_cs_bound(s, 0.05, n_tune=100, side="lower") == pytest.approx(-0.2766071, abs=1e-7)
    # and the two-sided sequence is mean +/- 30.35209 / 100
    assert st.confidence_sequence(s, 0.05, n_tune=100).high == pytest.approx(0.3035209, abs=1e-7)


def test_gbstats_sequential_fixture():
    # gbstats TestSequentialTTest (relative lift): estimate 0.50336, SE 0.33341, n = 3000 + 3461,
    # sequential_tuning_parameter 1000 -> CI (-0.55844, 1.56516).
    n = 6461
    sd = 0.33341 * math.sqrt(n)
    hw = st.normal_mixture_halfwidth(n, sd, 0.05, st.mixture_rho(1000, 0.05))
    assert 0.50336 - hw == pytest.approx(-0.55844, abs=2e-5)
    assert 0.50336 + hw == pytest.approx(1.56516, abs=2e-5)


def test_confidence_sequence_matches_peer_run():
    # Reference run in experiment_stats_notes.md section 4 (gbstats SequentialTwoSidedTTest and
    # confseq agree): n=1500, mean 1.2677, sd 12.0642, N* = 5000 -> [0.271023, 2.26437], p 0.00539236.
    s = SufficientStats.from_moments(1500, 1.2677, 12.0642)
    cs = st.confidence_sequence(s, 0.05, n_tune=5000)
    assert cs.low == pytest.approx(0.271023, abs=2e-4)
    assert cs.high == pytest.approx(2.26437, abs=2e-4)
    assert cs.p_value == pytest.approx(0.00539236, rel=0.02)
    assert cs.method == "always_valid"


def test_always_valid_p_value_consistent_with_interval():
    # The CS excludes 0 exactly when the always-valid p-value is below alpha.
    for mean in np.linspace(0.0, 2.0, 41):
        s = SufficientStats.from_moments(400, float(mean), 10.0)
        cs = st.confidence_sequence(s, 0.05, n_tune=400)
        assert (cs.p_value < 0.05) == cs.excludes_zero()


def test_confidence_sequence_wider_than_fixed_and_tightest_near_tuning():
    s = SufficientStats.from_moments(1000, 0.5, 10.0)
    fixed = st.fixed_ci(s)
    widths = {nt: st.confidence_sequence(s, n_tune=nt).width for nt in (100, 1000, 10000)}
    assert all(w > fixed.width for w in widths.values())
    assert widths[1000] < widths[100] and widths[1000] < widths[10000]


def test_one_sided_bound_sides_and_relation_to_two_sided():
    s = SufficientStats.from_moments(500, -1.0, 10.0)
    up = st.one_sided_cs_bound(s, 0.025, n_tune=500, side="upper")
    lo = st.one_sided_cs_bound(s, 0.025, n_tune=500, side="lower")
    assert up - s.mean == pytest.approx(s.mean - lo)
    two = st.confidence_sequence(s, 0.05, n_tune=500)
    # With the same tuning, the one-sided 0.025 mixture is at least as wide as the two-sided 0.05
    # one on that side (the one-sided martingale is <= 2x the two-sided one), and narrower than
    # the two-sided bound at 0.025.
    assert up >= two.high
    assert up < st.confidence_sequence(s, 0.025, n_tune=500).high


def test_always_valid_coverage_under_continuous_monitoring():
    # 400 A/A experiments, looks every 10 pairs from 100 to 2000: the sequence may exclude the
    # true mean at some look in at most ~alpha of them; the fixed t interval misses far more often.
    rng = np.random.default_rng(RNG_SEED)
    reps, n_max = 400, 2000
    x = rng.normal(0.0, 10.0, size=(reps, n_max))
    c1, c2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    ns = np.arange(100, n_max + 1, 10)
    s1, s2 = c1[:, ns - 1], c2[:, ns - 1]
    mean = s1 / ns
    sd = np.sqrt((s2 - s1 * s1 / ns) / (ns - 1))
    rho = st.mixture_rho(100, 0.05)
    hw_cs = sd / ns * np.sqrt((ns + rho) * np.log((ns + rho) / (rho * 0.05**2)))
    cross_cs = (np.abs(mean) > hw_cs).any(axis=1).mean()
    hw_t = sps.t.ppf(0.975, ns - 1) * sd / np.sqrt(ns)
    cross_t = (np.abs(mean) > hw_t).any(axis=1).mean()
    assert cross_cs <= 0.05
    assert cross_t > 0.15
    # And the library function agrees with the vectorised formula on one row.
    row = SufficientStats(int(ns[-1]), float(s1[0, -1]), float(s2[0, -1]))
    assert st.confidence_sequence(row, n_tune=100).high - row.mean == pytest.approx(hw_cs[0, -1], rel=1e-9)


# --------------------------------------------------------------------------- group sequential


def test_obf_four_equal_looks_lan_demets():
    b = st.group_sequential_boundaries([0.25, 0.5, 0.75, 1.0], 0.05)
    assert b == pytest.approx([4.3326, 2.9631, 2.3590, 2.0141], abs=1e-4)


def test_obf_spending_values():
    # Cumulative two-sided alpha for 4 equal looks (reference: 1.5e-5, 0.00305, 0.0193, 0.05).
    spent = [st.obf_spending(t, 0.05) for t in (0.25, 0.5, 0.75, 1.0)]
    assert spent[0] == pytest.approx(1.5e-5, rel=0.05)
    assert spent[1] == pytest.approx(0.00305, rel=0.01)
    assert spent[2] == pytest.approx(0.0193, rel=0.01)
    assert spent[3] == pytest.approx(0.05, rel=1e-12)
    assert st.obf_spending(0.0) == 0.0


def test_other_spending_functions_match_published_bounds():
    # Spotify confidence sequential_bounds (power family rho = 2) and Lan-DeMets Pocock.
    assert st.group_sequential_boundaries([0.25, 0.5, 0.75, 1.0], 0.05, "power2") == pytest.approx(
        [2.9552, 2.5593, 2.3008, 2.0919], abs=1.5e-4
    )
    # Reference Pocock bounds from experiment_stats_notes.md F6 (scipy MVN CDF, ~1e-4 precision;
    # a high-precision MVN CDF gives exactly 0.05 at our last bound 2.35003, 0.050004 at 2.3499).
    assert st.group_sequential_boundaries([0.25, 0.5, 0.75, 1.0], 0.05, "pocock") == pytest.approx(
        [2.3683, 2.3675, 2.3582, 2.3499], abs=2e-4
    )


def test_spotify_run_over_fixture():
    # spotify/confidence test_seq_bounds_run_over: unequal looks, alpha 0.01 -> adjusted alphas.
    fr = [250 / 810, 450 / 810, 630 / 810, 1.0]
    b = st.group_sequential_boundaries(fr, 0.01, "power2")
    adj = [2 * sps.norm.sf(z) for z in b]
    assert adj == pytest.approx([0.00095, 0.00241, 0.00410, 0.00636], abs=1e-4)


def test_group_sequential_bounds_by_multivariate_normal():
    # Independent check of the recursion: with the computed bounds, the probability of crossing
    # by look k under H0 (multivariate normal CDF, corr sqrt(t_i/t_j)) equals the alpha spent.
    fr = np.array([0.2, 0.45, 0.7, 1.0])
    b = st.group_sequential_boundaries(fr, 0.05)
    for k in range(2, len(fr) + 1):
        t = fr[:k]
        cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
        # P(|Z_i| < b_i for all i <= k) by inclusion over the box corners.
        lo, hi = -np.array(b[:k]), np.array(b[:k])
        p_in = sps.multivariate_normal(mean=np.zeros(k), cov=cov).cdf(hi, lower_limit=lo, rng=np.random.default_rng(0))
        assert 1 - p_in == pytest.approx(st.obf_spending(fr[k - 1], 0.05), abs=2e-4)


def test_group_sequential_type_one_error_by_simulation():
    rng = np.random.default_rng(RNG_SEED + 1)
    fr = np.array([0.25, 0.5, 0.75, 1.0])
    b = np.array(st.group_sequential_boundaries(fr, 0.05))
    incr = rng.normal(size=(200_000, 4)) * np.sqrt(np.diff(np.concatenate([[0.0], fr])))
    z = np.cumsum(incr, axis=1) / np.sqrt(fr)
    rate = (np.abs(z) >= b).any(axis=1).mean()
    assert rate == pytest.approx(0.05, abs=0.0025)


def test_group_sequential_ci_uses_current_look():
    s = SufficientStats.from_moments(500, 1.0, 10.0)
    ci = st.group_sequential_ci(s, [0.25, 0.5], 0.05)
    assert ci.method == "group_sequential"
    assert ci.information_fraction == 0.5 and ci.look == 2
    assert ci.critical_value == pytest.approx(2.9631, abs=1e-4)
    assert ci.high - ci.estimate == pytest.approx(2.9631 * s.se, rel=1e-4)


def test_group_sequential_repeated_p_value():
    fr = [0.25, 0.5, 0.75, 1.0]
    b = st.group_sequential_boundaries(fr, 0.05)
    # At the boundary the repeated p-value equals alpha; above it is smaller, below larger.
    assert st.group_sequential_p_value(b[-1], fr) == pytest.approx(0.05, rel=2e-3)
    assert st.group_sequential_p_value(b[-1] + 0.3, fr) < 0.05 < st.group_sequential_p_value(b[-1] - 0.3, fr)
    assert st.group_sequential_p_value(0.0, fr) == 1.0


def test_group_sequential_rejects_bad_fractions():
    with pytest.raises(ValueError):
        st.group_sequential_boundaries([0.5, 0.4])
    with pytest.raises(ValueError):
        st.group_sequential_boundaries([0.5, 1.2])


# --------------------------------------------------------------------------- power


@pytest.mark.parametrize("mde,sd,alpha,power", [(3.0, 10.0, 0.05, 0.8), (1.0, 12.0, 0.05, 0.9), (5.0, 4.0, 0.01, 0.8)])
def test_required_sample_size_matches_statsmodels(mde, sd, alpha, power):
    n_ref = TTestPower().solve_power(effect_size=mde / sd, alpha=alpha, power=power, alternative="two-sided")
    n = st.required_sample_size(mde, sd, alpha, power)
    assert n == math.ceil(n_ref)
    assert st.power_at(n, mde, sd, alpha) >= power > st.power_at(n - 1, mde, sd, alpha)


def test_required_sample_size_z_matches_normal_power():
    # NormalIndPower with ratio=0 is statsmodels' one-sample normal test.
    n_ref = NormalIndPower().solve_power(effect_size=0.3, alpha=0.05, power=0.8, ratio=0)
    assert st.required_sample_size(3.0, 10.0, method="z") == math.ceil(n_ref)


@pytest.mark.parametrize("n,effect,sd", [(50, 3.0, 10.0), (200, 1.0, 10.0), (1000, -0.5, 10.0), (30, 0.0, 5.0)])
def test_power_at_matches_statsmodels(n, effect, sd):
    ref = TTestPower().power(effect_size=effect / sd, nobs=n, alpha=0.05, alternative="two-sided")
    assert st.power_at(n, effect, sd) == pytest.approx(ref, rel=1e-8)


def test_required_sample_size_rejects_undetectable_effect():
    with pytest.raises(ValueError):
        st.required_sample_size(1e-9, 10.0)
    with pytest.raises(ValueError):
        st.required_sample_size(0.0, 10.0)


def test_power_at_is_finite_deep_in_tail():
    assert st.power_at(100, 5.0, 2.0) == pytest.approx(1.0)


def test_always_valid_needs_more_samples_than_fixed():
    n_fixed = st.required_sample_size(3.0, 10.0)
    n_av = st.required_sample_size(3.0, 10.0, method="always_valid", n_tune=n_fixed)
    assert n_av > n_fixed
    assert st.always_valid_power_at(n_av, 3.0, 10.0, n_tune=n_fixed) >= 0.8


def test_always_valid_power_by_simulation():
    # Probability that the CS excludes 0 at n = 300 for a +3 bps effect (sd 10, tuned at 100).
    rng = np.random.default_rng(RNG_SEED + 2)
    n, reps = 300, 4000
    x = rng.normal(3.0, 10.0, size=(reps, n))
    mean, sd = x.mean(axis=1), x.std(axis=1, ddof=1)
    rho = st.mixture_rho(100)
    hw = sd / n * st.normal_mixture_bound(n, 0.05, rho)
    simulated = (np.abs(mean) > hw).mean()
    assert st.always_valid_power_at(n, 3.0, 10.0, n_tune=100) == pytest.approx(simulated, abs=0.03)


def test_expected_days_to_decision():
    assert st.expected_days_to_decision(1000, 400, 50.0) == pytest.approx(12.0)
    assert st.expected_days_to_decision(1000, 1200, 50.0) == 0.0
    assert st.expected_days_to_decision(1000, 400, 0.0) is None
    assert st.expected_days_to_decision(None, 400, 50.0) is None


def test_conditional_power_by_simulation():
    rng = np.random.default_rng(RNG_SEED + 3)
    s = SufficientStats.from_values(rng.normal(1.0, 10.0, size=200))
    planned, theta = 800, 1.5
    cp = st.conditional_power(s, planned, 0.05, assumed_effect=theta)
    # Simulate the remaining 600 deltas as N(theta, sd_hat^2) and apply the final z-test with
    # the same plug-in sd.
    rest = rng.normal(theta * 600, s.sd * math.sqrt(600), size=200_000)
    z_final = (s.sum + rest) / (s.sd * math.sqrt(planned))
    sim = (np.abs(z_final) >= sps.norm.isf(0.025)).mean()
    assert cp == pytest.approx(sim, abs=0.005)


def test_conditional_power_extremes():
    # No effect so far, 100 of 1000 pairs left: even a +1 bps effect cannot reach significance.
    hopeless = SufficientStats.from_moments(900, 0.0, 10.0)
    assert st.conditional_power(hopeless, 1000, assumed_effect=1.0) < 1e-4
    # A strong negative trend will conclude (control wins): not futile under its own trend.
    assert st.conditional_power(SufficientStats.from_moments(900, -2.0, 10.0), 1000) > 0.99
    done = SufficientStats.from_moments(1000, 2.0, 10.0)
    assert st.conditional_power(done, 1000) == 1.0
    assert st.conditional_power(SufficientStats.from_moments(1000, 0.1, 10.0), 1000) == 0.0


# --------------------------------------------------------------------------- SRM


def test_srm_fixture_and_chisquare():
    r = st.srm_test(1000, 1200, 0.5)
    assert r.p_value == pytest.approx(2.007865612426e-05, rel=1e-9)
    assert r.mismatch and r.observed_share == pytest.approx(1000 / 2200)


@given(
    nv=hs.integers(min_value=0, max_value=100_000),
    nc=hs.integers(min_value=0, max_value=100_000),
    share=hs.floats(min_value=0.01, max_value=0.99),
)
@settings(max_examples=60, deadline=None)
def test_srm_matches_scipy_chisquare(nv, nc, share):
    r = st.srm_test(nv, nc, share)
    if nv + nc == 0:
        assert r.p_value == 1.0 and not r.mismatch
        return
    total = nv + nc
    ref = sps.chisquare([nv, nc], f_exp=[total * share, total * (1 - share)])
    assert r.chi2 == pytest.approx(ref.statistic, rel=1e-9, abs=1e-12)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-300)
    assert r.mismatch == (ref.pvalue < 0.001)


def test_srm_no_mismatch_for_matching_split():
    assert not st.srm_test(1000, 9000, 0.10).mismatch
    assert st.srm_test(1500, 8500, 0.10).mismatch


# --------------------------------------------------------------------------- winsorization


def test_winsorize_matches_pandas_quantile_clip():
    x = np.random.default_rng(7).standard_t(2, size=999) * 10
    w = st.winsorize_values(x, 1.0)
    ser = pd.Series(x)
    lo, hi = ser.quantile(0.01), ser.quantile(0.99)
    ref = ser.clip(lower=lo, upper=hi)
    assert (w.low_clip, w.high_clip) == (pytest.approx(lo), pytest.approx(hi))
    assert w.stats.mean == pytest.approx(ref.mean(), rel=1e-12)
    assert w.stats.variance == pytest.approx(ref.var(ddof=1), rel=1e-10)
    assert w.n_clipped == int(((ser < lo) | (ser > hi)).sum()) > 0


def test_winsorize_zero_pct_is_identity():
    x = np.random.default_rng(8).normal(size=50)
    w = st.winsorize_values(x, 0.0)
    assert w.stats == SufficientStats.from_values(x) and w.n_clipped == 0
    with pytest.raises(ValueError):
        st.winsorize_values(x, 50.0)
