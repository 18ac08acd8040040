"""Validation of raw report lines: every bad line gets the reason code its users look for."""

import json

import pytest

import experimenttracker_pipeline.stages.ingestion.validation as r
from experimenttracker_pipeline_tests.builders import fill

GOOD = fill("rep-1", "v-slug", "shadow", "pk-1", covariates={"category": "major", "hour": 13},
            fill_quality=0.9, assignment_propensity=0.3, experiment_id="exp_a")


def test_valid_line_is_accepted_with_all_fields():
    out = r.validate_line(json.dumps(GOOD).encode())
    assert isinstance(out, r.Fill)
    assert out.report_id == "rep-1" and out.size_pusd == 200.0 and out.fill_quality == 0.9
    assert json.loads(out.covariates_json) == {"category": "major", "hour": 13}
    assert out.experiment_id == "exp_a" and out.assignment_propensity == 0.3


def test_content_hash_ignores_key_order():
    a = r.validate_line(json.dumps(GOOD))
    b = r.validate_line(json.dumps(dict(reversed(list(GOOD.items())))))
    assert a.content_sha256 == b.content_sha256
    c = r.validate_line(json.dumps({**GOOD, "edge_pusd": 1.5}))
    assert c.content_sha256 != a.content_sha256


def _with(**changes):
    record = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


@pytest.mark.parametrize("line, code", [
    ("", r.REPORT_EMPTY_LINE),
    ("   ", r.REPORT_EMPTY_LINE),
    ("{not json", r.REPORT_INVALID_JSON),
    ("[1, 2]", r.REPORT_NOT_OBJECT),
    ('"a string"', r.REPORT_NOT_OBJECT),
    (_with(pair_key=...), r.REPORT_MISSING_FIELD),
    (_with(recorded_at_ms=None), r.REPORT_MISSING_FIELD),
    (_with(strategy_slug=""), r.REPORT_MISSING_FIELD),
    (_with(notional_pusd="100"), r.REPORT_INVALID_TYPE),
    (_with(size_pusd=True), r.REPORT_INVALID_TYPE),
    (_with(covariates=[1, 2]), r.REPORT_INVALID_TYPE),
    (_with(covariates={"x": {"nested": 1}}), r.REPORT_INVALID_TYPE),
    (_with(recorded_at_ms=1.5e12 + 0.5), r.REPORT_INVALID_TYPE),
    (_with(notional_pusd=0), r.REPORT_NON_POSITIVE_AMOUNT),
    (_with(size_pusd=-3), r.REPORT_NON_POSITIVE_AMOUNT),
    (_with(mode="paper"), r.REPORT_UNKNOWN_MODE),
    (_with(event_type="ORDER"), r.REPORT_UNSUPPORTED_KIND),
    (_with(report_kind="RiskReport"), r.REPORT_UNSUPPORTED_KIND),
    (_with(report_id="x" * 129), r.REPORT_FIELD_TOO_LONG),
    (_with(strategy_slug="v\u0000slug"), r.REPORT_CONTROL_CHARACTERS),
    (_with(market_id="m\n1"), r.REPORT_CONTROL_CHARACTERS),
    (_with(fill_quality=1.5), r.REPORT_OUT_OF_RANGE),
    (_with(assignment_propensity=-0.1), r.REPORT_OUT_OF_RANGE),
    (_with(recorded_at_ms=1_778_000_000), r.REPORT_OUT_OF_RANGE),  # seconds, not milliseconds
])
def test_invalid_lines_get_reason_codes(line, code):
    out = r.validate_line(line.encode())
    assert isinstance(out, r.Rejection), out
    assert out.reason_code == code, out.detail


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(literal):
    line = json.dumps(GOOD).replace('"edge_pusd": 1.0', f'"edge_pusd": {literal}')
    assert literal in line
    out = r.validate_line(line)
    assert isinstance(out, r.Rejection) and out.reason_code == r.REPORT_NON_FINITE_NUMBER


def test_overlong_and_non_utf8_lines():
    assert r.validate_line(b"{" + b" " * r.MAX_LINE_BYTES + b"}").reason_code == r.REPORT_LINE_TOO_LONG
    assert r.validate_line(b'{"a": "\xff"}').reason_code == r.REPORT_INVALID_ENCODING


def test_rejection_keeps_a_bounded_report_id():
    out = r.validate_line(_with(notional_pusd=0))
    assert out.report_id == "rep-1"
    assert r.validate_line(_with(report_id="x" * 500)).report_id is None


def test_sql_looking_slug_is_just_data():
    out = r.validate_line(_with(strategy_slug="x'); DROP TABLE raw_reports; --"))
    assert isinstance(out, r.Fill) and out.strategy_slug.startswith("x');")


def test_bounded_raw_text_is_storable():
    text = r.bounded_raw_text(b"a\x00b" + b"c" * 10_000)
    assert len(text) <= r.MAX_RAW_TEXT + 10 and "\x00" not in text


# ---- the fast path must agree with the detailed validator --------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 2 * 10 ** 12), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=3), st.sampled_from(["live", "shadow", "replay", "FILL", "OperationsReport", "x" * 129]))


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(set(GOOD) | {"covariates"})), st.one_of(
    _scalars, st.dictionaries(st.text(max_size=4), _scalars, max_size=3))), drop=st.sets(st.sampled_from(sorted(GOOD))))
def test_fast_path_agrees_with_detailed_validator(changes, drop):
    record = {k: v for k, v in {**GOOD, **changes}.items() if k not in drop}
    try:
        line = json.dumps(record, allow_nan=True)
    except (TypeError, ValueError):
        return
    detailed = None
    try:
        obj = json.loads(line, parse_constant=r._reject_constant)
        detailed = r._validate_object(obj)
    except r._Invalid:
        pass
    got = r.validate_line(line)
    if detailed is None:
        assert isinstance(got, r.Rejection)
    else:
        assert got == detailed


def test_literal_backslash_n_is_data_not_null():
    out = r.validate_line(_with(strategy_slug="\\N"))
    assert isinstance(out, r.Fill) and out.strategy_slug == "\\N"
