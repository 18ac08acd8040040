"""Governance over the store (both databases): recorded contracts, approvals pinned to a contract digest,
the EXPERIMENT_UNAPPROVED flag, the append-only assignment log, and the deterministic EvalTrace / persona views."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
import yaml

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model.experiment import parse_experiment
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.governance import operations as gov
from experimenttracker_pipeline.stages.governance.assignment import bucket_of
from experimenttracker_pipeline.stages.governance.evaltrace import render_persona
from experimenttracker_pipeline.stages.governance.risk import APPROVAL_STALE, UNAPPROVED
from experimenttracker_pipeline_tests.builders import declaration
from experimenttracker_pipeline_tests.contract_fixtures import EXAMPLE_YAML
from experimenttracker_pipeline.stages.causal_effects.queries import insert_causal
from experimenttracker_pipeline.stages.declarations.queries import register_experiment
from experimenttracker_pipeline.stages.governance.queries import (
    approval_rows,
    assignment_rows,
    contract_rows,
    governance_event_times,
    insert_approval,
)
from experimenttracker_pipeline.stages.intervals.queries import insert_evaluation, latest_evaluation
from experimenttracker_pipeline.stages.verdict.queries import insert_verdict

EXP = "exp_sports_v2"  # EXAMPLE_YAML: limited_live, envelope online, medium risk (technical_lead + domain_expert)


def register(store, text: str, source: str = "experiments/exp.yaml"):
    experiment = parse_experiment(yaml.safe_load(text), source)
    assert register_experiment(store, experiment) == "new"
    return experiment


@pytest.fixture
def online(store):
    """The README's complete example (online, unapproved) registered in the store."""
    register(store, EXAMPLE_YAML)
    return store


def _rejects(store, sql: str, **params) -> None:
    with pytest.raises(sa.exc.DBAPIError) as info:
        with store.begin() as conn:
            conn.execute(sa.text(sql), params)
    assert "append-only" in str(info.value)


# ---- contracts ---------------------------------------------------------------------------------------
def test_contract_is_rebuilt_from_the_stored_declaration_and_recorded_once(online):
    experiment = parse_experiment(yaml.safe_load(EXAMPLE_YAML), "elsewhere.yaml")
    contract = gov.contract_for(online, EXP)
    assert contract.digest == experiment.contract.digest  # the file's contract, whatever the source path
    assert gov.record_contract(online, contract) is True
    assert gov.record_contract(online, contract) is False  # idempotent
    rows = contract_rows(online, EXP)
    assert len(rows) == 1
    assert rows[0]["contract_json"].encode() == contract.canonical_bytes
    assert cj.digest_bytes(rows[0]["contract_json"].encode()) == rows[0]["contract_digest"] == contract.digest
    assert rows[0]["risk_level"] == "medium"
    assert json.loads(rows[0]["required_roles"]) == ["technical_lead", "domain_expert"]
    _rejects(online, "UPDATE experiment_contracts SET risk_level = 'low'")
    _rejects(online, "DELETE FROM experiment_contracts")


def test_unknown_experiment_is_a_clear_error(store):
    for call in (lambda: gov.contract_for(store, "nope"), lambda: gov.governance_status(store, "nope"),
                 lambda: gov.assign_units(store, "nope", ["u1"]), lambda: gov.build_trace(store, "nope"),
                 lambda: gov.record_approval(store, "nope", "alice", "technical_lead")):
        with pytest.raises(gov.UnknownExperimentError, match="unknown experiment 'nope'"):
            call()


# ---- approvals and the unapproved flag -----------------------------------------------------------------
def test_approvals_of_an_old_contract_digest_do_not_count(online):
    # The declaration changed since these approvals were given: same experiment, other contract digest.
    old_raw = yaml.safe_load(EXAMPLE_YAML)
    old_raw["stop_rules"]["max_duration_days"] = 90
    old = parse_experiment(old_raw, "experiments/exp.yaml").contract
    current = gov.contract_for(online, EXP)
    assert old.digest != current.digest
    gov.record_contract(online, old)
    for who, role in (("alice", "technical_lead"), ("bob", "domain_expert")):
        insert_approval(online, {"experiment_id": EXP, "contract_digest": old.digest, "approver": who, "role": role,
                                "note": "approved the 90-day version"})

    status = gov.governance_status(online, EXP)
    assert status.contract_digest == current.digest
    assert not status.approved and status.missing_roles == ("technical_lead", "domain_expert")
    assert status.promotion_blocked and UNAPPROVED in status.flags and APPROVAL_STALE in status.flags
    assert len(status.approvals) == 2 and status.counted == ()
    trace = gov.build_trace(online, EXP)
    assert [a["counts"] for a in trace.data["governance"]["approvals"]] == [False, False]

    first = gov.record_approval(online, EXP, "alice", "technical_lead", note="re-approved")
    assert first.new and first.approval.contract_digest == current.digest
    assert first.status.missing_roles == ("domain_expert",) and first.status.promotion_blocked
    done = gov.record_approval(online, EXP, "bob", "domain_expert")
    assert done.status.approved and not done.status.promotion_blocked
    assert gov.flag_unapproved(online, EXP) is None  # approved: nothing to flag
    assert online.reports(EXP, UNAPPROVED) == []


