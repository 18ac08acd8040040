"""Verdict, drift signal, futility and report-throttling logic for one experiment.

Pure Python on top of ``stats``: ``evaluate`` turns the sufficient statistics of the paired
deltas plus the experiment's ``EvaluationPolicy`` into an ``Evaluation`` that the Dagster
assets persist, report and plot.

Decision rules (in order):

1. ``samples < min_samples_for_decision`` -> verdict ``insufficient_samples``, event
   ``EXPERIMENT_INSUFFICIENT_SAMPLES``, no winner and no drift signal (spec 7, 26).
2. ``mode == "limited_live"`` and a sample-ratio mismatch (chi-square at ``srm_alpha``) ->
   verdict ``srm_blocked``, event ``EXPERIMENT_SRM_DETECTED``; no winner, no drift signal
   (the comparison itself is untrustworthy).
3. Otherwise the chosen interval (``ci_method``) decides: ``variant_wins`` if its low bound
   > 0, ``control_wins`` if its high bound < 0, else ``inconclusive``; event
   ``EXPERIMENT_RESULT``. The fixed-horizon t interval is always reported alongside.

Drift (spec 9 step 5): with n >= min_samples and no SRM block, a drift signal is due when
the one-sided always-valid upper bound (``drift_alpha`` = 0.025) is below 0 or the verdict
is ``control_wins``. For ``ci_method="fixed_horizon"`` the spec's literal rule applies
instead: at the planned look (n >= planned_max_samples, or min_samples when none is
declared) the mean is more than 2 standard errors below 0 (or the verdict is control_wins).
The fixed-scale z = mean / SE is always reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, Sequence

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.model.numbers import to_json
from experimenttracker_pipeline.stats import Interval, SufficientStats

__all__ = [
    "EvaluationPolicy",
    "Evaluation",
    "evaluate",
    "materially_changed",
    "report_payload",
    "PLAIN_ENGLISH",
    "REPORT_CI_SHIFT_FRACTION",
    "REPORT_SAMPLE_GROWTH_FRACTION",
]

# Verdicts
VARIANT_WINS = "variant_wins"
CONTROL_WINS = "control_wins"
INCONCLUSIVE = "inconclusive"
INSUFFICIENT = "insufficient_samples"
SRM_BLOCKED = "srm_blocked"
VERDICTS = (VARIANT_WINS, CONTROL_WINS, INCONCLUSIVE, INSUFFICIENT, SRM_BLOCKED)

# Reason codes (spec section 14 plus the ones this design adds)
EXPERIMENT_RESULT = "EXPERIMENT_RESULT"
EXPERIMENT_INSUFFICIENT_SAMPLES = "EXPERIMENT_INSUFFICIENT_SAMPLES"
EXPERIMENT_LARGE_SPLIT_WARN = "EXPERIMENT_LARGE_SPLIT_WARN"
EXPERIMENT_SRM_DETECTED = "EXPERIMENT_SRM_DETECTED"
EXPERIMENT_DRIFT_SIGNAL = "EXPERIMENT_DRIFT_SIGNAL"
EXPERIMENT_FUTILE = "EXPERIMENT_FUTILE"
EXPERIMENT_WINSORIZATION_CHANGED_RESULT = "EXPERIMENT_WINSORIZATION_CHANGED_RESULT"

CI_METHODS = ("always_valid", "group_sequential", "fixed_horizon")
MODES = ("shadow_only", "limited_live")

# A new EXPERIMENT_RESULT report is due when a bound of the chosen interval moved by more than
# this fraction of the previous interval's width ...
REPORT_CI_SHIFT_FRACTION = 0.25
# ... or the sample count grew by at least this fraction since the last report. Geometric
# growth bounds the number of reports to ~log(n_end/n_start)/log(1.1), e.g. ~41 from 100 to
# 5000 pairs, instead of one per sensor tick.
REPORT_SAMPLE_GROWTH_FRACTION = 0.10

# Spec section 17 texts are verbatim; the others follow their style.
PLAIN_ENGLISH: dict[str, str] = {
    VARIANT_WINS: "The new strategy version performed better in testing and has been flagged for promotion review.",
    INSUFFICIENT: "The experiment is still collecting data. No conclusion yet.",
    CONTROL_WINS: "The new strategy version performed worse than the current version in testing "
    "and has been flagged for demotion review.",
    INCONCLUSIVE: "The experiment has enough data, but there is no clear difference between the new "
    "and the current strategy version yet.",
    SRM_BLOCKED: "The share of traffic sent to the new strategy version does not match the experiment's "
    "configuration, so the results cannot be trusted and no conclusion has been drawn.",
    "drift": "The new strategy version is doing worse than the current version, so the strategy "
    "registry has been told to review it.",
    "futile": "Even with the planned amount of data, this experiment is unlikely to reach a conclusion.",
    "large_split": "A large share of traffic is used for the experiment, so a human sign-off is required "
    "before any promotion.",
}


@dataclass
class EvaluationPolicy:
    """Per-experiment evaluation settings.

    ``expected_samples`` tunes the confidence sequence (the n where it is tightest). When
    not declared it defaults, in order, to: the fixed-horizon sample size for ``mde_bps``
    with ``expected_sd_bps`` (both declared before the experiment, so the tuning does not
    depend on the data), ``planned_max_samples``, then ``min_samples_for_decision``. Any
    fixed choice keeps the error guarantee; a good one only narrows the interval (tuning
    at 100 pairs costs ~14% width at 5000 pairs compared with tuning at 5000).
    """

    min_samples_for_decision: int = 100
    alpha: float = 0.05
    ci_method: Literal["always_valid", "group_sequential", "fixed_horizon"] = "always_valid"
    expected_samples: int | None = None
    planned_looks: int | None = None
    planned_max_samples: int | None = None
    mde_bps: float | None = None
    expected_sd_bps: float | None = None
    target_power: float = 0.8
    drift_alpha: float = 0.025
    srm_alpha: float = 0.001
    futility_threshold: float = 0.1
    mode: Literal["shadow_only", "limited_live"] = "shadow_only"
    traffic_split_pct: float = 10
    winsorize_pct: float | None = None

    def __post_init__(self) -> None:
        if self.ci_method not in CI_METHODS:
            raise ValueError(f"ci_method must be one of {CI_METHODS}, got {self.ci_method!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.min_samples_for_decision < 2:
            raise ValueError("min_samples_for_decision must be >= 2")
        for name in ("alpha", "drift_alpha", "srm_alpha", "target_power"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if not 0 <= self.traffic_split_pct <= 100:
            raise ValueError("traffic_split_pct must be in [0, 100]")
        if self.mde_bps is not None and self.mde_bps == 0:
            raise ValueError("mde_bps must be non-zero")
        for name in ("expected_samples", "planned_max_samples", "planned_looks"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.ci_method == "group_sequential" and self.planned_max_samples is None:
            # Information fractions need a fixed denominator; renormalising at every look by
            # the current n would re-spend alpha at each look (see spotify/confidence#110).
            raise ValueError("ci_method 'group_sequential' requires planned_max_samples")
        if self.winsorize_pct is not None and not 0 <= self.winsorize_pct < 50:
            raise ValueError("winsorize_pct must be in [0, 50)")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> "EvaluationPolicy":
        """Build from a config dict, ignoring keys that are not policy fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names and v is not None})

    def tuning_samples(self) -> int:
        """Sample size at which the confidence sequence is tuned (see class docstring)."""
        if self.expected_samples is not None:
            return int(self.expected_samples)
        if self.mde_bps is not None and self.expected_sd_bps is not None and self.expected_sd_bps > 0:
            return max(
                self.min_samples_for_decision,
                st.required_sample_size(self.mde_bps, self.expected_sd_bps, self.alpha, self.target_power),
            )
        if self.planned_max_samples is not None:
            return int(self.planned_max_samples)
        return int(self.min_samples_for_decision)

    def planned_samples(self) -> int:
        """Planned maximum n (information fraction denominator, futility horizon)."""
        if self.planned_max_samples is not None:
            return int(self.planned_max_samples)
        return max(self.tuning_samples(), self.min_samples_for_decision)


