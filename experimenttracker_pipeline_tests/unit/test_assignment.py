"""Deterministic variant assignment (spec 7.2, 17.1): determinism, shares, ETH forcing."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from experimenttracker_pipeline.stages.governance.assignment import (
    REASON_ASSIGNED,
    REASON_ETH_FORCED_CONTROL,
    AssignmentPlan,
    assign,
    bucket_of,
    summarize,
)

from experimenttracker_pipeline_tests.contract_fixtures import example_raw, make_contract, old_raw


def three_way():
    raw = example_raw()
    raw["traffic_split_pct"] = 30
    raw["polb_config"]["max_population_share_bp"] = 3000
    raw["variants"] = {"control": {"traffic_share_bp": 7000},
                       "b_fast": {"slug": "sports-model-v2", "traffic_share_bp": 2000},
                       "a_slow": {"slug": "sports-model-v3", "traffic_share_bp": 1000}}
    return make_contract(raw)


def test_bucket_is_the_portable_spec_formula():
    key = "opp-123:exp_sports_v2:v1".encode()
    expected = int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % 10000
    assert bucket_of("opp-123", "exp_sports_v2", "v1") == expected
    c = make_contract()
    a = assign(c, "opp-123")
    assert a.bucket == expected
    assert a.variant == ("control" if expected < 9000 else "treatment")


def test_assignment_is_deterministic_and_batch_equals_single():
    c = three_way()
    ids = [f"opp-{i}" for i in range(2000)]
    p1, p2 = AssignmentPlan.from_contract(c), AssignmentPlan.from_contract(three_way())
    batch = p1.assign_many(ids)
    assert batch == p2.assign_many(ids)
    assert batch == [p1.assign(u) for u in ids]
    # variant order is control, then ids sorted: a_slow takes 7000..7999, b_fast 8000..9999
    for a in batch:
        want = "control" if a.bucket < 7000 else "a_slow" if a.bucket < 8000 else "b_fast"
        assert a.variant == want and a.reason == REASON_ASSIGNED


def test_yaml_variant_order_does_not_change_assignment():
    c1 = three_way()
    raw = example_raw()
    raw["traffic_split_pct"] = 30
    raw["polb_config"]["max_population_share_bp"] = 3000
    raw["variants"] = {"a_slow": {"slug": "sports-model-v3", "traffic_share_bp": 1000},
                       "b_fast": {"slug": "sports-model-v2", "traffic_share_bp": 2000},
                       "control": {"traffic_share_bp": 7000}}
    c2 = make_contract(raw)
    assert c1.digest == c2.digest
    ids = [f"u{i}" for i in range(500)]
    assert AssignmentPlan.from_contract(c1).assign_many(ids) == AssignmentPlan.from_contract(c2).assign_many(ids)


def test_salt_rerandomises():
    raw = example_raw()
    raw["assignment"]["salt"] = "v2"
    ids = [f"u{i}" for i in range(200)]
    b1 = [a.bucket for a in AssignmentPlan.from_contract(make_contract()).assign_many(ids)]
    b2 = [a.bucket for a in AssignmentPlan.from_contract(make_contract(raw)).assign_many(ids)]
    assert sum(x == y for x, y in zip(b1, b2)) < 10


def test_shares_honoured_within_sampling_error_chi_square_100k():
    c = three_way()
    plan = AssignmentPlan.from_contract(c)
    n = 100_000
    summary = summarize(plan.assign_many([f"opportunity:{i}" for i in range(n)]), plan)
    observed = [summary["by_variant"][v] for v in ("control", "a_slow", "b_fast")]
    expected = [n * 0.7, n * 0.1, n * 0.2]
    stat, p = chisquare(observed, expected)
    assert p > 0.001, (observed, stat, p)
    assert summary["total"] == n and summary["by_reason"] == {"assigned": n}
    assert summary["randomization_seed_digest"].startswith("sha256:")


def test_default_split_shares_chi_square():
    plan = AssignmentPlan.from_contract(make_contract(old_raw(traffic_split_pct=10)))
    res = plan.assign_many([str(i) for i in range(100_000)])
    k = sum(a.variant == "variant" for a in res)
    assert chisquare([100_000 - k, k], [90_000, 10_000]).pvalue > 0.001


def test_zero_share_variant_never_assigned():
    plan = AssignmentPlan("e", "s", [("control", 10000), ("variant", 0)])
    assert {a.variant for a in plan.assign_many([f"x{i}" for i in range(3000)])} == {"control"}


def test_forced_control_is_logged_with_reason():
    c = make_contract()
    plan = AssignmentPlan.from_contract(c)
    a = plan.assign("opp-77", market_id="us-election-2028")
    assert (a.variant, a.reason, a.detail) == ("control", REASON_ETH_FORCED_CONTROL, "market:us-election-2028")
    b = plan.assign("opp-000042")
    assert (b.variant, b.reason, b.detail) == ("control", REASON_ETH_FORCED_CONTROL, "unit:opp-000042")
    d = plan.assign("opp-9", principal_id="fund:pension-a")
    assert d.detail == "principal:fund:pension-a"
    rec = a.to_record(c.experiment_id, c.digest)
    assert rec == {"experiment_id": "exp_sports_v2", "contract_digest": c.digest, "unit_id": "opp-77",
                   "variant": "control", "bucket": a.bucket, "reason": "eth_forced_control",
                   "detail": "market:us-election-2028"}
    s = summarize([a, b, d, plan.assign("free")])
    assert s["eth_forced_control_by_kind"] == {"market": 1, "principal": 1, "unit": 1}


def test_bad_inputs_rejected():
    plan = AssignmentPlan.from_contract(make_contract())
    with pytest.raises(ValueError):
        plan.assign("")
    with pytest.raises(ValueError):
        plan.assign_many(["a", "b"], market_ids=["m"])
    with pytest.raises(ValueError):
        AssignmentPlan("e", "s", [("control", 9000), ("v", 999)])


_ID = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-:_", min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    units=st.lists(st.tuples(_ID, st.sampled_from(["m1", "m2", "m3", "m4"]),
                             st.sampled_from(["fund:a", "fund:b", "desk:c"])), min_size=1, max_size=40),
    forbid_markets=st.sets(st.sampled_from(["m1", "m2", "m3", "m4"])),
    forbid_principals=st.sets(st.sampled_from(["fund:a", "fund:b", "desk:c"])),
    forbid_units=st.sets(_ID, max_size=5),
    share=st.integers(min_value=1, max_value=10000),  # traffic_split_pct must be in (0, 100]
)
def test_forbidden_unit_never_assigned_to_a_variant(units, forbid_markets, forbid_principals,
                                                    forbid_units, share):
    raw = old_raw(mode="limited_live", traffic_split_pct=share / 100)
    raw["eth_constraints"] = {"forbid": [f"market:{m}" for m in sorted(forbid_markets)]
                              + [f"principal:{p}" for p in sorted(forbid_principals)]
                              + [f"unit:{u}" for u in sorted(forbid_units)]}
    plan = AssignmentPlan.from_contract(make_contract(raw))
    ids = [u for u, _, _ in units]
    markets = [m for _, m, _ in units]
    principals = [p for _, _, p in units]
    batch = plan.assign_many(ids, market_ids=markets, principal_ids=principals)
    for (uid, m, p), a in zip(units, batch):
        forbidden = uid in forbid_units or m in forbid_markets or p in forbid_principals
        if forbidden:
            assert a.variant == "control" and a.reason == REASON_ETH_FORCED_CONTROL and a.detail
        else:
            assert a.reason == REASON_ASSIGNED
        assert a == plan.assign(uid, market_id=m, principal_id=p)