def test_unapproved_online_experiment_is_flagged_once_per_digest_and_cannot_be_promoted(online):
    status = gov.governance_status(online, EXP)
    assert status.online and status.promotion_blocked and status.flags == (UNAPPROVED,)
    report = gov.flag_unapproved(online, EXP)
    assert report is not None and report["event_type"] == UNAPPROVED
    assert report["contract_digest"] == status.contract_digest
    assert report["missing_roles"] == ["technical_lead", "domain_expert"] and report["promotion_blocked"] is True
    assert report["topic"] == OPERATIONS_TOPIC
    assert gov.flag_unapproved(online, EXP) is None  # dedupe: once per contract digest
    stored = online.reports(EXP, UNAPPROVED)
    assert len(stored) == 1 and stored[0]["report_id"] == report["report_id"]
    assert online.scalar("SELECT severity FROM operations_reports WHERE dedupe_key = :k",
                         k=gov.unapproved_dedupe_key(EXP, status.contract_digest)) == "WARN"
    # One approval is not enough for a medium-risk experiment, and the same person cannot fill both roles.
    gov.record_approval(online, EXP, "alice", "technical_lead")
    gov.record_approval(online, EXP, "alice", "domain_expert")
    assert gov.governance_status(online, EXP).promotion_blocked


def test_shadow_experiment_is_not_flagged(store):
    register(store, declaration("exp_shadow"))
    status = gov.governance_status(store, "exp_shadow")
    assert not status.online and not status.promotion_blocked
    assert gov.flag_unapproved(store, "exp_shadow") is None


def test_limited_live_declaration_without_contract_sections_is_flagged(store):
    register(store, declaration("exp_ll", mode="limited_live"))
    assert gov.governance_status(store, "exp_ll").promotion_blocked
    assert gov.flag_unapproved(store, "exp_ll")["envelope_mode"] == "online"


def test_record_approval_validates_role_and_approver_and_is_append_only(online):
    with pytest.raises(gov.InvalidApprovalError, match="unknown role 'ceo'; expected one of technical_lead, "
                                                       "domain_expert, ethics_board, legal"):
        gov.record_approval(online, EXP, "alice", "ceo")
    for bad in ("", "   ", "al\nice"):
        with pytest.raises(gov.InvalidApprovalError, match="approver"):
            gov.record_approval(online, EXP, bad, "technical_lead")
    first = gov.record_approval(online, EXP, " alice ", "Technical_Lead")
    again = gov.record_approval(online, EXP, "alice", "technical_lead")
    assert first.new and not again.new
    assert first.approval.approver == "alice" and first.approval.role == "technical_lead"
    assert again.approval == first.approval
    assert len(approval_rows(online, EXP)) == 1
    _rejects(online, "UPDATE approvals SET role = 'legal'")
    _rejects(online, "DELETE FROM approvals")
    if online.dialect == "postgresql":
        _rejects(online, "TRUNCATE approvals")


