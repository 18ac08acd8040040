"""Shared helpers for the issue-6 tests: a stand-in for the spine's declaration and the README's
complete contract example."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

import yaml

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model.contract import ExperimentContract, build_contract

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

SPINE_FIELDS = ("experiment_id", "principal", "subject", "variant_slug", "control_slug", "mode",
                "traffic_split_pct", "min_samples_for_decision", "auto_promote_on_winning",
                "require_human_signoff", "started_at", "caliper_seconds")


@dataclass(frozen=True)
class StandInDeclaration:
    """The spine's ExperimentDeclaration shape (duck-typed)."""
    experiment_id: str
    principal: str
    subject: str
    variant_slug: str
    control_slug: str
    mode: str
    traffic_split_pct: float
    min_samples_for_decision: int
    auto_promote_on_winning: bool
    require_human_signoff: bool
    started_at: datetime
    caliper_seconds: float
    source_file: str
    raw: Mapping[str, Any] = field(default_factory=dict)


def declaration(raw: Mapping[str, Any], source_file: str = "experiments/exp.yaml") -> StandInDeclaration:
    """Mimic the spine: spine fields parsed with defaults, the full mapping kept in ``raw``."""
    return StandInDeclaration(
        experiment_id=raw["experiment_id"], principal=raw.get("principal"),
        subject=raw.get("subject") or f"strategy:{raw['variant_slug']}",
        variant_slug=raw["variant_slug"], control_slug=raw["control_slug"],
        mode=raw.get("mode", "shadow_only"), traffic_split_pct=raw.get("traffic_split_pct", 10),
        min_samples_for_decision=raw.get("min_samples_for_decision", 100),
        auto_promote_on_winning=raw.get("auto_promote_on_winning", False),
        require_human_signoff=raw.get("require_human_signoff", True),
        started_at=cj.parse_timestamp(raw.get("started_at", "2026-05-05T00:00:00Z")),
        caliper_seconds=raw.get("caliper_seconds", 60), source_file=source_file, raw=raw,
    )


def example_raw() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_YAML)


def old_raw(**overrides: Any) -> dict[str, Any]:
    """A pre-issue-6 declaration (spine keys only)."""
    raw = {
        "experiment_id": "exp_sports_v2", "principal": "desk:sports",
        "variant_slug": "sports-model-v2", "control_slug": "sports-model", "mode": "shadow_only",
        "traffic_split_pct": 10, "min_samples_for_decision": 100, "auto_promote_on_winning": False,
        "require_human_signoff": True, "started_at": "2026-05-05T00:00:00Z",
    }
    raw.update(overrides)
    return raw


def make_contract(raw: Mapping[str, Any] | None = None, **overrides: Any) -> ExperimentContract:
    raw = copy.deepcopy(dict(raw if raw is not None else example_raw()))
    raw.update(overrides)
    return build_contract(declaration(raw), raw)
