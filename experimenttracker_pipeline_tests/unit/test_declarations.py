"""Experiment declarations: defaults from spec section 8, precise errors, bad files never block good ones."""

from pathlib import Path

import pytest

from experimenttracker_pipeline.model.declaration import load_declarations, read_declaration
from experimenttracker_pipeline.model.experiment import parse_experiment
from experimenttracker_pipeline.model.fields import InvalidDeclaration
from experimenttracker_pipeline_tests.builders import declaration


def test_defaults_follow_spec_section_8(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration(mode=None, traffic_split_pct=None, min_samples_for_decision=None))
    load = load_declarations(tmp_path)
    assert not load.errors
    (decl,) = load.experiments
    assert (decl.mode, decl.traffic_split_pct, decl.min_samples_for_decision) == ("shadow_only", 10, 100)
    assert decl.auto_promote_on_winning is False and decl.require_human_signoff is True
    assert decl.subject == "strategy:v-slug" and decl.started_at.tzinfo is not None


@pytest.mark.parametrize("overrides, field", [
    ({"experiment_id": None}, "experiment_id"),
    ({"principal": None}, "principal"),
    ({"principal": ""}, "principal"),
    ({"traffic_split_pct": 0}, "traffic_split_pct"),
    ({"traffic_split_pct": 101}, "traffic_split_pct"),
    ({"traffic_split_pct": "ten"}, "traffic_split_pct"),
    ({"mode": "full_live"}, "mode"),
    ({"started_at": "2026-05-01T00:00:00"}, "started_at"),
    ({"started_at": "yesterday"}, "started_at"),
    ({"min_samples_for_decision": 1.5}, "min_samples_for_decision"),
    ({"auto_promote_on_winning": "yes"}, "auto_promote_on_winning"),
    ({"experiment_id": "bad id with spaces"}, "experiment_id"),
    ({"control_slug": "v-slug"}, "variant_slug"),
    ({"ci_method": "group_sequential"}, "planned_looks"),
    ({"ci_method": "bayesian"}, "ci_method"),
    ({"expected_samples": -5}, "expected_samples"),
    ({"planned_looks": 2.5}, "planned_looks"),
    ({"mde_bps": 0}, "mde_bps"),
    ({"winsorize_pct": 60}, "winsorize_pct"),
    ({"expected_sd_bps": "wide"}, "expected_sd_bps"),
    ({"instrument": ""}, "instrument"),
    ({"harm_margin_bps": -1}, "harm_margin_bps"),
    ({"caliper_seconds": 0}, "caliper_seconds"),
    ({"principal": "desk"}, "principal"),
    ({"subject": "widget:x1"}, "subject"),
    ({"eval_surface": {"objectives": {"primary": []}}}, "eval_surface.objectives.primary"),
    ({"stop_rules": {"early_stop_on": ["efficacy"]}}, "stop_rules.early_stop_on"),
    ({"ci_method": "group_sequential", "planned_looks": 50, "planned_max_samples": 10}, "planned_looks"),
    ({"ci_method": "fixed_horizon"}, "planned_max_samples"),
    ({"ci_method": "fixed_horizon", "planned_max_samples": 50}, "planned_max_samples"),  # below min_samples 100
    ({"min_samples_for_decision": 10}, "min_samples_for_decision"),  # below the always-valid floor
    ({"drift_margin_bps": -1}, "drift_margin_bps"),
    ({"non_inferiority_margins": {"latency_ms": 1}}, "non_inferiority_margins.latency_ms"),
    ({"non_inferiority_margins": {"slippage_delta_bps": -1}}, "non_inferiority_margins.slippage_delta_bps"),
    ({"non_inferiority_margins": [1]}, "non_inferiority_margins"),
    ({"prior_sd_bps": 0}, "prior_sd_bps"),
    ({"adjust_for": "vol"}, "adjust_for"),
    ({"adjust_for": ["vol"], "ci_method": "fixed_horizon", "planned_max_samples": 500}, "adjust_for"),
    ({"adjust_for": ["vol"], "winsorize_pct": 1}, "adjust_for"),
])
def test_invalid_declarations_name_file_and_field(tmp_path: Path, overrides, field):
    (tmp_path / "bad.yaml").write_text(declaration("exp_bad", **overrides))
    (tmp_path / "good.yaml").write_text(declaration("exp_good"))
    load = load_declarations(tmp_path)
    assert [d.experiment_id for d in load.experiments] == ["exp_good"]
    (error,) = load.errors
    assert error.field == field and error.source.endswith("bad.yaml")
    assert "bad.yaml" in str(error) and field in str(error)


def test_duplicate_id_with_different_content_rejects_both(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration("exp_dup"))
    (tmp_path / "b.yaml").write_text(declaration("exp_dup", traffic_split_pct=20))
    (tmp_path / "c.yaml").write_text(declaration("exp_other"))
    load = load_declarations(tmp_path)
    assert [d.experiment_id for d in load.experiments] == ["exp_other"]
    assert {Path(e.source).name for e in load.errors} == {"a.yaml", "b.yaml"}


