"""EvalTrace export (spec 10) and persona views (spec 9.2)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.stages.governance.assignment import (
    AssignmentPlan,
    summarize,
)
from experimenttracker_pipeline.stages.governance.evaltrace import (
    build_eval_trace,
    render_persona,
)
from experimenttracker_pipeline.stages.verdict.surface import (
    decide,
    evaluate_stop_rules,
)

from experimenttracker_pipeline_tests.contract_fixtures import make_contract


def ci(est, lo, hi, n=500):
    return {"estimate": est, "ci_95_low": lo, "ci_95_high": hi, "n": n}


OUT = {"edge_delta_bps": ci(3.2, 1.1, 5.3), "slippage_delta_bps": ci(7.0, 6.0, 8.0),
       "fill_size_ratio": ci(1.0, 0.95, 1.05)}


def inputs(reverse=False):
    c = make_contract()
    plan = AssignmentPlan.from_contract(c)
    ids = [f"opp-{i}" for i in range(300)]
    asg = plan.assign_many(ids, market_ids=["us-election-2028" if i % 30 == 0 else "m" for i in range(300)])
    d = decide(c, OUT)
    fired = evaluate_stop_rules(c, elapsed=timedelta(days=3), decision=d)
    approvals = [
        {"approver": "alice", "role": "technical_lead", "contract_digest": c.digest, "approved_at": "2026-05-04T10:00:00Z"},
        {"approver": "bob", "role": "domain_expert", "contract_digest": "sha256:" + "0" * 64, "approved_at": "2026-05-01T10:00:00Z"},
    ]
    findings = [{"code": "ETH_FORCED_CONTROL", "count": 10}, {"code": "OTHER", "count": 1}]
    segs = [{"segment": "liquidity=low", "metric": "edge_delta_bps", "estimate": -2.5},
            {"segment": "hour=3", "metric": "edge_delta_bps", "estimate": -1.25}]
    hist = [{"at": "2026-05-05T00:00:00Z", "envelope_mode": "online", "share_bp": 500},
            {"at": "2026-05-07T00:00:00Z", "envelope_mode": "online", "share_bp": 1000}]
    signoffs = [{"approver": "carol", "report_id": "ops_1", "signed_at": "2026-05-09T00:00:00Z"}]
    if reverse:
        approvals, findings, segs, hist = approvals[::-1], findings[::-1], segs[::-1], hist[::-1]
    return c, dict(
        as_of="2026-05-10T00:00:00Z", outcomes=OUT, window="5d", decision=d,
        verdict={"event_type": "EXPERIMENT_RESULT", "samples": 500, "edge_delta_bps": 3.2,
                 "ci_95_low": 1.1, "ci_95_high": 5.3, "verdict": "variant_wins"},
        assignments=summarize(asg, plan), stop_rules_fired=fired, eth_findings=findings,
        harmed_segments=segs, approvals=approvals, signoffs=signoffs, polb_history=hist,
        bindings={"samples": {"id": "samples:exp_sports_v2@500", "digest": "sha256:" + "a" * 64}},
    )


def walk(o):
    if isinstance(o, dict):
        for v in o.values():
            yield from walk(v)
    elif isinstance(o, list):
        for v in o:
            yield from walk(v)
    else:
        yield o


def test_same_inputs_same_bytes_regardless_of_record_order(tmp_path):
    c, kw = inputs()
    t1 = build_eval_trace(c, **kw)
    c2, kw2 = inputs(reverse=True)
    t2 = build_eval_trace(c2, **kw2)
    assert t1.canonical_bytes == t2.canonical_bytes and t1.digest == t2.digest
    assert t1.digest == cj.digest_bytes(t1.canonical_bytes)
    t1.write(tmp_path / "a.json")
    t2.write(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    data = json.loads(t1.canonical_bytes)
    assert cj.canonical_json(data) == t1.canonical_bytes
    assert not any(isinstance(x, float) for x in walk(data))


def test_trace_content():
    c, kw = inputs()
    data = build_eval_trace(c, **kw).data
    assert data["bindings"]["experiment"] == {"id": "exp_sports_v2", "digest": c.digest}
    assert data["bindings"]["eval_surface"]["id"] == "eval:sports_execution/v1"
    assert data["as_of"] == {"time": "2026-05-10T00:00:00Z", "clock_profile": "si/clock-profile/utc/v1"}
    assert data["contract"] == c.to_canonical()
    assert data["outcomes"]["metrics"]["treatment"]["edge_delta_bps"]["estimate_micros"] == 3_200_000
    assert data["verdict"]["edge_delta_bps_micros"] == 3_200_000
    assert data["surface"]["winner"] is None
    assert data["ethics"]["violations_detected"] == ["EVAL_HARD_CONSTRAINT_VIOLATED:slippage_delta_bps<=5"]
    assert [f["reason_code"] for f in data["stop_rules_fired"]] == ["EVAL_STOP_HARM"]
    assert data["assignments"]["eth_forced_control_by_kind"] == {"market": 10}
    assert data["governance"]["flags"] == ["EXPERIMENT_UNAPPROVED"]
    assert [a["counts"] for a in data["governance"]["approvals"]] == [False, True]
    assert [h["share_bp"] for h in data["polb"]["history"]] == [500, 1000]


def test_changed_input_changes_digest():
    c, kw = inputs()
    base = build_eval_trace(c, **kw).digest
    assert build_eval_trace(c, **(kw | {"as_of": "2026-05-11T00:00:00Z"})).digest != base
    assert build_eval_trace(c, **(kw | {"approvals": []})).digest != base


def test_bad_binding_rejected():
    c, kw = inputs()
    with pytest.raises(ValueError):
        build_eval_trace(c, **(kw | {"bindings": {"x": {"id": "x", "digest": "md5:1"}}}))


def test_persona_views():
    c, kw = inputs()
    t = build_eval_trace(c, **kw)
    trader = render_persona(t, "trader")
    assert "broke one of its safety limits and will not be promoted" in trader
    assert "slippage difference at most 5 bps" in trader
    assert "Edge: +3.20 bps versus the current strategy (95% range +1.10 bps to +5.30 bps)" in trader
    assert "sha256" not in trader  # plain English, no hashes
    risk = render_persona(t, "risk")
    assert "| treatment | `slippage_delta_bps<=5` | violated | +7.00 bps | [+6.00 bps, +8.00 bps] |" in risk
    assert "liquidity=low" in risk and "EVAL_STOP_HARM" in risk and "us-election-2028" in risk
    gov = render_persona(t, "governance")
    assert t.digest in gov and c.digest in gov
    assert "EXPERIMENT_UNAPPROVED" in gov and "missing: domain_expert" in gov
    assert "no (other contract)" in gov
    # the same view from the exported bytes
    assert render_persona(t.canonical_bytes, "governance") == gov
    with pytest.raises(ValueError):
        render_persona(t, "ceo")


def test_trader_view_of_a_clean_win_uses_spec_wording():
    c = make_contract()
    good = {"edge_delta_bps": ci(3.2, 1.1, 5.3), "slippage_delta_bps": ci(0.5, -0.5, 1.5),
            "fill_size_ratio": ci(1.0, 0.95, 1.05)}
    t = build_eval_trace(c, as_of="2026-05-10T00:00:00Z", outcomes=good)
    text = render_persona(t, "trader")
    assert "The new strategy version performed better in testing and has been flagged for promotion review." in text
    assert "Fill size: 1.00x" in text
