"""Decisions on the goal surface (guardrails, soft penalties, Pareto, ranking) and stop rules."""

from __future__ import annotations

from datetime import timedelta

import pytest

from experimenttracker_pipeline.stages.verdict.surface import (
    HARD_NO_DATA,
    HARD_UNRESOLVED,
    HARD_VIOLATED,
    HELD_GUARDRAIL,
    HELD_MIN_DURATION,
    INSUFFICIENT,
    SOFT_VIOLATED,
    STOP_EFFICACY,
    STOP_FUTILITY,
    STOP_HARM,
    STOP_MAX_DURATION,
    WINNER_BLOCKED,
    decide,
    evaluate_stop_rules,
    should_stop,
)

from experimenttracker_pipeline_tests.contract_fixtures import example_raw, make_contract


def ci(est, lo, hi, n=500):
    return {"estimate": est, "ci_95_low": lo, "ci_95_high": hi, "n": n}


GOOD = {"edge_delta_bps": ci(3.2, 1.1, 5.3), "slippage_delta_bps": ci(0.5, -0.5, 1.5),
        "fill_size_ratio": ci(1.0, 0.95, 1.05), "fill_quality_delta": ci(0.01, 0.0, 0.02)}


def test_clean_winner():
    d = decide(make_contract(), GOOD)
    v = d.variant("treatment")
    assert (v.stat_verdict, v.verdict, v.feasibility, v.winner) == ("variant_wins", "variant_wins", "feasible", True)
    assert d.winner == "treatment" and d.ranking == ("treatment", "control") and not d.harm
    assert v.reason_codes == ()
    # score = 1.0 * 3.2 - 0.2 * 0.5 + 0.1 * 0.01
    assert v.score == pytest.approx(3.2 - 0.1 + 0.001)


def test_hard_guardrail_breach_blocks_a_winner():
    out = GOOD | {"slippage_delta_bps": ci(7.0, 6.0, 8.0)}
    d = decide(make_contract(), out)
    v = d.variant("treatment")
    assert v.stat_verdict == "variant_wins"  # it wins on edge ...
    assert v.verdict == "guardrail_violated" and not v.winner and d.winner is None  # ... but not on the surface
    assert "EVAL_HARD_CONSTRAINT_VIOLATED:slippage_delta_bps<=5" in v.reason_codes
    assert WINNER_BLOCKED in v.reason_codes
    assert d.harm and d.harm_reasons == ("EVAL_HARD_CONSTRAINT_VIOLATED:slippage_delta_bps<=5",)
    assert d.ranking == ("control", "treatment")  # infeasible ranks last whatever its score


def test_guardrail_not_shown_to_hold_blocks_without_harm():
    out = GOOD | {"slippage_delta_bps": ci(3.0, 0.5, 5.5)}  # CI straddles 5
    d = decide(make_contract(), out)
    v = d.variant("treatment")
    assert v.verdict == "blocked_by_guardrail" and v.feasibility == "unresolved" and not d.harm
    assert f"{HARD_UNRESOLVED}:slippage_delta_bps<=5" in v.reason_codes and d.winner is None
    missing = {k: x for k, x in GOOD.items() if k != "fill_size_ratio"}
    v2 = decide(make_contract(), missing).variant("treatment")
    assert f"{HARD_NO_DATA}:fill_size_ratio>=0.8" in v2.reason_codes and not v2.winner


@pytest.mark.parametrize("expr,lo,hi,status", [
    ("slippage_delta_bps < 5", 4.0, 4.9, "holds"), ("slippage_delta_bps < 5", 5.0, 6.0, "violated"),
    ("slippage_delta_bps <= 5", 4.0, 5.0, "holds"), ("slippage_delta_bps <= 5", 5.0, 6.0, "unresolved"),
    ("edge_delta_bps >= 0", 0.0, 1.0, "holds"), ("edge_delta_bps >= 0", -2.0, -0.1, "violated"),
    ("edge_delta_bps > 0", 0.0, 1.0, "unresolved"), ("edge_delta_bps > 0", -1.0, 0.0, "violated"),
])
def test_hard_constraint_operators_against_the_ci(expr, lo, hi, status):
    raw = example_raw()
    raw["eval_surface"]["constraints"] = {"hard": [expr]}
    metric = expr.split()[0]
    d = decide(make_contract(raw), {"edge_delta_bps": ci(3, 1, 5)} | {metric: ci((lo + hi) / 2, lo, hi)})
    assert d.variants[0].hard[0].status == status