def test_identical_duplicate_loads_once(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration("exp_dup"))
    (tmp_path / "b.yml").write_text(declaration("exp_dup"))
    load = load_declarations(tmp_path)
    assert len(load.experiments) == 1 and not load.errors


def test_yaml_syntax_error_and_non_mapping(tmp_path: Path):
    (tmp_path / "broken.yaml").write_text("experiment_id: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    load = load_declarations(tmp_path)
    assert not load.experiments and {e.field for e in load.errors} == {"<document>"}


def test_large_split_flag():
    decl = parse_experiment({"experiment_id": "e", "principal": "desk:p", "variant_slug": "v", "control_slug": "c",
                             "traffic_split_pct": 60, "started_at": "2026-05-01T00:00:00Z"}, "x.yaml")
    assert decl.large_split
    with pytest.raises(InvalidDeclaration) as error:
        parse_experiment({"experiment_id": "e"}, "x.yaml")
    assert error.value.paths == ["principal", "variant_slug", "control_slug", "started_at"]


def test_every_problem_of_a_file_is_reported(tmp_path: Path):
    """Core fields, plans and contract sections are validated together: one error per invalid field."""
    (tmp_path / "bad.yaml").write_text(declaration("exp_bad", traffic_split_pct=0, mde_bps=-1,
                                                   personas=["trader", "cfo"]))
    (tmp_path / "good.yaml").write_text(declaration("exp_good"))
    load = load_declarations(tmp_path)
    assert [d.experiment_id for d in load.experiments] == ["exp_good"]
    assert [(Path(e.source).name, e.field) for e in load.errors] == [
        ("bad.yaml", "traffic_split_pct"), ("bad.yaml", "mde_bps"), ("bad.yaml", "personas[1]")]


def test_null_optional_fields_take_their_defaults(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration(mode=None) + "mode: null\nci_method: null\nharm_margin_bps: null\n"
                                     "auto_promote_on_winning: null\ncaliper_seconds: null\n")
    load = load_declarations(tmp_path, default_caliper_seconds=45)
    assert not load.errors
    (experiment,) = load.experiments
    assert (experiment.mode, experiment.statistics.ci_method, experiment.causal.harm_margin_bps) == ("shadow_only", "always_valid", 0.0)
    assert experiment.auto_promote_on_winning is False and experiment.caliper_seconds == 45


def test_plans_are_typed(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration(ci_method="group_sequential", planned_looks=4, planned_max_samples=2e3,
                                                 mde_bps=2, winsorize_pct=1, instrument="router_draw", harm_margin_bps=0.5))
    (experiment,) = load_declarations(tmp_path).experiments
    plan = experiment.statistics
    assert (plan.ci_method, plan.planned_looks, plan.planned_max_samples, plan.mde_bps, plan.winsorize_pct) == (
        "group_sequential", 4, 2000, 2.0, 1.0)
    assert isinstance(plan.planned_max_samples, int)
    assert (experiment.causal.instrument, experiment.causal.harm_margin_bps) == ("router_draw", 0.5)


def test_statistics_options_are_parsed(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration(
        "exp_a", ci_method="fixed_horizon", planned_max_samples=800, drift_margin_bps=0.5,
        non_inferiority_margins={"slippage_delta_bps": 1.0}, prior_mean_bps=0.5, prior_sd_bps=4,
        min_samples_for_decision=5))
    (tmp_path / "b.yaml").write_text(declaration("exp_b", adjust_for={"vol_bps": 12.0, "spread_z": None}))
    (tmp_path / "c.yaml").write_text(declaration("exp_c", adjust_for=["vol_bps"]))
    load = load_declarations(tmp_path)
    assert not load.errors
    a, b, c = sorted(load.experiments, key=lambda d: d.experiment_id)
    plan = a.statistics
    assert (plan.drift_margin_bps, dict(plan.non_inferiority_margins), plan.prior_mean_bps, plan.prior_sd_bps) == (
        0.5, {"slippage_delta_bps": 1.0}, 0.5, 4.0)
    assert a.min_samples_for_decision == 5  # a fixed-horizon design may plan a small exact t-test
    assert dict(b.statistics.adjust_for) == {"spread_z": None, "vol_bps": 12.0}
    assert dict(c.statistics.adjust_for) == {"vol_bps": None}


def test_new_plan_fields_leave_existing_contract_digests_unchanged(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration("exp_a"))
    (tmp_path / "b.yaml").write_text(declaration("exp_a", drift_margin_bps=0.5))
    plain = load_declarations(tmp_path).errors  # the same id twice: both rejected, parse them one by one
    assert plain
    a = read_declaration(tmp_path / "a.yaml")
    b = read_declaration(tmp_path / "b.yaml")
    assert "drift_margin_bps_micros" not in a.statistics.to_canonical()
    assert b.statistics.to_canonical()["drift_margin_bps_micros"] == 500_000
    assert a.contract.digest != b.contract.digest  # a declared margin is part of the contract


def test_model_floor_matches_the_statistics_floor():
    import experimenttracker_pipeline.stats as st
    from experimenttracker_pipeline.model.plans import ALWAYS_VALID_MIN_SAMPLES

    assert ALWAYS_VALID_MIN_SAMPLES == st.ALWAYS_VALID_MIN_SAMPLES