@dataclass
class Evaluation:
    """Everything one evaluation decided, with the evidence behind it."""

    verdict: str
    event_type: str
    reason_codes: list[str]
    ci_method: str
    alpha: float
    samples: int
    edge_delta_bps: float
    sd_bps: float
    se_bps: float
    ci_95_low: float
    ci_95_high: float
    p_value: float
    critical_value: float
    fixed_ci_95_low: float
    fixed_ci_95_high: float
    fixed_p_value: float
    always_valid_ci_95_low: float
    always_valid_ci_95_high: float
    always_valid_p_value: float
    tuning_samples: int
    drift_signalled: bool
    drift_z: float
    drift_bound: float
    drift_rule: str
    power: float | None = None
    power_effect_bps: float | None = None
    power_basis: str | None = None
    required_samples: int | None = None
    expected_days_to_decision: float | None = None
    conditional_power: float | None = None
    futile: bool = False
    information_fraction: float | None = None
    gs_boundary: float | None = None
    look_number: int | None = None
    planned_looks: int | None = None
    planned_samples: int | None = None
    srm: dict | None = None
    winsorization: dict | None = None
    plain_english: str = ""

    @property
    def is_decision(self) -> bool:
        return self.verdict in (VARIANT_WINS, CONTROL_WINS)

    def to_dict(self) -> dict:
        """JSON-safe dict: floats rounded to 6 significant digits, NaN/inf -> None."""
        return to_json(asdict(self))


