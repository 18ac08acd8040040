"""Canonical JSON (si/jcs-strict/v1 = RFC 8785 restricted to integers), digests and export helpers."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

import experimenttracker_pipeline.model.canonical as cj


def test_sorted_keys_no_whitespace_utf8():
    assert cj.canonical_json({"b": 1, "a": [True, None, "x"], "c": {"z": -0, "y": "é"}}) == (
        '{"a":[true,null,"x"],"b":1,"c":{"y":"é","z":0}}'.encode("utf-8"))


def test_rfc8785_key_order_is_utf16():
    # RFC 8785 section 3.2.3 sorting example
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    out = cj.canonical_json({k: i for i, k in enumerate(keys)}).decode("utf-8")
    order = [k for k in json.loads(out)]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_string_escaping_matches_jcs():
    assert cj.canonical_json("a\"\\\b\f\n\r\t\x0f\x7f€") == '"a\\"\\\\\\b\\f\\n\\r\\t\\u000f\x7f€"'.encode()


@pytest.mark.parametrize("bad", [1.5, 1.0, float("nan"), float("inf"), 2**53, {1: "x"}, {"a": {1, 2}},
                                 datetime(2026, 1, 1, tzinfo=timezone.utc), "\ud800"])
def test_rejects_non_canonical_values(bad):
    with pytest.raises(cj.CanonicalizationError):
        cj.canonical_json({"v": bad})


def test_error_names_the_path():
    with pytest.raises(cj.CanonicalizationError, match=r"outcomes\.metrics\[1\]: float 0\.5"):
        cj.canonical_json({"outcomes": {"metrics": [1, 0.5]}})


def test_digest_and_binding():
    obj = {"b": [1, 2], "a": "x"}
    raw = b'{"a":"x","b":[1,2]}'
    assert cj.digest(obj) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert cj.digest({"a": "x", "b": [1, 2]}) == cj.digest(obj)
    assert cj.is_digest(cj.digest(obj)) and not cj.is_digest("sha256:xyz")
    assert cj.binding("eval:x/v1", obj) == {"id": "eval:x/v1", "digest": cj.digest(obj)}
    assert cj.binding("eval:x/v1", cj.digest(obj))["digest"] == cj.digest(obj)
    with pytest.raises(cj.CanonicalizationError):
        cj.binding("", obj)


def test_timestamps_and_clock_profile():
    t = datetime(2026, 5, 5, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert cj.format_timestamp(t) == "2026-05-05T00:00:00Z"
    assert cj.format_timestamp("2026-05-05T00:00:00.250+00:00") == "2026-05-05T00:00:00.250000Z"
    assert cj.as_of(t) == {"time": "2026-05-05T00:00:00Z", "clock_profile": "si/clock-profile/utc/v1"}
    with pytest.raises(cj.CanonicalizationError):
        cj.format_timestamp(datetime(2026, 5, 5))
    with pytest.raises(cj.CanonicalizationError):
        cj.parse_timestamp("2026-05-05T00:00:00")
    p = cj.provenance_fields(t)
    assert p["canonicalization"] == "si/jcs-strict/v1"
    assert p["canonicalization_profile_digest"] == cj.digest(cj.CANONICALIZATION_PROFILE)


def test_scaled_integers():
    assert cj.to_bp(0.145) == 1450 and cj.to_bp(0.1) == 1000 and cj.to_bp("0.25") == 2500
    assert cj.to_micros(3.2) == 3_200_000 and cj.to_micros(-0.0000015) == -2  # half-even
    assert cj.scale_int(Decimal("12.5"), 100) == 1250
    for bad in (float("nan"), True, "x"):
        with pytest.raises(cj.CanonicalizationError):
            cj.to_bp(bad)


def test_to_exportable_renames_floats_to_micros():
    out = cj.to_exportable({"edge_delta_bps": 3.2, "n": 5, "at": datetime(2026, 1, 1, tzinfo=timezone.utc),
                            "nested": [{"x": 0.5}], "t": (1, 2), "w": timedelta(seconds=2)})
    assert out == {"edge_delta_bps_micros": 3_200_000, "n": 5, "at": "2026-01-01T00:00:00Z",
                   "nested": [{"x_micros": 500_000}], "t": [1, 2], "w": 2000}
    with pytest.raises(cj.CanonicalizationError):
        cj.to_exportable({"x": [0.5]})
    with pytest.raises(cj.CanonicalizationError):
        cj.to_exportable({"x": float("nan")})
