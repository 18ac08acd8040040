"""Pairing rules and the sample hash chain, as pure functions."""

import random

import pytest

from experimenttracker_pipeline.stages.samples.pairing import (
    GENESIS_HASH,
    Candidate,
    build_sample_rows,
    edge_delta_bps,
    pair_limited_live,
    pair_shadow,
    verify_chain,
)


def cand(rid, t, *, key="k", market="m", edge=1.0, notional=100.0, **kw):
    return Candidate(report_id=rid, pair_key=key, market_id=market, recorded_at_ms=1_778_000_000_000 + t,
                     size_pusd=50.0, notional_pusd=notional, edge_pusd=edge, slippage_bps=2.0, **kw)


def test_edge_delta_uses_control_notional():
    assert edge_delta_bps(cand("v", 0, edge=3.0, notional=999.0), cand("c", 0, edge=1.0, notional=400.0)) == pytest.approx(50.0)


def test_shadow_pairs_on_pair_key_and_leaves_orphans():
    variants = [cand("v1", 10, key="a"), cand("v2", 20, key="b"), cand("v3", 30, key="zzz")]
    controls = [cand("c1", 0, key="a"), cand("c2", 5, key="b"), cand("c3", 6, key="only-control")]
    pairs = pair_shadow(variants, controls)
    assert [(p.variant.report_id, p.control.report_id) for p in pairs] == [("v1", "c1"), ("v2", "c2")]


def test_shadow_duplicate_pair_keys_pair_earliest_first():
    pairs = pair_shadow([cand("v2", 20, key="a"), cand("v1", 10, key="a")], [cand("c1", 0, key="a")])
    assert [(p.variant.report_id, p.control.report_id) for p in pairs] == [("v1", "c1")]


def test_limited_live_nearest_within_caliper_same_market_each_control_once():
    variants = [cand("v1", 0, market="m1"), cand("v2", 1_000, market="m1"), cand("v3", 0, market="m2")]
    controls = [cand("c_near", 500, market="m1"), cand("c_far", 59_000, market="m1"),
                cand("c_out", 200_000, market="m1"), cand("c_other", 10, market="m9")]
    pairs = pair_limited_live(variants, controls, caliper_ms=60_000)
    got = {p.variant.report_id: p.control.report_id for p in pairs}
    # v1 takes the nearest; v2 cannot reuse it and gets the next one within the caliper; v3 has no control in m2.
    assert got == {"v1": "c_near", "v2": "c_far"}


def test_limited_live_is_deterministic_under_input_order():
    rng = random.Random(3)
    variants = [cand(f"v{i}", rng.randint(0, 600_000), market=f"m{i % 3}") for i in range(200)]
    controls = [cand(f"c{i}", rng.randint(0, 600_000), market=f"m{i % 3}") for i in range(300)]
    first = pair_limited_live(variants, controls, caliper_ms=30_000)
    for _ in range(3):
        rng.shuffle(variants)
        rng.shuffle(controls)
        again = pair_limited_live(variants, controls, caliper_ms=30_000)
        assert [(p.variant.report_id, p.control.report_id) for p in again] == [(p.variant.report_id, p.control.report_id) for p in first]
    used = [p.control.report_id for p in first]
    assert len(used) == len(set(used))
    assert all(abs(p.variant.recorded_at_ms - p.control.recorded_at_ms) <= 30_000 for p in first)


def _rows(n=5):
    pairs = pair_shadow([cand(f"v{i}", i * 10, key=f"k{i}", edge=float(i)) for i in range(n)],
                        [cand(f"c{i}", i * 10, key=f"k{i}") for i in range(n)])
    return build_sample_rows("exp", pairs, first_n=1, prev_hash=GENESIS_HASH)


def test_chain_is_intact_and_continues_across_batches():
    rows = _rows(5)
    assert [r["sample_n"] for r in rows] == [1, 2, 3, 4, 5] and verify_chain(rows) is None
    more = build_sample_rows("exp", pair_shadow([cand("vx", 99, key="x")], [cand("cx", 99, key="x")]),
                             first_n=6, prev_hash=rows[-1]["sample_hash"])
    assert verify_chain(rows + more) is None


def test_chain_detects_change_removal_and_reordering():
    rows = _rows(5)
    changed = [dict(r) for r in rows]
    changed[2]["edge_delta_bps"] += 0.0001
    assert verify_chain(changed).sample_n == 3
    assert verify_chain(rows[:1] + rows[2:]).sample_n == 2
    swapped = rows[:2] + [rows[3], rows[2]] + rows[4:]
    assert verify_chain(swapped).sample_n == 3
    # A forged row with a recomputed hash still breaks the link to its successor.
    forged = [dict(r) for r in rows]
    forged[1]["edge_delta_bps"] = 123.0
    from experimenttracker_pipeline.stages.samples.pairing import sample_hash
    forged[1]["sample_hash"] = sample_hash(forged[1], forged[1]["prev_hash"])
    assert verify_chain(forged).sample_n == 3