def _decide(ci: Interval) -> str:
    if ci.low > 0:
        return VARIANT_WINS
    if ci.high < 0:
        return CONTROL_WINS
    return INCONCLUSIVE


def _info_fractions(n: int, look_sample_counts: Sequence[int], planned: int) -> tuple[list[float], int]:
    """Information fractions of the previous looks plus the current one.

    Fractions are n_k / max(planned, n): an overrun past the plan renormalises by the
    current n (as Spotify's implementation does) so the last look always spends all alpha.
    """
    previous = sorted({int(c) for c in look_sample_counts if 0 < int(c) < n})
    denom = max(planned, n)
    return [c / denom for c in previous] + [n / denom], denom


def evaluate(
    stats: SufficientStats,
    policy: EvaluationPolicy | None = None,
    *,
    look_sample_counts: Sequence[int] = (),
    variant_count: int | None = None,
    control_count: int | None = None,
    samples_per_day: float | None = None,
    winsorized_stats: SufficientStats | None = None,
) -> Evaluation:
    """Evaluate one experiment from the sufficient statistics of its paired deltas.

    ``look_sample_counts``: sample counts at the previous group-sequential looks (only used
    with ``ci_method="group_sequential"``; the current n is the current look).
    ``variant_count``/``control_count``: fills routed to each arm, for the SRM check in
    ``limited_live`` mode. ``samples_per_day``: observed sampling rate for the time estimate.
    ``winsorized_stats``: statistics of the deltas winsorized at ``policy.winsorize_pct``;
    when both are set the verdict uses them and the raw result is reported alongside.
    """
    policy = policy or EvaluationPolicy()
    alpha = policy.alpha
    n = stats.n

    basis = stats
    if policy.winsorize_pct is not None and winsorized_stats is not None:
        if winsorized_stats.n != stats.n:
            raise ValueError("winsorized_stats must have the same n as stats")
        basis = winsorized_stats

    n_tune = policy.tuning_samples()
    planned = policy.planned_samples()
    fixed = st.fixed_ci(basis, alpha)
    cs = st.confidence_sequence(basis, alpha, n_tune=n_tune)

    information_fraction = gs_boundary = look_number = None
    if policy.ci_method == "always_valid":
        chosen = cs
    elif policy.ci_method == "fixed_horizon":
        chosen = fixed
    else:
        fractions, _ = _info_fractions(max(n, 1), look_sample_counts, planned)
        chosen = st.group_sequential_ci(basis, fractions, alpha)
        information_fraction, gs_boundary, look_number = chosen.information_fraction, chosen.critical_value, chosen.look

    reason_codes: list[str] = []
    srm_result = None
    if variant_count is not None and control_count is not None and 0 < policy.traffic_split_pct < 100:
        srm_result = st.srm_test(variant_count, control_count, policy.traffic_split_pct / 100.0, policy.srm_alpha)

    # --- verdict -------------------------------------------------------------------------
    if n < policy.min_samples_for_decision:
        verdict, event_type = INSUFFICIENT, EXPERIMENT_INSUFFICIENT_SAMPLES
    elif policy.mode == "limited_live" and srm_result is not None and srm_result.mismatch:
        verdict, event_type = SRM_BLOCKED, EXPERIMENT_SRM_DETECTED
    else:
        verdict, event_type = _decide(chosen), EXPERIMENT_RESULT
    reason_codes.append(event_type)
    if policy.traffic_split_pct > 50:
        reason_codes.append(EXPERIMENT_LARGE_SPLIT_WARN)

    # --- drift -----------------------------------------------------------------------------
    se = basis.se
    mean = basis.mean
    drift_z = mean / se if se and math.isfinite(se) and se > 0 else (math.copysign(math.inf, mean) if mean else 0.0)
    can_signal = verdict not in (INSUFFICIENT, SRM_BLOCKED)
    if policy.ci_method == "fixed_horizon":
        drift_rule = "fixed_2_sigma_at_planned_look"
        at_planned_look = n >= (policy.planned_max_samples or policy.min_samples_for_decision)
        drift_bound = mean + 2 * se if math.isfinite(se) else math.inf
        drift = can_signal and at_planned_look and (drift_bound < 0 or verdict == CONTROL_WINS)
    else:
        drift_rule = "one_sided_always_valid"
        drift_bound = st.one_sided_cs_bound(basis, policy.drift_alpha, n_tune=n_tune, side="upper")
        drift = can_signal and (drift_bound < 0 or verdict == CONTROL_WINS)
    if drift:
        reason_codes.append(EXPERIMENT_DRIFT_SIGNAL)

    # --- power, sample size, futility -----------------------------------------------------------
    sd = basis.sd
    power = required = days = cp = None
    power_effect = power_basis = None
    if policy.mde_bps is not None:
        power_effect, power_basis = abs(policy.mde_bps), "mde"
    elif n >= 2 and mean != 0:
        # No declared MDE: size against the effect seen so far (labelled as such).
        power_effect, power_basis = abs(mean), "observed_effect"
    if power_effect is not None and n >= 2 and sd > 0:
        if policy.ci_method == "always_valid":
            power = st.always_valid_power_at(n, power_effect, sd, alpha, n_tune=n_tune)
            method = "always_valid"
        else:
            # Group sequential with O'Brien-Fleming spending costs only a few % of sample size
            # over the fixed design, so the fixed-horizon figure is used for it.
            power = st.power_at(n, power_effect, sd, alpha)
            method = "fixed_horizon"
        try:
            required = max(
                policy.min_samples_for_decision,
                st.required_sample_size(power_effect, sd, alpha, policy.target_power, method=method, n_tune=n_tune),
            )
        except ValueError:  # effect too small to ever be detected within n_max
            required = None
        days = st.expected_days_to_decision(required, n, samples_per_day)

    # Futility needs a horizon: the declared planned_max_samples, else the sample size the
    # declared MDE needs. Without either there is no "planned n" to be hopeless about.
    futility_horizon = policy.planned_max_samples
    if futility_horizon is None and policy.mde_bps is not None:
        futility_horizon = required
    futile = False
    if futility_horizon is not None and n >= policy.min_samples_for_decision and sd > 0 and verdict == INCONCLUSIVE:
        big_n = max(futility_horizon, n)
        if policy.ci_method == "always_valid":
            crit = st.normal_mixture_bound(big_n, alpha, st.mixture_rho(n_tune, alpha)) / math.sqrt(big_n)
        elif policy.ci_method == "group_sequential":
            fr, _ = _info_fractions(max(n, 1), look_sample_counts, big_n)
            final = fr + ([1.0] if fr[-1] < 1.0 else [])
            crit = st.group_sequential_boundaries(final, alpha)[-1]
        else:
            crit = None
        # Under the design effect when declared (is the MDE still reachable?), else the trend.
        cp = st.conditional_power(basis, big_n, alpha, policy.mde_bps, critical_value=crit)
        futile = math.isfinite(cp) and cp < policy.futility_threshold
        if futile:
            reason_codes.append(EXPERIMENT_FUTILE)

    # --- winsorization report -------------------------------------------------------------------
    winsor = None
    if basis is not stats:
        if policy.ci_method == "always_valid":
            raw_ci = st.confidence_sequence(stats, alpha, n_tune=n_tune)
        elif policy.ci_method == "fixed_horizon":
            raw_ci = st.fixed_ci(stats, alpha)
        else:
            fr, _ = _info_fractions(max(n, 1), look_sample_counts, planned)
            raw_ci = st.group_sequential_ci(stats, fr, alpha)
        raw_verdict = verdict if verdict in (INSUFFICIENT, SRM_BLOCKED) else _decide(raw_ci)
        changed = raw_verdict != verdict
        winsor = {
            "pct": policy.winsorize_pct,
            "raw_edge_delta_bps": stats.mean,
            "raw_ci_95_low": raw_ci.low,
            "raw_ci_95_high": raw_ci.high,
            "raw_verdict": raw_verdict,
            "changes_result": changed,
        }
        if changed:
            reason_codes.append(EXPERIMENT_WINSORIZATION_CHANGED_RESULT)

    # --- plain English ----------------------------------------------------------------------------
    texts = [PLAIN_ENGLISH[verdict]]
    if drift and verdict != CONTROL_WINS:
        texts.append(PLAIN_ENGLISH["drift"])
    if futile:
        texts.append(PLAIN_ENGLISH["futile"])
    if policy.traffic_split_pct > 50:
        texts.append(PLAIN_ENGLISH["large_split"])

    return Evaluation(
        verdict=verdict,
        event_type=event_type,
        reason_codes=reason_codes,
        ci_method=policy.ci_method,
        alpha=alpha,
        samples=n,
        edge_delta_bps=mean,
        sd_bps=sd,
        se_bps=se,
        ci_95_low=chosen.low,
        ci_95_high=chosen.high,
        p_value=chosen.p_value,
        critical_value=chosen.critical_value,
        fixed_ci_95_low=fixed.low,
        fixed_ci_95_high=fixed.high,
        fixed_p_value=fixed.p_value,
        always_valid_ci_95_low=cs.low,
        always_valid_ci_95_high=cs.high,
        always_valid_p_value=cs.p_value,
        tuning_samples=n_tune,
        drift_signalled=bool(drift),
        drift_z=drift_z,
        drift_bound=drift_bound,
        drift_rule=drift_rule,
        power=power,
        power_effect_bps=power_effect,
        power_basis=power_basis,
        required_samples=required,
        expected_days_to_decision=days,
        conditional_power=cp,
        futile=bool(futile),
        information_fraction=information_fraction,
        gs_boundary=gs_boundary,
        look_number=look_number,
        planned_looks=policy.planned_looks,
        planned_samples=planned,
        srm=srm_result.to_dict() if srm_result is not None else None,
        winsorization=winsor,
        plain_english=" ".join(texts),
    )


