"""Causal layer for experiment evaluation: IPW / AIPW effects, harmed segments, 2SLS and OPE.

Plain numpy / scipy / scikit-learn; no Dagster, no database. One module per estimator family:
``weighting`` (IPW/AIPW, overlap), ``heterogeneity`` (segments, CATE), ``instruments`` (2SLS), ``off_policy``
(IPS/SNIPS/DR), on ``nuisance`` models and ``common`` design matrices; ``analysis`` combines them.  The Dagster asset builds a
fills frame per experiment and calls :func:`analyse_experiment`; ``CausalResult.to_dict()``
is the ``causal`` object of ``experimenttracker status --json``.

Column conventions of the fills frame (one row per fill of one experiment):

* ``treatment``   1 = routed to the variant, 0 = control
* ``outcome_bps`` edge in bps of notional
* ``propensity``  logged ``assignment_propensity`` = P(treatment=1 | context); may be
  missing/NaN, in which case it is estimated from the covariates
* covariates      named by the caller; non-numeric (str / category / bool) columns are
  categorical (one-hot encoded, and the segments of the harm test), numbers are numeric.

Method choices (validated by ``benchmarks/causal_coverage.py``; figures in the README):

* IPW is the Hajek (normalised) estimator -- the one statsmodels' ``TreatmentEffect.ipw``
  computes.  Horvitz-Thompson is reported alongside for reference only (it is not
  location-invariant and has a much larger variance).
* AIPW is the (unnormalised) doubly robust score with cross-fitted outcome models
  (histogram gradient boosting by default) and the single propensity used by IPW.
* SEs are influence-function (sandwich) SEs; see :data:`SE_METHODS` and
  ``_choose_ipw_se``.  A seeded bootstrap that refits the propensity is available on request.
* Propensities are clipped to ``clip`` (reported); a trimmed-population estimate (units
  with propensity inside ``trim``) is always reported too, and poor overlap produces the
  ``CAUSAL_POOR_OVERLAP`` reason code and ``estimate_reliable = False``.
"""

from .analysis import CausalResult, analyse_experiment
from .common import (
    HARMED_SEGMENT,
    POOR_OVERLAP,
    PROPENSITY_ESTIMATED,
    SEGMENT_NOT_TESTED,
    SINGLE_ARM,
    WEAK_INSTRUMENT,
    WEIGHTS_CLIPPED,
    Estimate,
    design_matrix,
    split_covariates,
)
from .heterogeneity import cate_models, segment_effects
from .instruments import IVResult, anderson_rubin_ci, iv_2sls
from .nuisance import crossfit_outcomes, fit_propensity
from .off_policy import (
    OffPolicyResult,
    SandboxEvaluation,
    crossfit_reward_model,
    evaluate_candidate_from_logs,
    off_policy_value,
)
from .weighting import AteResult, estimate_ate, hajek_ipw, overlap_report

__all__ = [
    "CausalResult", "analyse_experiment", "HARMED_SEGMENT", "POOR_OVERLAP", "PROPENSITY_ESTIMATED", "SEGMENT_NOT_TESTED",
    "SINGLE_ARM", "WEAK_INSTRUMENT", "WEIGHTS_CLIPPED", "Estimate", "design_matrix", "split_covariates", "cate_models",
    "segment_effects", "IVResult", "anderson_rubin_ci", "iv_2sls", "crossfit_outcomes", "fit_propensity",
    "OffPolicyResult", "SandboxEvaluation", "crossfit_reward_model", "evaluate_candidate_from_logs", "off_policy_value",
    "AteResult", "estimate_ate", "hajek_ipw", "overlap_report",
]
