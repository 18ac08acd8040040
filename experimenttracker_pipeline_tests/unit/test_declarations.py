"""Experiment declarations: defaults from spec section 8, precise errors, bad files never block good ones."""

from pathlib import Path

import pytest

from experimenttracker_pipeline.model.declaration import (
    DeclarationError,
    load_declarations,
    parse_declaration,
)
from experimenttracker_pipeline_tests.builders import declaration


def test_defaults_follow_spec_section_8(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration(mode=None, traffic_split_pct=None, min_samples_for_decision=None))
    load = load_declarations(tmp_path)
    assert not load.errors
    (decl,) = load.declarations
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
])
def test_invalid_declarations_name_file_and_field(tmp_path: Path, overrides, field):
    (tmp_path / "bad.yaml").write_text(declaration("exp_bad", **overrides))
    (tmp_path / "good.yaml").write_text(declaration("exp_good"))
    load = load_declarations(tmp_path)
    assert [d.experiment_id for d in load.declarations] == ["exp_good"]
    (error,) = load.errors
    assert error.field == field and error.source.endswith("bad.yaml")
    assert "bad.yaml" in str(error) and field in str(error)


def test_duplicate_id_with_different_content_rejects_both(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration("exp_dup"))
    (tmp_path / "b.yaml").write_text(declaration("exp_dup", traffic_split_pct=20))
    (tmp_path / "c.yaml").write_text(declaration("exp_other"))
    load = load_declarations(tmp_path)
    assert [d.experiment_id for d in load.declarations] == ["exp_other"]
    assert {Path(e.source).name for e in load.errors} == {"a.yaml", "b.yaml"}


def test_identical_duplicate_loads_once(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(declaration("exp_dup"))
    (tmp_path / "b.yml").write_text(declaration("exp_dup"))
    load = load_declarations(tmp_path)
    assert len(load.declarations) == 1 and not load.errors


def test_yaml_syntax_error_and_non_mapping(tmp_path: Path):
    (tmp_path / "broken.yaml").write_text("experiment_id: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    load = load_declarations(tmp_path)
    assert not load.declarations and {e.field for e in load.errors} == {"<document>"}


def test_large_split_flag():
    decl = parse_declaration({"experiment_id": "e", "principal": "p", "variant_slug": "v", "control_slug": "c",
                              "traffic_split_pct": 60, "started_at": "2026-05-01T00:00:00Z"}, "x.yaml")
    assert decl.large_split
    with pytest.raises(DeclarationError):
        parse_declaration({"experiment_id": "e"}, "x.yaml")
