"""Shared helpers for the contract tests: the README's complete contract example, a declaration with only the
core fields, and the contract of a raw declaration."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import yaml

from experimenttracker_pipeline.model.contract import ExperimentContract
from experimenttracker_pipeline.model.experiment import parse_experiment

# The complete example documented in the README (keep the two in sync).
EXAMPLE_YAML = """\
experiment_id: exp_sports_v2
principal: desk:sports                 # on whose behalf: the desk or fund whose capital is at risk
subject: strategy:sports-model@v2      # what is evaluated; default strategy:<variant_slug>
variant_slug: sports-model-v2
control_slug: sports-model
mode: limited_live                     # shadow_only -> envelope shadow, limited_live -> online
traffic_split_pct: 10                  # = the non-control traffic_share_bp sum / 100
min_samples_for_decision: 100
auto_promote_on_winning: false
require_human_signoff: true
started_at: '2026-05-05T00:00:00Z'

personas: [trader, risk, governance]   # default: all three

eval_surface:
  id: eval:sports_execution/v1         # default eval:<experiment_id>/v1
  scope:
    domain: finance                    # default finance
    population: sports markets, desk:sports order flow
    vulnerable_populations: []         # non-empty adds risk and an ethics_board reviewer
  objectives:
    primary:
      - {name: edge_delta_bps, weight_bp: 10000}
    secondary:
      - {name: slippage_delta_bps, weight_bp: -2000}   # negative weight = minimise
      - {name: fill_quality_delta, weight_bp: 1000}
  constraints:
    hard:                              # judged on the 95% CI; never turned into penalties
      - "slippage_delta_bps <= 5"
      - "fill_size_ratio >= 0.8"
    soft:                              # judged on the point estimate; penalty lowers the score
      - {expr: "fill_quality_delta >= 0", penalty_weight_bp: 500}
      - "slippage_delta_bps <= 2"      # bare string: penalty_weight_bp 10000

polb_config:
  envelope_mode: online                # sandbox | shadow | online | degraded
  mode_name: ONLINE_EXPERIMENTAL_CANARY
  max_risk_level: medium               # low | medium | high | emergency
  rollout_strategy: canary             # canary | random | stratified
  max_population_share_bp: 1000        # >= the variants' total share
  guarded_by_eth: true

variants:                              # control first; others ordered by id for assignment
  control: {slug: sports-model, traffic_share_bp: 9000}
  treatment: {slug: sports-model-v2, policy: "strategy:sports-model@v2", traffic_share_bp: 1000}

eth_constraints:
  forbid:                              # never randomised: forced to control, with the reason logged
    - market:us-election-2028
    - principal:fund:pension-a
    - unit:opp-000042
    - randomization_by_account_size    # free text: recorded, shown to governance, not enforced
  require:
    - continuous_monitoring_of_slippage

stop_rules:
  min_duration_days: 7                 # no early stop for efficacy or futility before this
  max_duration_days: 60
  early_stop_on: [efficacy, futility, harm]   # harm is mandatory
  futility:
    no_effect_band: 0.5                # primary CI inside +-0.5 bps -> futile
    min_conditional_power_bp: 1000     # conditional power below 10% -> futile

assignment:
  salt: v1                             # bucket = sha256("<unit>:<experiment_id>:<salt>")[:4] % 10000
"""


def example_raw() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_YAML)


def old_raw(**overrides: Any) -> dict[str, Any]:
    """A declaration with only the core fields (no contract sections), as written before contracts existed."""
    raw = {
        "experiment_id": "exp_sports_v2", "principal": "desk:sports",
        "variant_slug": "sports-model-v2", "control_slug": "sports-model", "mode": "shadow_only",
        "traffic_split_pct": 10, "min_samples_for_decision": 100, "auto_promote_on_winning": False,
        "require_human_signoff": True, "started_at": "2026-05-05T00:00:00Z",
    }
    raw.update(overrides)
    return raw


def make_contract(raw: Mapping[str, Any] | None = None, source_file: str = "experiments/exp.yaml",
                  **overrides: Any) -> ExperimentContract:
    """The contract of the declaration ``raw`` (default: the README example) with ``overrides`` applied."""
    raw = copy.deepcopy(dict(raw if raw is not None else example_raw()))
    raw.update(overrides)
    return parse_experiment(raw, source_file).contract


def abn_raw(**overrides: Any) -> dict[str, Any]:
    """A limited-live declaration with two treatments and a control (PoLB cap 3000 bp), no adaptive allocation."""
    raw = {**old_raw(mode="limited_live", traffic_split_pct=20), "polb_config": {"max_population_share_bp": 3000},
           "variants": {"control": {"slug": "sports-model", "traffic_share_bp": 8000},
                        "good": {"slug": "sports-model-v2", "traffic_share_bp": 1000},
                        "bad": {"slug": "sports-model-v3", "traffic_share_bp": 1000}}}
    raw.update(overrides)
    return raw
