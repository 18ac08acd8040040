"""Governance: risk rubric (spec 18.2), reviewers (18.1), approvals pinned to the contract digest."""

from __future__ import annotations

from experimenttracker_pipeline.stages.governance.risk import (
    APPROVAL_STALE,
    RISK_ABOVE_POLB_MAX,
    UNAPPROVED,
    approval_status,
    assess_risk,
    evaluate_governance,
)

from experimenttracker_pipeline_tests.contract_fixtures import example_raw, make_contract, old_raw


def approve(contract_or_digest, *people):
    d = contract_or_digest if isinstance(contract_or_digest, str) else contract_or_digest.digest
    return [{"approver": who, "role": role, "contract_digest": d,
             "approved_at": f"2026-05-0{i + 1}T09:00:00Z"} for i, (who, role) in enumerate(people)]


def test_risk_levels_follow_the_rubric():
    raw = example_raw()
    raw["variants"]["treatment"]["policy"] = "sports-model-v2"  # a sandbox names its candidate policy
    sandbox = make_contract(raw | {"mode": "shadow_only"} | {
        "polb_config": {"envelope_mode": "sandbox", "max_population_share_bp": 1000}})
    r = assess_risk(sandbox)
    assert (r.level, r.score, r.required_reviewers) == ("low", 3, ("technical_lead",))

    shadow_old = assess_risk(make_contract(old_raw()))  # shadow 1 + finance 3 + no hard constraint 2
    assert (shadow_old.level, shadow_old.score) == ("medium", 6)
    assert dict(shadow_old.factors) == {"envelope_mode=shadow": 1, "domain=finance": 3, "no_hard_constraints": 2}
    assert shadow_old.required_reviewers == ("technical_lead", "domain_expert")

    online_example = assess_risk(make_contract())  # online 3 + finance 3, hard constraints present
    assert (online_example.level, online_example.score) == ("medium", 6)

    live_old = assess_risk(make_contract(old_raw(mode="limited_live", traffic_split_pct=30)))
    assert (live_old.level, live_old.score) == ("high", 10)
    assert live_old.required_reviewers == ("technical_lead", "domain_expert", "ethics_board", "legal")
    assert live_old.ethics_committee


def test_vulnerable_populations_raise_risk_and_require_ethics_board():
    raw = example_raw()
    raw["eval_surface"]["scope"] = {"domain": "sports_betting", "vulnerable_populations": ["retail_accounts"]}
    r = assess_risk(make_contract(raw))
    assert r.score == 3 + 3  # online + vulnerable (domain not in the high-risk list)
    assert r.level == "medium" and "ethics_board" in r.required_reviewers and r.ethics_committee


def test_unapproved_online_experiment_is_flagged_and_cannot_be_promoted():
    c = make_contract()
    g = evaluate_governance(c, [])
    assert not g.approved and g.missing_roles == ("technical_lead", "domain_expert")
    assert UNAPPROVED in g.flags and g.promotion_blocked
    partial = evaluate_governance(c, approve(c, ("alice", "technical_lead")))
    assert partial.missing_roles == ("domain_expert",) and UNAPPROVED in partial.flags


def test_shadow_experiment_without_approval_is_not_flagged():
    g = evaluate_governance(make_contract(old_raw()), [])
    assert not g.approved and UNAPPROVED not in g.flags and not g.promotion_blocked


def test_fully_approved_online_experiment_passes():
    c = make_contract()
    g = evaluate_governance(c, approve(c, ("alice", "technical_lead"), ("bob", "domain_expert")))
    assert g.approved and g.missing_roles == () and g.flags == () and not g.promotion_blocked
    assert approval_status(c.digest, g.risk, approve(c, ("alice", "technical_lead"), ("bob", "domain_expert"))) == (True, ())


def test_approval_of_an_old_contract_digest_does_not_count():
    old = make_contract()
    raw = example_raw()
    raw["eval_surface"]["constraints"]["hard"][0] = "slippage_delta_bps <= 8"  # loosened guardrail
    new = make_contract(raw)
    assert new.digest != old.digest
    approvals = approve(old, ("alice", "technical_lead"), ("bob", "domain_expert"))
    assert approval_status(old.digest, "medium", approvals) == (True, ())
    assert approval_status(new.digest, "medium", approvals) == (False, ("technical_lead", "domain_expert"))
    g = evaluate_governance(new, approvals)
    assert not g.approved and g.promotion_blocked
    assert UNAPPROVED in g.flags and APPROVAL_STALE in g.flags
    assert [a["counts"] for a in g.to_export()["approvals"]] == [False, False]
    # a fresh approval of the new digest by one role still leaves the other missing
    g2 = evaluate_governance(new, approvals + approve(new, ("alice", "technical_lead")))
    assert g2.missing_roles == ("domain_expert",) and APPROVAL_STALE not in g2.flags


def test_one_person_cannot_fill_two_roles():
    c = make_contract()
    same = approve(c, ("alice", "technical_lead"), ("alice", "domain_expert"))
    assert approval_status(c.digest, "medium", same) == (False, ("domain_expert",))
    # matching finds the assignment that works when a person holds several roles
    mixed = approve(c, ("alice", "technical_lead"), ("alice", "domain_expert"), ("bob", "technical_lead"))
    assert approval_status(c.digest, "medium", mixed) == (True, ())


def test_risk_above_polb_cap_is_flagged():
    raw = example_raw()
    raw["polb_config"]["max_risk_level"] = "low"
    c = make_contract(raw)
    g = evaluate_governance(c, approve(c, ("alice", "technical_lead"), ("bob", "domain_expert")))
    assert g.approved and RISK_ABOVE_POLB_MAX in g.flags and g.promotion_blocked
