"""Statistics for matched-pair experiments, computed from sufficient statistics only.

Every function takes ``SufficientStats`` (n, sum, sum of squares of the paired deltas
``d_i = variant_edge_bps - control_edge_bps``), which the database computes with one aggregate query, so an
evaluation never loads the sample rows. H0 is E[d] = 0, a one-sample problem on the paired deltas:

* ``intervals``: the fixed-horizon Student t interval (valid at ONE pre-planned look) and the two-sided
  normal-mixture confidence sequence (Howard et al. 2021, eq. 14; GrowthBook, Eppo, confseq), valid uniformly over
  all sample sizes.
* ``group_sequential``: Lan-DeMets alpha spending (O'Brien-Fleming by default) for declared batched looks.
* ``power``, ``srm``, ``winsorize``: power and sample size, sample-ratio mismatch, winsorization.
* ``multiple``: Holm / Bonferroni across primary metrics and treatments.
* ``bayes``: Gaussian-posterior read-out (chance to beat control, expected loss); reported, never the verdict.
* ``ratio``: ratio metrics (sum over sum) by the delta method.
* ``regression``: regression adjustment of the deltas on pre-declared covariates (CUPED-style).

Sums are taken about a reference value (``SufficientStats.shift``) so the variance stays exact far from zero;
impossible or non-finite statistics raise ``InvalidStatistics``.

Pure numpy/scipy: no Dagster, no database.
"""

from .bayes import BayesianReadout, bayesian_readout, gaussian_readout
from .group_sequential import (
    GroupSequentialDesign,
    group_sequential_design,
    planned_look_samples,
    group_sequential_boundaries,
    group_sequential_ci,
    group_sequential_p_value,
    obf_spending,
    pocock_spending,
    power_spending,
)
from .intervals import (
    ALWAYS_VALID_MIN_SAMPLES,
    SKEW_SAMPLES_PER_G1SQ,
    skew_min_samples,
    always_valid_p_value,
    confidence_sequence,
    fixed_ci,
    mixture_rho,
    normal_log_mixture,
    normal_mixture_bound,
    normal_mixture_halfwidth,
    one_sided_cs_bound,
    one_sided_normal_log_mixture,
    one_sided_normal_mixture_bound,
)
from .power import (
    always_valid_power_at,
    conditional_power,
    expected_days_to_decision,
    power_at,
    required_sample_size,
)
from .multiple import bonferroni_adjust, holm_adjust
from .ratio import RatioStats
from .regression import AdjustedEstimate, RegressionStats, regression_adjusted
from .srm import srm_test
from .sufficient import InvalidStatistics, Interval, SRMResult, SufficientStats, WinsorizedStats
from .winsorize import winsorize_values

__all__ = [
    "SufficientStats", "Interval", "SRMResult", "WinsorizedStats", "fixed_ci", "mixture_rho", "normal_mixture_halfwidth",
    "normal_mixture_bound", "normal_log_mixture", "one_sided_normal_mixture_bound", "one_sided_normal_log_mixture",
    "always_valid_p_value", "confidence_sequence", "one_sided_cs_bound", "obf_spending", "pocock_spending",
    "power_spending", "group_sequential_boundaries", "group_sequential_p_value", "group_sequential_ci",
    "required_sample_size", "power_at", "always_valid_power_at", "expected_days_to_decision", "conditional_power",
    "srm_test", "winsorize_values", "InvalidStatistics", "ALWAYS_VALID_MIN_SAMPLES", "SKEW_SAMPLES_PER_G1SQ",
    "skew_min_samples", "GroupSequentialDesign", "group_sequential_design", "planned_look_samples", "holm_adjust",
    "bonferroni_adjust", "BayesianReadout", "bayesian_readout", "gaussian_readout", "RatioStats", "RegressionStats",
    "AdjustedEstimate", "regression_adjusted",
]