def test_soft_violation_lowers_score_but_never_blocks():
    out = GOOD | {"fill_quality_delta": ci(-0.01, -0.02, 0.0), "slippage_delta_bps": ci(3.0, 2.0, 4.0)}
    v = decide(make_contract(), out).variant("treatment")
    assert v.winner and v.penalty_bp == 500 + 10000
    assert f"{SOFT_VIOLATED}:fill_quality_delta>=0" in v.reason_codes
    assert f"{SOFT_VIOLATED}:slippage_delta_bps<=2" in v.reason_codes
    assert v.score == pytest.approx(3.2 - 0.2 * 3.0 + 0.1 * -0.01 - 1.05)


def test_insufficient_samples():
    out = {k: ci(x["estimate"], x["ci_95_low"], x["ci_95_high"], n=20) for k, x in GOOD.items()}
    v = decide(make_contract(), out).variant("treatment")
    assert v.verdict == "insufficient_samples" and INSUFFICIENT in v.reason_codes and not v.winner


def test_verdict_rule_overrides_derived_statistics():
    d = decide(make_contract(), GOOD, stat_verdicts={"treatment": "inconclusive"})
    assert d.winner is None and d.variant("treatment").verdict == "inconclusive"


def test_pareto_set_and_ranking_with_several_variants():
    raw = example_raw()
    raw["traffic_split_pct"] = 30
    raw["polb_config"]["max_population_share_bp"] = 3000
    raw["eval_surface"]["constraints"] = {"hard": ["slippage_delta_bps <= 5"]}
    raw["eval_surface"]["objectives"] = {"primary": [{"name": "edge_delta_bps", "weight_bp": 10000}],
                                         "secondary": [{"name": "slippage_delta_bps", "weight_bp": -5000}]}
    raw["variants"] = {"control": {"traffic_share_bp": 7000},
                       "a": {"slug": "sports-model-v2", "traffic_share_bp": 1000},
                       "b": {"slug": "sports-model-v3", "traffic_share_bp": 1000},
                       "c": {"slug": "sports-model-v4", "traffic_share_bp": 1000}}
    c = make_contract(raw)
    out = {
        "a": {"edge_delta_bps": ci(4.0, 2.0, 6.0), "slippage_delta_bps": ci(2.0, 1.0, 3.0)},   # score 3.0
        "b": {"edge_delta_bps": ci(3.0, 1.0, 5.0), "slippage_delta_bps": ci(2.5, 1.5, 3.5)},   # dominated by a
        "c": {"edge_delta_bps": ci(2.0, 0.5, 3.5), "slippage_delta_bps": ci(-1.0, -2.0, 0.0)},  # score 2.5
    }
    d = decide(c, out)
    assert d.pareto_set == ("a", "c")  # control (0,0) is dominated by c; b is dominated by a
    assert d.ranking == ("a", "c", "b", "control")
    assert d.winner == "a"
    # a breaks the guardrail: it drops out of the Pareto set and the win passes to c
    out["a"]["slippage_delta_bps"] = ci(6.0, 5.5, 6.5)
    d2 = decide(c, out)
    assert d2.winner == "c" and d2.ranking[-1] == "a" and "a" not in d2.pareto_set


def test_outcomes_for_unknown_variant_rejected():
    with pytest.raises(ValueError):
        decide(make_contract(), {"nope": GOOD})


# -- stop rules -------------------------------------------------------------------------------

C = make_contract()  # min 7 days, max 60, band +-0.5, min conditional power 1000 bp


def codes(fired):
    return [f.reason_code for f in fired]


