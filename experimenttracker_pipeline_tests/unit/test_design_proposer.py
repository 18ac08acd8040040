"""The experiment proposer: vague requests refused, the planned sample size checked by simulating the verdict's
own interval, rollout from the PoLB envelope and risk, and a draft the declarations loader accepts."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime, timezone

import pytest

import experimenttracker_pipeline.stats as st
from experimenttracker_pipeline.model.declaration import load_declarations, read_declaration
from experimenttracker_pipeline.stages.design.history import FillHistory, PairingHistory
from experimenttracker_pipeline.stages.design.proposer import (
    MIN_PAIRING_HISTORY,
    DesignRequest,
    VagueRequest,
    planned_pairs,
    propose_design,
)
from experimenttracker_pipeline_tests.support.power import simulated_size

START = datetime(2026, 6, 1, tzinfo=timezone.utc)


def request(**overrides) -> DesignRequest:
    fields = dict(variants=("sports-model-v2",), control="sports-model", principal="desk:sports",
                  subject="strategy:sports-model-v2", metric="edge_delta_bps", mde_bps=1.0, started_at=START)
    fields.update(overrides)
    return DesignRequest(**fields)


def history(sd: float = 10.0, n: int = 8000, days: int = 20, skew_cube: float = 0.0) -> FillHistory:
    return FillHistory(n=n, mean=2.0, sum_sq=(n - 1) * sd * sd, sum_cube=skew_cube, first_ms=0,
                       last_ms=(days - 1) * 86_400_000, active_days=days, span_days=days, markets=1)


@pytest.mark.parametrize("missing,expected", [
    ({"principal": None}, "principal is missing"),
    ({"subject": None}, "subject is missing"),
    ({"metric": None}, "primary metric is missing"),
    ({"principal": "desk:tbd"}, "is vague"),
    ({"subject": "the new model"}, "subject"),
])
def test_vague_requests_are_refused(missing, expected):
    with pytest.raises(VagueRequest) as info:
        propose_design(request(**missing), history())
    assert expected in str(info.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(VagueRequest) as info:
        propose_design(request(principal=None, subject=None, metric=None, mde_bps=-1), history())
    assert len(info.value.problems) == 4


@pytest.mark.parametrize("ci_method", ["always_valid", "fixed_horizon"])
def test_planned_size_matches_simulated_power(ci_method):
    """The proposal's n per arm is within 5% of the n at which the verdict's interval reaches the requested power
    in simulation (sd of the deltas = sqrt(2) x the control's sd, the assumption without pairing history)."""
    sd_control, mde, alpha, power = 10.0, 1.5, 0.05, 0.8
    proposal = propose_design(request(mde_bps=mde, ci_method=ci_method), history(sd=sd_control))
    sd_delta = math.sqrt(2) * sd_control
    assert proposal.sd_delta == pytest.approx(sd_delta)
    n = proposal.samples_per_arm
    assert n == planned_pairs(mde, sd_delta, alpha, power, ci_method)
    simulated, table = simulated_size(n, mde, sd_delta, alpha, power, sims=3000, seed=11, ci_method=ci_method)
    assert abs(n - simulated) / simulated < 0.05, (n, simulated, table)


def test_always_valid_plan_is_tuned_where_it_decides():
    """expected_samples (the tuning point) is the planned n, and tuning there needs fewer pairs than tuning at the
    fixed-horizon size would."""
    sd, mde = 14.0, 1.0
    n = planned_pairs(mde, sd, 0.05, 0.8)
    assert st.always_valid_power_at(n, mde, sd, 0.05, n_tune=n) >= 0.8
    assert st.always_valid_power_at(n - 1, mde, sd, 0.05, n_tune=n - 1) < 0.8 + 1e-3
    assert n <= st.required_sample_size(mde, sd, 0.05, 0.8, method="always_valid")
    assert n > st.required_sample_size(mde, sd, 0.05, 0.8)  # continuous monitoring costs pairs


def test_duration_follows_the_fill_rate():
    shadow = propose_design(request(), history(n=8000, days=20))
    assert shadow.pairs_per_day == pytest.approx(400)
    assert shadow.expected_duration_days == pytest.approx(shadow.samples_per_arm / 400)
    live = propose_design(request(mode="limited_live", risk="medium"), history(n=8000, days=20))
    assert live.rollout["strategy"] == "stratified" and live.rollout["initial_share_bp"] == 1000
    assert live.pairs_per_day == pytest.approx(40)
    assert live.duration_at_max_share_days == pytest.approx(live.samples_per_arm / 40)  # default cap = 10%
    canary = propose_design(request(mode="limited_live", risk="high", max_population_share_bp=2000), history())
    assert canary.pairs_per_day == pytest.approx(4)
    assert canary.duration_at_max_share_days == pytest.approx(canary.samples_per_arm / 80)
    assert canary.proposal_block()["expected_duration_days_at_max_share"] == pytest.approx(
        canary.samples_per_arm / 80, rel=1e-3)


@pytest.mark.parametrize("risk,strategy,share", [("low", "stratified", 1000), ("medium", "stratified", 1000),
                                                 ("high", "canary", 100), ("emergency", "canary", 100)])
def test_rollout_from_envelope_and_risk(risk, strategy, share):
    p = propose_design(request(mode="limited_live", risk=risk), history())
    assert (p.rollout["strategy"], p.rollout["initial_share_bp"]) == (strategy, share)
    shadow = propose_design(request(mode="shadow_only", risk=risk), history())
    assert shadow.rollout["initial_share_bp"] == 0


def test_initial_share_never_exceeds_the_polb_cap():
    p = propose_design(request(mode="limited_live", risk="low", max_population_share_bp=300), history())
    assert p.rollout["initial_share_bp"] == 300
    decl = p.declaration()
    assert decl["traffic_split_pct"] == 3 and decl["polb_config"]["max_population_share_bp"] == 300


def test_pairing_history_replaces_the_conservative_assumption():
    earlier = [PairingHistory("exp_old", "shadow_only", MIN_PAIRING_HISTORY, 0.5, (MIN_PAIRING_HISTORY - 1) * 36.0)]
    p = propose_design(request(), history(sd=10.0), earlier)
    assert p.sd_source == "pairing_history" and p.sd_delta == pytest.approx(6.0)
    few = [PairingHistory("exp_old", "shadow_only", 50, 0.5, 49 * 36.0)]
    q = propose_design(request(), history(sd=10.0), few)
    assert q.sd_source == "conservative_independent_arms"
    assert any("only 50 paired deltas" in a for a in q.assumptions)


def test_several_variants_split_alpha():
    one = propose_design(request(), history())
    three = propose_design(request(variants=("v-a", "v-b", "v-c")), history())
    assert three.alpha_per_comparison == pytest.approx(0.05 / 3)
    assert three.samples_per_arm > one.samples_per_arm
    assert three.proposal_block()["samples_total"] == 4 * three.samples_per_arm


@pytest.mark.parametrize("mode,risk,variants,ci_method", [
    ("shadow_only", "medium", ("v-a",), "always_valid"),
    ("shadow_only", "low", ("v-a", "v-b"), "fixed_horizon"),
    ("limited_live", "high", ("v-a",), "always_valid"),
    ("limited_live", "medium", ("v-a", "v-b", "v-c"), "always_valid"),
])
def test_written_draft_loads_as_a_declaration(tmp_path, mode, risk, variants, ci_method):
    p = propose_design(request(mode=mode, risk=risk, variants=variants, ci_method=ci_method,
                               experiment_id="exp_draft", markets=("mkt_1", "mkt_2")), history(skew_cube=4e6))
    path = tmp_path / "exp_draft.yaml"
    path.write_text(p.to_yaml())
    experiment = read_declaration(path)
    assert experiment.experiment_id == "exp_draft" and experiment.mode == mode
    assert experiment.min_samples_for_decision == p.min_samples_for_decision
    assert experiment.statistics.ci_method == ci_method
    if ci_method == "always_valid":
        assert experiment.statistics.expected_samples == p.samples_per_arm
    else:
        assert experiment.statistics.planned_max_samples == p.samples_per_arm
    contract = experiment.contract
    assert contract.eval_surface.primary[0].metric == "edge_delta_bps"
    assert contract.polb_config.max_risk_level == risk
    assert len(contract.treatments) == len(variants)
    assert contract.stop_rules.max_duration_days >= contract.stop_rules.min_duration_days
    if mode == "limited_live":
        assert sum(v.traffic_share_bp for v in contract.treatments) == p.rollout["initial_share_bp"]
        assert p.rollout["initial_share_bp"] <= contract.polb_config.max_population_share_bp
    load = load_declarations(tmp_path)
    assert not load.errors and [e.experiment_id for e in load.experiments] == ["exp_draft"]
    block = experiment.raw["proposal"]
    assert block["assumptions"] and block["monitoring"]["metrics"][0] == "edge_delta_bps"
    assert block["expected_duration_days"] == pytest.approx(p.expected_duration_days, rel=1e-3)


def test_skewed_history_delays_the_first_decision():
    n = 8000
    sd = 10.0
    g1 = 2.0  # sum_cube / n / m2^1.5
    cube = g1 * n * (sd * sd * (n - 1) / n) ** 1.5
    p = propose_design(request(), history(sd=sd, n=n, skew_cube=cube))
    assert p.min_samples_for_decision == min(p.samples_per_arm, math.ceil(st.SKEW_SAMPLES_PER_G1SQ * g1 * g1))


PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("dagster", "sqlalchemy"))))
"""


def test_planning_imports_neither_dagster_nor_sqlalchemy():
    out = subprocess.run([sys.executable, "-c", PROBE, "experimenttracker_pipeline.stages.design.proposer",
                          "experimenttracker_pipeline.stages.design.allocation", "experimenttracker_pipeline.causal.adaptive"],
                         capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.strip() == "[]"
