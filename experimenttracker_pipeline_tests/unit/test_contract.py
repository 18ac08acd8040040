"""Experiment contracts: validation with precise messages, defaults for declarations without contract
sections, and stable digests."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model.experiment import experiment_from_row, parse_experiment
from experimenttracker_pipeline.model.fields import InvalidDeclaration

from experimenttracker_pipeline_tests.contract_fixtures import (
    EXAMPLE_YAML,
    abn_raw,
    example_raw,
    make_contract,
    old_raw,
)

REPO = Path(__file__).resolve().parents[2]


def errors_of(raw, file="experiments/bad.yaml"):
    with pytest.raises(InvalidDeclaration) as ei:
        parse_experiment(raw, file)
    e = ei.value
    assert e.file == file and all(i.file == file for i in e.issues)
    return e


def only_error(raw):
    e = errors_of(raw)
    assert len(e.issues) == 1, str(e)
    return e.issues[0]


# -- defaults ---------------------------------------------------------------------------------

def test_old_shadow_declaration_gets_defaults():
    c = make_contract(old_raw())
    assert c.subject == "strategy:sports-model-v2"
    assert c.personas == ("governance", "risk", "trader")
    assert c.polb_config.envelope_mode == "shadow"
    assert c.polb_config.max_population_share_bp == 1000
    assert [(v.id, v.slug, v.traffic_share_bp) for v in c.variants] == [
        ("control", "sports-model", 9000), ("variant", "sports-model-v2", 1000)]
    assert [(o.metric, o.weight_bp) for o in c.eval_surface.primary] == [("edge_delta_bps", 10000)]
    assert c.eval_surface.hard == () and c.eval_surface.scope.domain == "finance"
    assert "harm" in c.stop_rules.early_stop_on and c.stop_rules.max_duration_days is None
    assert set(c.defaults_applied) >= {"subject", "polb_config", "variants", "eval_surface", "stop_rules"}


def test_old_limited_live_maps_to_online_and_split():
    c = make_contract(old_raw(mode="limited_live", traffic_split_pct=25))
    assert c.polb_config.envelope_mode == "online" and c.polb_config.is_online
    assert c.polb_config.max_population_share_bp == 2500
    assert {v.id: v.traffic_share_bp for v in c.variants} == {"control": 7500, "variant": 2500}


def test_fractional_split_becomes_integer_bp():
    c = make_contract(old_raw(traffic_split_pct=12.5))
    assert c.traffic_split_bp == 1250 and c.variants[1].traffic_share_bp == 1250


def test_full_example_parses():
    c = make_contract()
    assert c.subject == "strategy:sports-model@v2" and c.principal == "desk:sports"
    assert [h.expr for h in c.eval_surface.hard] == ["slippage_delta_bps<=5", "fill_size_ratio>=0.8"]
    assert {s.expr: s.penalty_weight_bp for s in c.eval_surface.soft} == {
        "fill_quality_delta>=0": 500, "slippage_delta_bps<=2": 10000}
    assert c.polb_config.rollout_strategy == "canary" and c.polb_config.max_risk_level == "medium"
    assert c.eth_constraints.forbid_markets == {"us-election-2028"}
    assert c.eth_constraints.forbid_principals == {"fund:pension-a"}
    assert c.eth_constraints.forbid_statements == ("randomization_by_account_size",)
    assert c.stop_rules.min_duration_days == 7 and c.stop_rules.min_conditional_power_bp == 1000
    canon = c.to_canonical()
    assert canon["eval_surface"]["constraints"]["hard"][0] == {
        "expr": "fill_size_ratio>=0.8", "metric": "fill_size_ratio", "op": ">=", "threshold_micros": 800000}
    assert canon["stop_rules"]["futility"]["no_effect_band_micros"] == 500000
    assert canon["canonicalization"] == "si/jcs-strict/v1"
    assert canon["as_of"] == {"time": "2026-05-05T00:00:00Z", "clock_profile": "si/clock-profile/utc/v1"}
    cj.canonical_json(canon)  # no float anywhere


def test_readme_example_digest_is_unchanged():
    """Approvals stored in existing databases pin this digest: the canonical form must not drift."""
    assert make_contract().digest == "sha256:e95e302fd9bbf70bfac2fa46839cfa64fd545c72bbe25b45b4037c2fc47befa8"


# -- rejection with precise messages ------------------------------------------------------------

def _set(raw, path, value):
    cur = raw
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    last = keys[-1]
    if value is _DEL:
        del cur[last]
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return raw


_DEL = object()

INVALID = [
    # (path to change, new value, expected error path, fragment of the message)
    ("subject", "new model", "subject", "is vague"),
    ("subject", "strategy:tbd", "subject", "is vague"),
    ("subject", "", "subject", "is missing"),
    ("subject", "widget:x1", "subject", "unknown kind 'widget'"),
    ("principal", "desk", "principal", "is vague"),
    ("principal", "desk:everyone", "principal", "is vague"),
    ("principal", None, "principal", "is missing"),
    ("personas", ["trader", "cfo"], "personas[1]", "unknown persona 'cfo'"),
    ("eval_surface.objectives.primary.0.weight_bp", 0.5, "eval_surface.objectives.primary[0].weight_bp",
     "must be an integer (basis points), got float 0.5"),
    ("eval_surface.objectives.primary.0.weight_bp", 0, "eval_surface.objectives.primary[0].weight_bp",
     "must not be 0"),
    ("eval_surface.objectives.primary.0.name", "pnl", "eval_surface.objectives.primary[0].name",
     "unknown metric 'pnl'"),
    ("eval_surface.objectives.primary", [], "eval_surface.objectives.primary",
     "at least one primary objective"),
    ("eval_surface.constraints.hard.0", "slippage_delta_bps == 5", "eval_surface.constraints.hard[0]",
     "operator '==' in 'slippage_delta_bps == 5' is not supported"),
    ("eval_surface.constraints.hard.0", "slippage is low", "eval_surface.constraints.hard[0]",
     "cannot parse 'slippage is low'"),
    ("eval_surface.constraints.hard.0", "slipage_delta_bps <= 5", "eval_surface.constraints.hard[0]",
     "unknown metric 'slipage_delta_bps'"),
    ("eval_surface.constraints.hard.0", "slippage_delta_bps <= 0.0000001",
     "eval_surface.constraints.hard[0]", "more than 6 decimal places"),
    ("eval_surface.constraints.soft.1", "slippage_delta_bps <= 5", "eval_surface.constraints.soft[1]",
     "also a hard constraint"),
    ("eval_surface.constraints.soft.0.penalty_weight_bp", 0.05,
     "eval_surface.constraints.soft[0].penalty_weight_bp", "must be an integer"),
    ("polb_config.envelope_mode", "shadow", "polb_config.envelope_mode",
     "'shadow' contradicts mode 'limited_live'"),
    ("polb_config.envelope_mode", "live", "polb_config.envelope_mode", "must be one of sandbox, shadow"),
    ("polb_config.max_population_share_bp", 500, "polb_config.max_population_share_bp",
     "500 bp is below the 1000 bp the variants receive"),
    ("polb_config.max_population_share_bp", True, "polb_config.max_population_share_bp",
     "must be an integer (basis points), got bool True"),
    ("polb_config.max_population_share", 1000, "polb_config.max_population_share", "unknown key"),
    ("polb_config.max_risk_level", "severe", "polb_config.max_risk_level", "must be one of low"),
    ("variants.treatment.traffic_share_bp", 1000.0, "variants.treatment.traffic_share_bp",
     "must be an integer (basis points), got float 1000.0"),
    ("variants.treatment.traffic_share_bp", 2000, "variants",
     "traffic_share_bp must sum to 10000, got control=9000 + treatment=2000 = 11000"),
    ("variants.control.slug", "other-model", "variants.control.slug",
     "differs from control_slug 'sports-model'"),
    ("variants.treatment.slug", "mystery", "variants", "no variant has the declared variant_slug"),
    ("variants.control", _DEL, "variants", "must declare a 'control' variant"),
    ("eth_constraints.forbid.0", "venue:abc", "eth_constraints.forbid[0]", "unknown forbid kind 'venue'"),
    ("eth_constraints.forbid.0", "market:", "eth_constraints.forbid[0]", "names no market"),
    ("stop_rules.early_stop_on", ["efficacy", "futility"], "stop_rules.early_stop_on",
     "must include 'harm'"),
    ("stop_rules.early_stop_on", ["harm", "boredom"], "stop_rules.early_stop_on[1]",
     "unknown stop rule 'boredom'"),
    ("stop_rules.max_duration_days", 3, "stop_rules.max_duration_days", "3 is below min_duration_days 7"),
    ("stop_rules.min_duration_days", 7.5, "stop_rules.min_duration_days", "must be an integer (days)"),
    ("stop_rules.futility.no_effect_band", float("nan"), "stop_rules.futility.no_effect_band",
     "must be > 0"),
]


@pytest.mark.parametrize("path,value,err_path,fragment", INVALID,
                         ids=[f"{p}={'<deleted>' if v is _DEL else repr(v)}" for p, v, *_ in INVALID])
def test_invalid_contract_rejected_with_precise_message(path, value, err_path, fragment):
    raw = _set(example_raw(), path, value)
    issue = only_error(raw)
    assert issue.path == err_path
    assert fragment in issue.message, issue.message
    assert str(issue).startswith("experiments/bad.yaml: " + err_path + ": ")


def test_split_must_agree_with_declared_variants():
    issue = only_error(example_raw() | {"traffic_split_pct": 20})
    assert issue.path == "variants"
    assert "non-control traffic_share_bp sum 1000 differs from traffic_split_pct 20 (2000 bp)" in issue.message
    assert "set traffic_split_pct: 10" in issue.message


def test_all_errors_of_a_file_are_collected():
    raw = example_raw()
    raw["subject"] = "the new model"
    raw["principal"] = "tbd"
    raw["eval_surface"]["constraints"]["hard"] = ["slippage_delta_bps ~ 5"]
    raw["variants"]["treatment"]["traffic_share_bp"] = 0.1
    raw["stop_rules"]["early_stop_on"] = ["efficacy"]
    e = errors_of(raw, "experiments/exp_sports_v2.yaml")
    assert e.paths == ["principal", "subject", "eval_surface.constraints.hard[0]",
                       "variants.treatment.traffic_share_bp", "stop_rules.early_stop_on"]
    text = str(e)
    assert text.startswith("experiments/exp_sports_v2.yaml: invalid experiment declaration (5 error(s))")
    assert "  subject: 'the new model' is vague" in text


def test_non_mapping_sections_rejected():
    raw = example_raw() | {"eval_surface": ["edge"], "variants": "control", "stop_rules": 7}
    e = errors_of(raw)
    assert e.paths == ["eval_surface", "variants", "stop_rules"]


# -- digests ----------------------------------------------------------------------------------

def _shuffled(obj, rng):
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    return obj


def test_digest_stable_across_key_order_and_set_like_list_order():
    base = make_contract().digest
    rng = random.Random(7)
    for _ in range(5):
        raw = _shuffled(example_raw(), rng)
        es = raw["eval_surface"]
        es["objectives"]["secondary"].reverse()
        es["constraints"]["hard"].reverse()
        es["constraints"]["soft"].reverse()
        raw["eth_constraints"]["forbid"].reverse()
        raw["personas"].reverse()
        assert make_contract(raw).digest == base


def test_digest_equal_whether_defaults_declared_or_not():
    old = make_contract(old_raw(mode="limited_live"))
    explicit = old_raw(mode="limited_live") | {
        "subject": "strategy:sports-model-v2",
        "personas": ["trader", "risk", "governance"],
        "polb_config": {"envelope_mode": "online", "max_population_share_bp": 1000,
                        "rollout_strategy": "random", "max_risk_level": "high",
                        "mode_name": "LIMITED_LIVE"},
        "variants": {"control": {"traffic_share_bp": 9000},
                     "variant": {"slug": "sports-model-v2", "traffic_share_bp": 1000}},
        "stop_rules": {"min_duration_days": 0, "early_stop_on": ["harm", "futility", "efficacy"]},
        "assignment": {"salt": "v1"},
    }
    assert make_contract(explicit).digest == old.digest


def test_digest_changes_with_meaning_but_not_with_source_file():
    c = make_contract()
    raw = example_raw()
    raw["eval_surface"]["constraints"]["hard"][0] = "slippage_delta_bps <= 6"
    assert make_contract(raw).digest != c.digest
    assert make_contract(example_raw() | {"require_human_signoff": False}).digest != c.digest
    moved = make_contract(example_raw(), "elsewhere/x.yaml")
    assert moved.digest == c.digest and moved.source_file == "elsewhere/x.yaml"
    # equivalent spellings of the same threshold give the same contract
    raw2 = example_raw()
    raw2["eval_surface"]["constraints"]["hard"][0] = "slippage_delta_bps<=5.000"
    assert make_contract(raw2).digest == c.digest


def test_digest_stable_across_processes():
    code = ("from experimenttracker_pipeline_tests.contract_fixtures import make_contract;"
            "print(make_contract().digest)")
    out = set()
    for seed in ("1", "12345"):
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True, timeout=60)
        out.add(r.stdout.strip())
    assert out == {make_contract().digest}


def test_contract_is_frozen_and_digest_is_canonical():
    c = make_contract()
    assert c.digest == cj.digest(c.to_canonical())
    assert c.binding == {"id": "exp_sports_v2", "digest": c.digest}
    with pytest.raises(Exception):
        c.mode = "shadow_only"  # type: ignore[misc]
    assert copy.deepcopy(c).digest == c.digest


def test_statistics_plan_is_pinned_by_the_digest():
    base = make_contract()
    assert base.to_canonical()["statistics_plan"]["ci_method"] == "always_valid"
    changed = make_contract(example_raw() | {"ci_method": "fixed_horizon", "planned_max_samples": 2000, "mde_bps": 2.5})
    assert changed.digest != base.digest
    assert changed.to_canonical()["statistics_plan"]["mde_bps_micros"] == 2_500_000


def test_stored_row_gives_the_same_experiment_once():
    """A registered declaration read back from its ``experiments`` row is the same experiment (same contract
    digest, plans and core fields), parsed once however many stages ask for it."""
    for raw in (example_raw(), old_raw(), old_raw(mode="limited_live", ci_method="group_sequential",
                                                      planned_looks=4, planned_max_samples=2000, mde_bps=1.5,
                                                      instrument="router_draw", harm_margin_bps=0.5)):
        parsed = parse_experiment(copy.deepcopy(raw), "experiments/x.yaml", default_caliper_seconds=30)
        row = parsed.to_row()
        stored = experiment_from_row(row)
        assert stored == parsed and stored.contract.digest == parsed.contract.digest
        assert stored.statistics == parsed.statistics and stored.causal == parsed.causal
        assert stored.caliper_seconds == 30 and stored.declaration_sha256 == row["declaration_sha256"]
        assert experiment_from_row(dict(row)) is stored


def test_yaml_timestamps_and_strings_give_the_same_digest():
    """YAML parses an unquoted timestamp into a datetime; the experiment and its digest do not change."""
    unquoted = yaml.safe_load(EXAMPLE_YAML.replace("started_at: '2026-05-05T00:00:00Z'", "started_at: 2026-05-05T00:00:00Z"))
    assert not isinstance(unquoted["started_at"], str)
    assert make_contract(unquoted).digest == make_contract().digest


def test_sandbox_experiment_names_one_candidate_policy():
    raw = example_raw() | {"mode": "shadow_only", "polb_config": {"envelope_mode": "sandbox", "max_population_share_bp": 1000}}
    issue = only_error(raw)  # the example's policy "strategy:sports-model@v2" is not a policy name of the logs
    assert issue.path == "variants.treatment.policy" and "candidate_propensities" in issue.message
    raw["variants"]["treatment"]["policy"] = "sports-v2"
    assert make_contract(raw).treatments[0].policy == "sports-v2"
    del raw["variants"]["treatment"]["policy"]
    assert only_error(raw).path == "variants.treatment.policy"


# -- adaptive allocation opt-in ---------------------------------------------------------------

ABN = abn_raw()


def test_contracts_without_adaptive_allocation_keep_their_digest():
    """Approvals pin the digest: declaring nothing new must leave every existing canonical form unchanged (the
    three digests were computed by the code before adaptive allocation existed)."""
    assert make_contract().digest == "sha256:e95e302fd9bbf70bfac2fa46839cfa64fd545c72bbe25b45b4037c2fc47befa8"
    assert make_contract(old_raw()).digest == "sha256:4b98461fcaaac9c8a6ba27c7f0184b507ee7515df9459a8b9c31220cd7c8d462"
    assert make_contract(ABN).digest == "sha256:22a5c64829db31a78d332ee6a5bd26a9b7badfb529cd6ba9cb307bb4ad744b0d"
    for c in (make_contract(), make_contract(ABN), make_contract(ABN | {"adaptive_allocation": None})):
        assert c.adaptive_allocation is None and "adaptive_allocation" not in c.to_canonical()


def test_adaptive_allocation_is_declared_into_the_digest_with_defaults():
    c = make_contract(ABN | {"adaptive_allocation": {}})
    assert (c.adaptive_allocation.objective, c.adaptive_allocation.floor_bp) == ("primary_metric", 500)
    assert c.to_canonical()["adaptive_allocation"] == {"objective": "primary_metric", "floor_bp": 500}
    assert c.digest != make_contract(ABN).digest
    explicit = make_contract(ABN | {"adaptive_allocation": {"objective": "primary_metric", "floor_bp": 500}})
    assert explicit.digest == c.digest
    surface = make_contract(ABN | {"adaptive_allocation": {"objective": "goal_surface", "floor_bp": 1000}})
    assert surface.adaptive_allocation.objective == "goal_surface" and surface.digest != c.digest
    # The README example (primary and secondary objectives with per-fill outcomes) may use its goal surface.
    example = make_contract(example_raw() | {"adaptive_allocation": {"objective": "goal_surface", "floor_bp": 500}})
    assert example.adaptive_allocation.objective == "goal_surface"


@pytest.mark.parametrize("raw, field, message", [
    (old_raw() | {"adaptive_allocation": {}}, "adaptive_allocation", "only a limited_live experiment"),
    (ABN | {"adaptive_allocation": {"objective": "bandit"}}, "adaptive_allocation.objective", "primary_metric, goal_surface"),
    (ABN | {"adaptive_allocation": {"floor_bp": 0}}, "adaptive_allocation.floor_bp", "1..5000"),
    (ABN | {"adaptive_allocation": {"floor_bp": 0.05}}, "adaptive_allocation.floor_bp", ""),
    (ABN | {"adaptive_allocation": {"floor_bp": 2000}}, "adaptive_allocation.floor_bp",
     "exceeds polb_config.max_population_share_bp 3000"),
    (ABN | {"adaptive_allocation": {"floor": 500}}, "adaptive_allocation.floor", "unknown key"),
    (ABN | {"adaptive_allocation": "yes"}, "adaptive_allocation", "must be a mapping"),
    (ABN | {"adaptive_allocation": {}, "eval_surface": {"objectives": {"primary": [
        {"name": "fill_size_ratio", "weight_bp": 10000}]}}}, "adaptive_allocation.objective", "no per-fill outcome"),
    (ABN | {"adaptive_allocation": {}, "eval_surface": {"objectives": {"primary": [
        {"name": "edge_delta_bps", "weight_bp": 10000}, {"name": "slippage_delta_bps", "weight_bp": -5000}]}}},
     "adaptive_allocation.objective", "declare objective: goal_surface"),
])
def test_adaptive_allocation_validation(raw, field, message):
    issue = only_error(raw)
    assert issue.field == field and message in issue.message, issue


def test_goal_surface_objective_refuses_a_metric_without_per_fill_outcome():
    raw = example_raw() | {"adaptive_allocation": {"objective": "goal_surface"}}
    raw["eval_surface"] = copy.deepcopy(raw["eval_surface"])
    raw["eval_surface"]["objectives"]["secondary"].append({"name": "fill_size_ratio", "weight_bp": 100})
    issue = only_error(raw)
    assert issue.field == "adaptive_allocation.objective" and "fill_size_ratio" in issue.message
