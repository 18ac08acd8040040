"""The off-policy wire fields of a fill report: `behavior_propensity` and `candidate_propensities`."""

import json

import pytest

import experimenttracker_pipeline.stages.ingestion.validation as r
from experimenttracker_pipeline_tests.builders import fill

PLAIN = fill("rep-1", "c-slug", "live", "pk-1", covariates={"hour": 13}, fill_quality=0.9)
LOGGED = {**PLAIN, "behavior_propensity": 0.25, "candidate_propensities": {"tight-v2": 0.5, "wide": 0}}


def test_logged_fill_is_accepted_with_canonical_candidates():
    out = r.validate_line(json.dumps(LOGGED))
    assert isinstance(out, r.Fill), out
    assert out.behavior_propensity == 0.25
    assert out.candidate_propensities_json == '{"tight-v2":0.5,"wide":0.0}'
    reordered = {**PLAIN, "candidate_propensities": {"wide": 0.0, "tight-v2": 0.5}, "behavior_propensity": 0.25}
    assert r.validate_line(json.dumps(reordered)).content_sha256 == out.content_sha256
    assert r.validate_line(json.dumps({**LOGGED, "behavior_propensity": 0.5})).content_sha256 != out.content_sha256
    assert r.validate_line(json.dumps({**LOGGED, "candidate_propensities": {"tight-v2": 0.4}})).content_sha256 != out.content_sha256


def test_reports_without_the_fields_keep_their_digest():
    """The digest of a report without the off-policy fields is the one computed before they existed (the
    literal below), on both the fast and the detailed validation path."""
    before = "4143b29a084c6120"  # first 16 hex digits, computed by the validator before this change
    fast = r.validate_line(json.dumps(PLAIN))
    detailed = r.validate_line(json.dumps(PLAIN).replace("c-slug", "c-sl\\u0075g"))  # an escape: detailed path
    assert fast.behavior_propensity is None and fast.candidate_propensities_json is None
    assert fast.content_sha256 == detailed.content_sha256
    assert fast.content_sha256.startswith(before)
    assert r.validate_line(json.dumps({**PLAIN, "behavior_propensity": None})).content_sha256 == fast.content_sha256


def _with(**changes):
    return json.dumps({**LOGGED, **changes})


@pytest.mark.parametrize("line, code", [
    (_with(behavior_propensity=0), r.REPORT_OUT_OF_RANGE),
    (_with(behavior_propensity=1.0000001), r.REPORT_OUT_OF_RANGE),
    (_with(behavior_propensity=-0.2), r.REPORT_OUT_OF_RANGE),
    (_with(behavior_propensity="0.5"), r.REPORT_INVALID_TYPE),
    (_with(behavior_propensity=True), r.REPORT_INVALID_TYPE),
    (_with(behavior_propensity=10 ** 400), r.REPORT_OUT_OF_RANGE),
    (_with().replace('"behavior_propensity": 0.25', '"behavior_propensity": 1e999'), r.REPORT_NON_FINITE_NUMBER),
    (_with().replace('"behavior_propensity": 0.25', '"behavior_propensity": NaN'), r.REPORT_NON_FINITE_NUMBER),
    (_with().replace('"tight-v2": 0.5', '"tight-v2": -1e999'), r.REPORT_NON_FINITE_NUMBER),
    (_with(candidate_propensities={"tight-v2": 1.5}), r.REPORT_OUT_OF_RANGE),
    (_with(candidate_propensities={"tight-v2": -0.1}), r.REPORT_OUT_OF_RANGE),
    (_with(candidate_propensities={"tight-v2": "0.5"}), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities={"tight-v2": None}), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities={"tight-v2": False}), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities={"Tight": 0.5}), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities={"": 0.5}), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities={"a" * 65: 0.5}), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities={"p\n1": 0.5}), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities=[0.5]), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities=0.5), r.REPORT_INVALID_TYPE),
    (_with(candidate_propensities={f"p{i}": 0.1 for i in range(r.MAX_CANDIDATE_POLICIES + 1)}), r.REPORT_FIELD_TOO_LONG),
    (_with().replace('"wide": 0', '"wide": 0, "wide": 1'), r.REPORT_DUPLICATE_KEY),
])
def test_bad_off_policy_fields_are_quarantined(line, code):
    out = r.validate_line(line)
    assert isinstance(out, r.Rejection), out
    assert out.reason_code == code, out.detail
    parsed = "1e999" in line or code not in (r.REPORT_NON_FINITE_NUMBER, r.REPORT_DUPLICATE_KEY)
    assert out.report_id == ("rep-1" if parsed else None)  # parse-time rejections have no object to read it from


def test_bounds_are_inclusive_where_the_wire_format_says():
    out = r.validate_line(_with(behavior_propensity=1, candidate_propensities={"a": 1, "b": 0}))
    assert isinstance(out, r.Fill) and out.behavior_propensity == 1.0
    assert json.loads(out.candidate_propensities_json) == {"a": 1.0, "b": 0.0}
    many = {f"p{i}": 0.1 for i in range(r.MAX_CANDIDATE_POLICIES)}
    assert isinstance(r.validate_line(_with(candidate_propensities=many)), r.Fill)