def _get(d: Mapping[str, Any], key: str) -> Any:
    v = d.get(key)
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None


def materially_changed(previous: Mapping[str, Any] | None, current: Evaluation | Mapping[str, Any]) -> bool:
    """Whether ``current`` warrants a new report after ``previous`` (a stored ``to_dict()``).

    True when there is no previous report; the verdict, event type, ci_method, drift,
    futility or SRM status changed; a bound of the chosen interval moved by more than
    ``REPORT_CI_SHIFT_FRACTION`` (25%) of the previous interval's width; or the sample
    count grew by at least ``REPORT_SAMPLE_GROWTH_FRACTION`` (10%). Re-evaluating the same
    evidence (or a few more pairs that barely move the interval) returns False, so sensor
    ticks do not duplicate reports.
    """
    if not previous:
        return True
    cur = current.to_dict() if isinstance(current, Evaluation) else dict(current)
    current_samples = int(cur.get("samples") or 0)
    for key in ("verdict", "event_type", "ci_method", "drift_signalled", "futile"):
        if previous.get(key) != cur.get(key):
            return True
    prev_srm = (previous.get("srm") or {}).get("mismatch")
    cur_srm = (cur.get("srm") or {}).get("mismatch")
    if bool(prev_srm) != bool(cur_srm):
        return True
    prev_n = previous.get("samples") or 0
    if prev_n <= 0 or current_samples >= prev_n * (1 + REPORT_SAMPLE_GROWTH_FRACTION):
        return current_samples != prev_n
    lo0, hi0 = _get(previous, "ci_95_low"), _get(previous, "ci_95_high")
    lo1, hi1 = cur.get("ci_95_low"), cur.get("ci_95_high")
    if (lo0 is None) != (lo1 is None) or (hi0 is None) != (hi1 is None):
        return True
    if None in (lo0, hi0, lo1, hi1):
        return False
    width = hi0 - lo0
    if width <= 0:
        return lo0 != lo1 or hi0 != hi1
    return max(abs(lo1 - lo0), abs(hi1 - hi0)) > REPORT_CI_SHIFT_FRACTION * width


def report_payload(
    evaluation: Evaluation,
    *,
    report_id: str,
    experiment_id: str,
    variant_slug: str,
    control_slug: str,
    bot_id: str = "gov.experimenttracker",
) -> dict:
    """OperationsReport in the spec section 13 shape, plus method, fixed CI and evidence."""
    e = evaluation.to_dict()
    payload = {
        "report_id": report_id,
        "bot_id": bot_id,
        "event_type": e["event_type"],
        "experiment_id": experiment_id,
        "variant_slug": variant_slug,
        "control_slug": control_slug,
        "samples": e["samples"],
        "edge_delta_bps": e["edge_delta_bps"],
        "ci_95_low": e["ci_95_low"],
        "ci_95_high": e["ci_95_high"],
        "verdict": e["verdict"],
        "report_kind": "OperationsReport",
        "topic": "polytraders.reports.operations",
    }
    for key in (
        "ci_method",
        "fixed_ci_95_low",
        "fixed_ci_95_high",
        "p_value",
        "fixed_p_value",
        "reason_codes",
        "drift_signalled",
        "drift_z",
        "power",
        "information_fraction",
        "gs_boundary",
        "srm",
        "plain_english",
    ):
        payload[key] = e[key]
    return payload