def test_nothing_fires_on_an_ordinary_day():
    assert evaluate_stop_rules(C, elapsed=timedelta(days=10)) == []


def test_efficacy_fires_after_min_duration():
    fired = evaluate_stop_rules(C, elapsed=timedelta(days=8), efficacy_boundary_crossed=True,
                                decision=decide(C, GOOD))
    assert codes(fired) == [STOP_EFFICACY] and should_stop(fired)
    assert fired[0].detail == ("treatment",)
    rep = fired[0].to_report("exp_sports_v2")
    assert rep["event_type"] == STOP_EFFICACY and rep["action"] == "stop"


def test_min_duration_blocks_early_stop():
    fired = evaluate_stop_rules(C, elapsed=timedelta(days=2), efficacy_boundary_crossed=True, futile=True)
    assert codes(fired) == [HELD_MIN_DURATION] and not should_stop(fired)
    assert fired[0].detail == ("efficacy", "futility")


def test_efficacy_held_while_a_guardrail_is_not_shown_to_hold():
    d = decide(C, GOOD | {"slippage_delta_bps": ci(3.0, 0.5, 5.5)})
    fired = evaluate_stop_rules(C, elapsed=timedelta(days=20), efficacy_boundary_crossed=True, decision=d)
    assert codes(fired) == [HELD_GUARDRAIL] and not should_stop(fired)


@pytest.mark.parametrize("kwargs,why", [
    ({"futile": True}, "futile"),
    ({"conditional_power_bp": 400}, "conditional_power_bp=400<1000"),
    ({"primary_ci": ci(0.1, -0.3, 0.4)}, "ci_inside_no_effect_band:edge_delta_bps+-0.5"),
])
def test_futility_fires(kwargs, why):
    fired = evaluate_stop_rules(C, elapsed=timedelta(days=9), **kwargs)
    assert codes(fired) == [STOP_FUTILITY] and why in fired[0].detail


def test_futility_not_fired_when_ci_leaves_band_or_power_ok():
    assert evaluate_stop_rules(C, elapsed=timedelta(days=9), primary_ci=ci(0.1, -0.6, 0.4),
                               conditional_power_bp=5000) == []


def test_futility_derived_from_decision_ci():
    d = decide(C, GOOD | {"edge_delta_bps": ci(0.0, -0.2, 0.2)})
    assert codes(evaluate_stop_rules(C, elapsed=timedelta(days=9), decision=d)) == [STOP_FUTILITY]


def test_harm_overrides_statistics_and_min_duration():
    fired = evaluate_stop_rules(C, elapsed=timedelta(hours=3), harm=True, harm_reasons=["HARMED_SEGMENT:liquidity=low"])
    assert codes(fired) == [STOP_HARM] and should_stop(fired)
    assert fired[0].detail == ("HARMED_SEGMENT:liquidity=low",)
    d = decide(C, GOOD | {"slippage_delta_bps": ci(7.0, 6.0, 8.0)})
    fired2 = evaluate_stop_rules(C, elapsed=0, decision=d)
    assert codes(fired2) == [STOP_HARM]
    assert fired2[0].detail == ("EVAL_HARD_CONSTRAINT_VIOLATED:slippage_delta_bps<=5",)


def test_max_duration_fires():
    fired = evaluate_stop_rules(C, elapsed=timedelta(days=60))
    assert codes(fired) == [STOP_MAX_DURATION]
    assert evaluate_stop_rules(C, elapsed=59.9 * 86400) == []


def test_early_stop_kinds_can_be_switched_off_except_harm():
    raw = example_raw()
    raw["stop_rules"]["early_stop_on"] = ["harm"]
    c = make_contract(raw)
    assert evaluate_stop_rules(c, elapsed=timedelta(days=30), efficacy_boundary_crossed=True, futile=True) == []
    assert codes(evaluate_stop_rules(c, elapsed=timedelta(days=30), harm=True)) == [STOP_HARM]


