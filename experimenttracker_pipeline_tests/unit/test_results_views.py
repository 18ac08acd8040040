"""What people read agrees with itself: the plain English, the persona views and the HTML report never say "no
harm" next to a harmed segment or "keeps collecting" after a stop rule fired; one deciding CI, named the same way
everywhere; charts big enough to read, with the y-axis fitted to the looks that matter."""

from __future__ import annotations

import io
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from experimenttracker_pipeline.stages.governance.evaltrace import build_eval_trace, render_persona
from experimenttracker_pipeline.stages.reporting import charts
from experimenttracker_pipeline.stages.reporting.deciding import (
    DECIDING_LABEL,
    SUPPORTING_LABEL,
    deciding_ci,
    supporting_intervals,
)
from experimenttracker_pipeline.stages.reporting.html_report import render_experiment
from experimenttracker_pipeline.stages.verdict.rule import PLAIN_ENGLISH
from experimenttracker_pipeline.stages.verdict.wording import reconcile_text
from experimenttracker_pipeline_tests.contract_fixtures import make_contract

COLLECTING = re.compile(r"keeps collecting|still collecting|collecting data", re.IGNORECASE)
NO_HARM = re.compile(r"harm detected: no\b", re.IGNORECASE)

VERDICTS = ["variant_wins", "control_wins", "inconclusive", "insufficient_samples", "srm_blocked", "harm_detected"]
STOP_RULE = hs.fixed_dictionaries({
    "rule": hs.sampled_from(["efficacy", "futility", "harm", "max_duration", "guardrail"]),
    "reason_code": hs.sampled_from(["EVAL_STOP_HARM", "EVAL_STOP_EFFICACY", "EVAL_STOP_FUTILITY", "EVAL_STOP_MAX_DURATION"]),
    "action": hs.sampled_from(["stop", "continue"]),
    "message": hs.sampled_from(["Harm detected: stopping regardless of statistics.", "Maximum duration reached.",
                                "Efficacy boundary crossed: the variant is clearly better."]),
    "detail": hs.lists(hs.sampled_from(["harmed segment category=minor", "day 30"]), max_size=2),
})
SEGMENT = hs.sampled_from(["category=minor", "category=major", "liquidity=low", "hour=3"])


def _stops(rules):
    return [r for r in rules if r["action"] == "stop"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verdict=hs.sampled_from(VERDICTS), rules=hs.lists(STOP_RULE, max_size=3),
       harmed=hs.lists(SEGMENT, max_size=3, unique=True))
def test_plain_english_agrees_with_stop_rules_and_harm(verdict, rules, harmed):
    text = reconcile_text(PLAIN_ENGLISH.get(verdict, "The experiment is still collecting data."), rules, harmed)
    if _stops(rules):
        assert not COLLECTING.search(text), text
        assert "stopped" in text
    for segment in harmed:
        assert segment in text
    assert reconcile_text(text, rules, harmed) == text  # idempotent: re-reconciling adds nothing


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verdict=hs.sampled_from(["variant_wins", "control_wins", "inconclusive", "insufficient_samples"]),
       rules=hs.lists(STOP_RULE, max_size=3), harmed=hs.lists(SEGMENT, max_size=3, unique=True),
       estimate=hs.floats(-8, 8), width=hs.floats(0.2, 6))
def test_no_persona_view_contradicts_itself(verdict, rules, harmed, estimate, width):
    contract = make_contract()
    outcomes = {"edge_delta_bps": {"estimate": estimate, "ci_95_low": estimate - width, "ci_95_high": estimate + width,
                                   "n": 300}}
    trace = build_eval_trace(
        contract, as_of="2026-05-10T00:00:00Z", outcomes=outcomes, stat_verdicts={contract.treatments[0].id: verdict},
        verdict={"verdict": verdict, "basis": "always_valid", "samples": 300}, stop_rules_fired=rules,
        harmed_segments=[{"segment": s, "estimate_bps": -2.0, "ci_95_low": -3.5, "ci_95_high": -0.5, "n": 80} for s in harmed])
    pages = {p: render_persona(trace, p) for p in ("trader", "risk", "governance")}
    for name, page in pages.items():
        if harmed:
            assert not NO_HARM.search(page), (name, page)
        if _stops(rules):
            assert not COLLECTING.search(page), (name, page)
    if harmed:
        assert "Harm detected: YES" in pages["risk"]
        assert "_micros" not in pages["risk"] and "{" not in pages["risk"].split("## Harmed segments")[1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=hs.lists(STOP_RULE, max_size=3), harmed=hs.lists(SEGMENT, max_size=3, unique=True),
       verdict=hs.sampled_from(VERDICTS))