# ---- assignment log --------------------------------------------------------------------------------------
def test_assignments_are_deterministic_and_logged_append_only(online):
    units = [f"opp-{i:06d}" for i in range(500)]
    markets = ["us-election-2028" if i % 100 == 7 else "mkt-1" for i in range(500)]
    first = gov.assign_units(online, EXP, units, market_ids=markets)
    second = gov.assign_units(online, EXP, units, market_ids=markets)
    assert first == second
    contract = gov.contract_for(online, EXP)
    for a in first:
        assert a.bucket == bucket_of(a.unit_id, EXP, "v1")
    forced = {a.unit_id: a.detail for a in first if a.reason == "eth_forced_control"}
    assert forced["opp-000042"] == "unit:opp-000042" and forced["opp-000007"] == "market:us-election-2028"
    assert all(a.variant == "control" for a in first if a.unit_id in forced)
    assert {a.variant for a in first} == {"control", "treatment"}

    rows = assignment_rows(online, EXP, "opp-000042")
    assert [(r["variant"], r["reason"], r["detail"], r["contract_digest"]) for r in rows] == \
        [("control", "eth_forced_control", "unit:opp-000042", contract.digest)] * 2
    assert online.scalar("SELECT COUNT(*) FROM assignments WHERE experiment_id = :e", e=EXP) == 1000
    assert gov.assign_units(online, EXP, ["x1", "x2"], log=False)
    assert online.scalar("SELECT COUNT(*) FROM assignments") == 1000  # --no-log writes nothing

    _rejects(online, "UPDATE assignments SET variant = 'treatment' WHERE unit_id = 'opp-000042'")
    _rejects(online, "DELETE FROM assignments WHERE unit_id = 'opp-000042'")
    if online.dialect == "postgresql":
        _rejects(online, "TRUNCATE assignments")
    assert online.scalar("SELECT COUNT(*) FROM assignments") == 1000

    summary = gov.build_trace(online, EXP).data["assignments"]
    assert summary["total"] == 1000 and sum(summary["by_variant"].values()) == 1000
    assert summary["by_reason"]["eth_forced_control"] == 2 * len(forced)
    assert summary["eth_forced_control_by_kind"] == {"market": 2 * (len(forced) - 1), "unit": 2}
    assert summary["contract_digest"] == contract.digest and summary["logged_under_other_contracts"] == 0


# ---- EvalTrace ------------------------------------------------------------------------------------------
def _add_evidence(store) -> None:
    """An evaluation, a causal estimate with a harmed segment and a fired stop rule, as the verdict stage writes them."""
    insert_evaluation(store, EXP, {
        "samples": 250, "verdict": "variant_wins", "ci_method": "always_valid", "ci_95_low": 0.8, "ci_95_high": 3.1,
        "fixed_ci_95_low": 1.0, "fixed_ci_95_high": 2.9, "edge_delta_bps": 1.95, "p_value": 0.001, "power": 0.9,
        "drift_signalled": False,
        "metrics": {"edge_delta_bps": {"estimate": 1.95, "ci_95_low": 0.8, "ci_95_high": 3.1, "n": 250},
                    "slippage_delta_bps": {"estimate": 6.5, "ci_95_low": 5.5, "ci_95_high": 7.5, "n": 250}}})
    insert_causal(store, EXP, 250, 500, {
        "harmed_segments": ["sport=tennis"],
        "segments": [{"covariate": "sport", "value": "tennis", "n": 40, "estimate_bps": -7.25, "ci_95_low": -11.5,
                      "ci_95_high": -3.0, "harmed": True},
                     {"covariate": "sport", "value": "golf", "n": 60, "estimate_bps": 1.5, "ci_95_low": -1.0,
                      "ci_95_high": 4.0, "harmed": False}]})
    with store.begin() as conn:
        store.emit_report(conn, event_type="EVAL_STOP_HARM", severity="WARN", dedupe_key=f"EVAL_STOP_HARM:{EXP}:1",
                          experiment_id=EXP, topic=OPERATIONS_TOPIC,
                          payload={"rule": "harm", "action": "stop", "message": "Harm detected: stopping regardless of statistics.",
                                   "detail": ["EVAL_HARD_CONSTRAINT_VIOLATED:slippage_delta_bps<=5"]})
        store.emit_report(conn, event_type="EVAL_EARLY_STOP_HELD_MIN_DURATION", severity="INFO",
                          dedupe_key=f"held:{EXP}", experiment_id=EXP, topic=OPERATIONS_TOPIC, payload={"rule": "min_duration"})