def test_harm_and_max_duration_together_most_severe_first():
    fired = evaluate_stop_rules(C, elapsed=timedelta(days=61), harm=True, efficacy_boundary_crossed=True)
    assert codes(fired) == [STOP_HARM, STOP_EFFICACY, STOP_MAX_DURATION]
    assert HARD_VIOLATED not in codes(fired)


# -- family-wise control across primary metrics and treatments ---------------------------------

def _two_primaries():
    raw = example_raw()
    raw["eval_surface"]["objectives"] = {"primary": [{"name": "edge_delta_bps", "weight_bp": 10000},
                                                     {"name": "fill_quality_delta", "weight_bp": 5000}]}
    raw["eval_surface"]["constraints"] = {}
    return make_contract(raw)


def pci(est, lo, hi, p, n=500):
    return {"estimate": est, "ci_95_low": lo, "ci_95_high": hi, "n": n, "p_value": p}


def test_one_primary_excluding_neutral_is_not_enough_with_two():
    # Each CI is a 95% interval; with two primary metrics Holm needs p <= 0.025 for the first rejection.
    c = _two_primaries()
    marginal = {"edge_delta_bps": pci(1.0, 0.05, 1.95, 0.04), "fill_quality_delta": pci(0.0, -0.01, 0.01, 0.9)}
    d = decide(c, marginal)
    v = d.variant("treatment")
    assert v.stat_verdict == "inconclusive"  # the old rule: "any primary excludes neutral" -> variant_wins
    fam = d.multiple_testing
    assert fam["correction"] == "holm" and fam["family_size"] == 2
    assert [h["adjusted_p_value"] for h in fam["hypotheses"]] == pytest.approx([0.08, 0.9])
    strong = marginal | {"edge_delta_bps": pci(1.5, 0.5, 2.5, 0.001)}
    assert decide(c, strong).variant("treatment").stat_verdict == "variant_wins"
    mixed = strong | {"fill_quality_delta": pci(-0.02, -0.03, -0.01, 0.002)}
    assert decide(c, mixed).variant("treatment").stat_verdict == "inconclusive"  # better and worse
    export = decide(c, strong).to_export()["multiple_testing"]
    assert export["correction"] == "holm" and export["hypotheses"][0]["adjusted_p_value_micros"] == 2000


def test_a_metric_without_data_stays_in_the_family():
    c = _two_primaries()
    d = decide(c, {"edge_delta_bps": pci(1.0, 0.1, 1.9, 0.03)})  # fill_quality has no CI yet
    assert d.multiple_testing["family_size"] == 2
    assert d.variant("treatment").stat_verdict == "inconclusive"  # 0.03 > 0.05 / 2


def test_holm_across_treatments():
    raw = example_raw()
    raw["traffic_split_pct"] = 30
    raw["polb_config"]["max_population_share_bp"] = 3000
    raw["eval_surface"]["constraints"] = {}
    raw["variants"] = {"control": {"traffic_share_bp": 7000},
                       "a": {"slug": "sports-model-v2", "traffic_share_bp": 1000},
                       "b": {"slug": "sports-model-v3", "traffic_share_bp": 1000},
                       "c": {"slug": "sports-model-v4", "traffic_share_bp": 1000}}
    c = make_contract(raw)
    out = {"a": {"edge_delta_bps": pci(2.0, 0.5, 3.5, 0.001)}, "b": {"edge_delta_bps": pci(1.0, 0.1, 1.9, 0.02)},
           "c": {"edge_delta_bps": pci(0.9, 0.05, 1.8, 0.03)}}
    d = decide(c, out)
    # Holm: 0.001 * 3, then 0.02 * 2 = 0.04 <= 0.05, then max(0.04, 0.03) -> all three rejected.
    assert [d.variant(v).stat_verdict for v in "abc"] == ["variant_wins"] * 3
    out["b"]["edge_delta_bps"] = pci(1.0, 0.1, 1.9, 0.03)
    d = decide(c, out)  # 0.03 * 2 = 0.06: b and c are no longer rejected
    assert [d.variant(v).stat_verdict for v in "abc"] == ["variant_wins", "inconclusive", "inconclusive"]