def test_the_html_report_agrees_with_itself(rules, harmed, verdict):
    v = _verdict(verdict, rules, harmed)
    v["plain_english"] = reconcile_text(PLAIN_ENGLISH.get(verdict, ""), rules, harmed)
    page = render_experiment(_report_data(v))
    if _stops(rules):
        assert not COLLECTING.search(page)
    if harmed:
        assert not NO_HARM.search(page) and all(s in page for s in harmed)


def _verdict(verdict="inconclusive", rules=(), harmed=(), basis="aipw_always_valid"):
    return {"verdict": verdict, "basis": basis, "ci_method": "always_valid", "samples": 271,
            "edge_delta_bps": 1.4359435594990722, "ci_95_low": -0.4248279655215599, "ci_95_high": 3.296715084519704,
            "paired_ci_95_low": 0.0723359, "paired_ci_95_high": 5.80261, "fixed_ci_95_low": 1.11009,
            "fixed_ci_95_high": 4.76485, "stop_rules": list(rules), "harmed_segments": list(harmed),
            "reason_codes": ["EXPERIMENT_RESULT"], "plain_english": "", "governance": {"risk_level": "high"}}


class _Promotion:
    state, detail = "awaiting_signoff", "a human sign-off is required"


def _report_data(v, causal=None):
    return {"experiment": {"experiment_id": "exp_x", "variant_slug": "v2", "control_slug": "v1", "mode": "limited_live",
                           "status": "active"},
            "verdict": v, "evaluation": {}, "causal": causal, "deciding_ci": deciding_ci(v),
            "supporting": supporting_intervals(v, causal),
            "power": {"samples": 271, "required_samples": 428, "progress": 0.633, "power": 0.53, "expected_days": 0.4,
                      "samples_per_day": 600.0},
            "srm": {"p_value": 0.7055, "n_variant": 366, "n_control": 834, "expected_share": 0.3, "observed_share": 0.305,
                    "note": "traffic split as declared"},
            "drift": {"state": "none", "sent_at": None}, "promotion": _Promotion(), "signoffs": [], "promotions": [],
            "report_id": None, "result_json": {"verdict": v["verdict"], "deciding_ci": {"method": v["basis"]}},
            "segments": [{"segment": s, "n": 80, "estimate_bps": -2.0, "ci_95_low": -3.5, "ci_95_high": -0.5,
                          "harmed": True} for s in v["harmed_segments"]],
            "ci_chart": None, "segment_chart": None}


def test_one_deciding_ci_and_the_rest_is_supporting_evidence():
    causal = {"aipw": {"estimate_bps": 1.4359, "ci_95_low": 0.3194, "ci_95_high": 2.5525},
              "ipw": {"estimate_bps": 1.41, "ci_95_low": 0.19, "ci_95_high": 2.63}}
    v = _verdict()
    ci = deciding_ci(v)
    assert ci["name"] == DECIDING_LABEL and ci["method"] == "aipw_always_valid"
    assert (ci["ci_95_low"], ci["ci_95_high"]) == (v["ci_95_low"], v["ci_95_high"])  # full precision kept
    assert "not uniformly random" in ci["why"]
    others = supporting_intervals(v, causal)
    assert {o["name"] for o in others} == {SUPPORTING_LABEL}
    assert {o["label"] for o in others} >= {"paired always-valid confidence sequence", "fixed-horizon 95% t interval",
                                            "AIPW 95% interval (single look)"}
    page = render_experiment(_report_data(v, causal))
    results = page.split('id="results"')[1].split("</table>")[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", results)
    assert DECIDING_LABEL in rows[1] and "[-0.42, +3.30] bps" in rows[1]  # first row after the header
    assert all(SUPPORTING_LABEL in r for r in rows[2:])
    assert "1.4359435594990722" not in page.split('id="result-json"')[0]  # rounded for reading


def _png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(png)).size


def test_charts_are_big_enough_and_fitted_to_the_later_looks():
    # Early looks swing +/-70 bps; the final interval is [2.55, 5.81]: the y-axis must not be set by the first looks.
    points = [charts.SequencePoint(n, 4.0, 4.0 - 300 / n ** 0.5 - (70 if n < 20 else 0), 4.0 + 300 / n ** 0.5)
              for n in range(5, 4001, 20)]
    low, high = charts.fitted_range(points, focus_from_n=1000, extra=[-2.0, 2.0])
    assert high - low < 30 and low < -2.0 and high > 2.0
    png = charts.ci_over_time(points, title="t", mde_bps=2.0, decision_n=2500, decision_label="decision look",
                              looks=[1000, 2500, 4000], deciding=(4.18, 2.55, 5.81), min_samples=100)
    width, height = _png_size(png)
    assert width >= 800 and height >= 400
    forest = charts.forest_plot([charts.IntervalRow("a", 1.0, 0.0, 2.0), charts.IntervalRow("b", -1, -2, 0, flagged=True)],
                                "forest")
    assert min(_png_size(forest)) >= 400 and _png_size(forest)[0] >= 800