def test_trace_exported_twice_gives_the_same_bytes_and_digest(online, tmp_path):
    gov.assign_units(online, EXP, [f"u{i}" for i in range(50)])
    gov.record_approval(online, EXP, "alice", "technical_lead")
    _add_evidence(online)
    first = gov.build_trace(online, EXP)
    time.sleep(0.02)  # the wall clock moves; the trace must not
    second = gov.build_trace(online, EXP)
    assert first.canonical_bytes == second.canonical_bytes and first.digest == second.digest
    first.write(tmp_path / "a.json")
    second.write(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes() == cj.canonical_json(first.data)
    assert first.digest == cj.digest_bytes((tmp_path / "a.json").read_bytes())

    data = first.data
    latest = max(cj.parse_timestamp(cj.stored_timestamp(v)) for v in governance_event_times(online, EXP).values() if v is not None)
    assert cj.parse_timestamp(data["as_of"]["time"]) == latest and data["created_at"] == data["as_of"]["time"]
    assert data["bindings"]["experiment"] == {"id": EXP, "digest": gov.contract_for(online, EXP).digest}
    assert set(data["bindings"]) >= {"experiment", "eval_surface", "evaluation", "causal"}
    # Outcomes from the latest evaluation: slippage CI entirely above its hard limit of 5 bps -> not a winner.
    assert data["outcomes"]["metrics"]["treatment"]["slippage_delta_bps"]["ci_95_low_micros"] == 5_500_000
    treatment = data["surface"]["variants"][0]
    assert treatment["verdict"] == "guardrail_violated" and not treatment["winner"]
    assert "EVAL_HARD_CONSTRAINT_VIOLATED:slippage_delta_bps<=5" in treatment["reason_codes"]
    assert data["verdict"]["verdict"] == "variant_wins" and data["verdict"]["edge_delta_bps_micros"] == 1_950_000
    assert [f["reason_code"] for f in data["stop_rules_fired"]] == ["EVAL_STOP_HARM"]
    assert data["ethics"]["harmed_segments"] == [{
        "segment": "sport=tennis", "covariate": "sport", "value": "tennis", "n": 40, "estimate_bps_micros": -7_250_000,
        "ci_95_low_micros": -11_500_000, "ci_95_high_micros": -3_000_000}]
    assert data["assignments"]["total"] == 50
    assert [h["event"] for h in data["polb"]["history"]] == ["experiment_started", "contract_recorded", "status"]

    # A new event moves as_of and changes the bytes.
    gov.record_approval(online, EXP, "bob", "domain_expert")
    third = gov.build_trace(online, EXP)
    assert third.digest != first.digest and third.data["governance"]["approved"]


def test_persona_views_render(online):
    _add_evidence(online)
    views = gov.persona_views(online, EXP)
    trace = gov.build_trace(online, EXP)
    assert views == {p: render_persona(trace, p) for p in ("trader", "risk", "governance")}
    assert gov.persona_view(online, EXP, "trader") == views["trader"]
    assert "broke one of its safety limits" in views["trader"]
    assert "Promotion is blocked until the experiment is approved" in views["trader"]
    assert "sport=tennis" in views["risk"] and "EVAL_STOP_HARM" in views["risk"]
    assert trace.digest in views["governance"] and "Approved: NO" in views["governance"]
    with pytest.raises(gov.GovernanceError, match="unknown persona"):
        gov.persona_view(online, EXP, "ceo")


def test_trace_of_a_fresh_experiment_has_no_outcomes(store):
    register(store, declaration("exp_new"))
    data = gov.build_trace(store, "exp_new").data
    assert data["outcomes"]["metrics"] == {} and data["verdict"] is None and data["surface"] is None
    assert data["assignments"]["total"] == 0
    assert "still collecting data" in gov.persona_view(store, "exp_new", "trader")



def test_final_verdict_row_governs_the_surface(online):
    # The look says variant_wins on the paired CI; the final verdict (e.g. on the AIPW basis) is inconclusive.
    _add_evidence(online)
    evaluation_id = latest_evaluation(online, EXP)["id"]
    with online.begin() as conn:
        insert_verdict(conn, {
            "experiment_id": EXP, "evaluation_id": evaluation_id, "causal_id": None, "samples": 250,
            "verdict": "inconclusive", "basis": "aipw_always_valid", "ci_95_low": -0.5, "ci_95_high": 3.25,
            "edge_delta_bps": 1.25, "drift": False, "report_id": None,
            "verdict_json": json.dumps({"verdict": "inconclusive", "basis": "aipw_always_valid",
                                        "reason_codes": ["EXPERIMENT_RESULT"], "plain_english": "No clear difference."})})
    data = gov.build_trace(online, EXP).data
    assert data["verdict"]["source"] == "experiment_verdicts" and data["verdict"]["verdict"] == "inconclusive"
    assert data["verdict"]["reason_codes"] == ["EXPERIMENT_RESULT"]
    edge = data["outcomes"]["metrics"]["treatment"]["edge_delta_bps"]
    assert (edge["estimate_micros"], edge["ci_95_low_micros"], edge["ci_95_high_micros"]) == (1_250_000, -500_000, 3_250_000)
    treatment = data["surface"]["variants"][0]
    assert treatment["stat_verdict"] == "inconclusive" and not treatment["winner"]
    assert {"verdict", "evaluation", "causal"} <= set(data["bindings"])
