"""Promotion gate: spec 7 (split > 50 needs sign-off), 9 step 6 and the section 26 property test."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from experimenttracker_pipeline.stages.promotion.gate import (
    PromotionDecision,
    Signoff,
    audit_promotions,
    promotion_decision,
    signoff_required,
)

VERDICTS = ["variant_wins", "control_wins", "inconclusive", "insufficient_samples", "srm_blocked"]
T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


def decide(**overrides) -> PromotionDecision:
    args = dict(
        auto_promote_on_winning=True,
        require_human_signoff=True,
        traffic_split_pct=10,
        verdict="variant_wins",
        verdict_report_id="r2",
        signoffs=(),
    )
    args.update(overrides)
    return promotion_decision(**args)


# --------------------------------------------------------------------------- unit rules


def test_signoff_required():
    assert signoff_required(True, 10)
    assert not signoff_required(False, 10)
    assert not signoff_required(False, 50)
    assert signoff_required(False, 50.5)  # spec 7: > 50 requires a human sign-off


def test_auto_promote_blocked_without_signoff():
    d = decide()
    assert not d.promote and d.reason_code == "PROMOTION_AWAITING_SIGNOFF" and d.signoff_required


def test_signoff_of_this_report_promotes():
    s = Signoff("alice", T0, "r2", "variant_wins")
    d = decide(signoffs=[s])
    assert d.promote and d.signoff == s and d.reason_code == "PROMOTION_APPROVED_BY_SIGNOFF"


def test_signoff_of_an_earlier_report_does_not_carry_over():
    earlier = Signoff("alice", T0, "r1", "variant_wins")
    assert not decide(signoffs=[earlier]).promote


def test_signoff_must_match_the_verdict_and_name_an_approver():
    assert not decide(signoffs=[Signoff("alice", T0, "r2", "inconclusive")]).promote
    assert not decide(signoffs=[Signoff("  ", T0, "r2", "variant_wins")]).promote
    assert not decide(verdict_report_id=None, signoffs=[Signoff("alice", T0, "r2", "variant_wins")]).promote


def test_signoff_for_another_experiment_does_not_count():
    other = Signoff("alice", T0, "r2", "variant_wins", experiment_id="exp_other")
    assert not decide(signoffs=[other], experiment_id="exp_a").promote
    assert decide(signoffs=[other], experiment_id="exp_other").promote


@pytest.mark.parametrize("verdict", [v for v in VERDICTS if v != "variant_wins"])
def test_only_variant_wins_is_promoted(verdict):
    s = Signoff("alice", T0, "r2", verdict)
    d = decide(verdict=verdict, signoffs=[s], require_human_signoff=False)
    assert not d.promote and d.reason_code == "PROMOTION_NOT_WINNING"


def test_auto_promote_without_requirement():
    assert decide(require_human_signoff=False).promote
    assert decide(require_human_signoff=False).reason_code == "PROMOTION_AUTO"
    off = decide(require_human_signoff=False, auto_promote_on_winning=False)
    assert not off.promote and off.reason_code == "PROMOTION_AUTO_DISABLED"


def test_large_split_requires_signoff_even_when_flag_off():
    d = decide(require_human_signoff=False, traffic_split_pct=60)
    assert not d.promote and d.signoff_required
    assert decide(require_human_signoff=False, traffic_split_pct=60,
                  signoffs=[Signoff("bob", T0, "r2", "variant_wins")]).promote


def test_signoffs_as_mappings():
    rows = [{"approver": "carol", "signed_at": T0.isoformat(), "report_id": "r2", "verdict": "variant_wins"}]
    assert decide(signoffs=rows).promote


# --------------------------------------------------------------------------- audit


def test_audit_flags_promotion_without_signoff():
    promos = [
        {"promotion_id": 1, "experiment_id": "e1", "report_id": "r1", "verdict": "variant_wins", "promoted_at": T0},
        {"promotion_id": 2, "experiment_id": "e2", "report_id": "r9", "verdict": "variant_wins", "promoted_at": T0},
    ]
    signoffs = [Signoff("alice", T0 - timedelta(hours=1), "r1", "variant_wins", "e1")]
    configs = {"e1": {"require_human_signoff": True}, "e2": {"require_human_signoff": True}}
    v = audit_promotions(promos, signoffs, configs)
    assert [x.promotion_id for x in v] == [2]


def test_audit_sign_off_after_promotion_is_a_violation():
    promos = [{"experiment_id": "e1", "report_id": "r1", "verdict": "variant_wins", "promoted_at": T0}]
    late = [Signoff("alice", T0 + timedelta(minutes=5), "r1", "variant_wins", "e1")]
    assert len(audit_promotions(promos, late, {"e1": {"require_human_signoff": True}})) == 1
    on_time = [Signoff("alice", T0 - timedelta(minutes=5), "r1", "variant_wins", "e1")]
    assert audit_promotions(promos, on_time, {"e1": {"require_human_signoff": True}}) == []


def test_audit_fails_closed_and_checks_verdict():
    promo = {"experiment_id": "e1", "report_id": "r1", "verdict": "variant_wins"}
    # No config: the spec default (require_human_signoff=true) applies.
    assert len(audit_promotions([promo], [], {})) == 1
    # Auto-promotion allowed when configured and no sign-off is required.
    ok_cfg = {"e1": {"require_human_signoff": False, "auto_promote_on_winning": True, "traffic_split_pct": 10}}
    assert audit_promotions([promo], [], ok_cfg) == []
    # ... but not with a split above 50%.
    big = {"e1": {"require_human_signoff": False, "auto_promote_on_winning": True, "traffic_split_pct": 80}}
    assert len(audit_promotions([promo], [], big)) == 1
    # Never for a non-winning verdict.
    bad = {"experiment_id": "e1", "report_id": "r1", "verdict": "inconclusive"}
    assert len(audit_promotions([bad], [Signoff("a", T0, "r1", "inconclusive", "e1")], ok_cfg)) == 1


# --------------------------------------------------------------------------- property tests

configs = hs.fixed_dictionaries(
    {
        "auto_promote_on_winning": hs.booleans(),
        "require_human_signoff": hs.booleans(),
        "traffic_split_pct": hs.floats(min_value=0, max_value=100),
    }
)
# A verdict sequence: one report per evaluation; sign-offs arrive between evaluations and may
# name any report (past, current or future) with any verdict.
steps = hs.lists(
    hs.tuples(
        hs.sampled_from(VERDICTS),
        hs.lists(hs.tuples(hs.integers(min_value=0, max_value=12), hs.sampled_from(VERDICTS), hs.booleans()), max_size=3),
    ),
    min_size=1,
    max_size=12,
)


@given(config=configs, sequence=steps)
@settings(max_examples=300, deadline=None)
def test_property_no_promotion_without_matching_signoff_when_required(config, sequence):
    """Spec 26: with require_human_signoff=true, auto-promote never fires, whatever the verdicts."""
    signoffs: list[Signoff] = []
    promotions = []
    for i, (verdict, new_signoffs) in enumerate(sequence):
        for j, (report_idx, signed_verdict, named) in enumerate(new_signoffs):
            at = T0 + timedelta(seconds=10 * i + j)
            signoffs.append(Signoff("alice" if named else "", at, f"r{report_idx}", signed_verdict, "e1"))
        report_id = f"r{i}"
        d = promotion_decision(
            verdict=verdict, verdict_report_id=report_id, signoffs=list(signoffs), experiment_id="e1", **config
        )
        required = config["require_human_signoff"] or config["traffic_split_pct"] > 50
        matched = any(s.report_id == report_id and s.verdict == verdict and s.approver for s in signoffs)
        if d.promote:
            assert verdict == "variant_wins"
            if required:
                assert matched, "promoted without a sign-off of this exact report and verdict"
            else:
                assert matched or config["auto_promote_on_winning"]
            promotions.append({"experiment_id": "e1", "report_id": report_id, "verdict": verdict,
                               "promoted_at": T0 + timedelta(seconds=10 * i + 9)})
        else:
            # The gate is not over-strict: a winning, signed-off (or auto, unrequired) report goes through.
            assert not (verdict == "variant_wins" and (matched or (not required and config["auto_promote_on_winning"])))
        if config["require_human_signoff"]:
            assert d.reason_code != "PROMOTION_AUTO"
    cfg = {"e1": config}
    # Everything the gate allowed passes the blocking audit ...
    assert audit_promotions(promotions, signoffs, cfg) == []
    # ... and a forged promotion of a report nobody signed off is caught whenever sign-off is required.
    if config["require_human_signoff"] or config["traffic_split_pct"] > 50:
        forged = {"experiment_id": "e1", "report_id": "r_forged", "verdict": "variant_wins", "promoted_at": T0}
        assert len(audit_promotions(promotions + [forged], signoffs, cfg)) == 1


@given(verdict=hs.sampled_from(VERDICTS), split=hs.floats(min_value=0, max_value=100), auto=hs.booleans())
@settings(max_examples=100, deadline=None)
def test_property_required_signoff_blocks_auto_promote(verdict, split, auto):
    d = promotion_decision(
        auto_promote_on_winning=auto,
        require_human_signoff=True,
        traffic_split_pct=split,
        verdict=verdict,
        verdict_report_id="r1",
        signoffs=[Signoff("alice", T0, "r0", verdict)],  # a sign-off, but of another report
    )
    assert not d.promote


def test_declaration_disagreements_name_each_changed_column_and_a_broken_digest():
    import yaml

    from experimenttracker_pipeline.model.experiment import parse_experiment
    from experimenttracker_pipeline.stages.promotion.gate import (
        PROMOTION_DECLARATION_TAMPERED,
        declaration_disagreements,
    )
    from experimenttracker_pipeline_tests.builders import declaration

    experiment = parse_experiment(yaml.safe_load(declaration("exp_d", require_human_signoff=True)), "exp_d.yaml")
    row = experiment.to_row()
    assert declaration_disagreements(row, experiment.to_row()) == []
    changed = {**row, "require_human_signoff": False, "auto_promote_on_winning": True}
    assert declaration_disagreements(changed, experiment.to_row()) == [
        "auto_promote_on_winning is True but the stored declaration says False",
        "require_human_signoff is False but the stored declaration says True"]
    edited = {**row, "declaration_json": row["declaration_json"].replace('"desk:sports"', '"desk:other"')}
    assert declaration_disagreements(edited, experiment.to_row()) == [
        "the stored declaration does not match its declaration_sha256 digest"]
    assert declaration_disagreements({**row, "declaration_json": "{"}, None) == [
        "the stored declaration_json is not valid JSON"]
    decision = promotion_decision(auto_promote_on_winning=True, require_human_signoff=False, traffic_split_pct=10,
                                  verdict="variant_wins", verdict_report_id="r1",
                                  declaration_problems=["require_human_signoff is False but ..."])
    assert (decision.promote, decision.reason_code) == (False, PROMOTION_DECLARATION_TAMPERED)
