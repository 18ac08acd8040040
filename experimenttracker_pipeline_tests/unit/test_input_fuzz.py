"""Fuzzing the two doors of untrusted input: the report validator and the declaration loader never raise, and
never accept a value that makes a derived number non-finite or unstorable."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import experimenttracker_pipeline.stages.ingestion.validation as v
from experimenttracker_pipeline.model.declaration import read_declaration
from experimenttracker_pipeline.model.experiment import experiment_from_row
from experimenttracker_pipeline.model.fields import InvalidDeclaration
from experimenttracker_pipeline.stages.governance.operations import contract_record
from experimenttracker_pipeline.stages.samples.pairing import Candidate, edge_delta_bps
from experimenttracker_pipeline_tests.builders import declaration, fill

GOOD = fill("rep-1", "v-slug", "shadow", "pk-1", covariates={"hour": 13, "vol": 2.5}, fill_quality=0.5,
            assignment_propensity=0.5, experiment_id="exp_a")
# The most extreme fill the bounds let through: every fuzzed fill is paired with it both ways.
EXTREME = v.validate_line(json.dumps({**GOOD, "report_id": "x", "edge_pusd": -v.MAX_ABS_PUSD,
                                      "notional_pusd": v.MIN_AMOUNT_PUSD, "slippage_bps": v.MAX_ABS_SLIPPAGE_BPS}))
assert isinstance(EXTREME, v.Fill)

numbers = st.one_of(
    st.integers(), st.integers(-10 ** 400, 10 ** 400), st.integers(-2 ** 64, 2 ** 64),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.sampled_from([1.7e308, -1.7e308, 1e-320, 5e-324, 1e-7, 1e12, 1e12 + 1, 0.0, -0.0, 1_778_000_000_000]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8),
                    st.sampled_from(["live", "shadow", "FILL", "OperationsReport", "\ud800", "a\u0000b", "\\N", "x" * 129]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=6)
keys = st.sampled_from(sorted(set(GOOD) | {"covariates", "extra"}))


@st.composite
def report_lines(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    record: dict[str, Any] = dict(GOOD)
    for key, value in draw(st.dictionaries(keys, values, max_size=4)).items():
        record[key] = value
    if draw(st.booleans()):
        record["covariates"] = draw(st.dictionaries(st.text(max_size=4), numbers | st.text(max_size=4), max_size=4))
    for key in draw(st.sets(keys, max_size=2)):
        record.pop(key, None)
    text = json.dumps(record, allow_nan=True)
    if draw(st.integers(0, 5)) == 0 and len(record) > 1:  # a key given twice
        key = draw(st.sampled_from(sorted(record)))
        text = text[:-1] + f", {json.dumps(key)}: {json.dumps(draw(scalars), allow_nan=True)}}}"
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def _candidate(f: v.Fill) -> Candidate:
    return Candidate.from_mapping(f.as_row())


@settings(max_examples=2500, deadline=None)
@given(line=report_lines())
def test_the_report_validator_is_total_and_keeps_derived_numbers_finite(line):
    outcome = v.validate_line(line)  # must not raise
    if isinstance(outcome, v.Rejection):
        assert outcome.reason_code in v.QUARANTINE_REASONS
        (outcome.detail + (outcome.report_id or "")).encode("utf-8")  # storable text
        v.bounded_raw_text(line).encode("utf-8")
        return
    fill_ = outcome
    for value in (fill_.size_pusd, fill_.notional_pusd, fill_.edge_pusd, fill_.slippage_bps):
        assert isinstance(value, float) and math.isfinite(value)
    assert v.MIN_AMOUNT_PUSD <= fill_.notional_pusd <= v.MAX_ABS_PUSD
    for text in (fill_.report_id, fill_.strategy_slug, fill_.pair_key, fill_.market_id, fill_.experiment_id or ""):
        text.encode("utf-8")  # no lone surrogate reaches the database
    mine, other = _candidate(fill_), _candidate(EXTREME)
    deltas = [edge_delta_bps(mine, other), edge_delta_bps(other, mine), edge_delta_bps(mine, mine),
              mine.slippage_bps - other.slippage_bps]
    assert _finite(*deltas) and _finite(*(d * d * 1e9 for d in deltas))  # sums of squares over 1e9 pairs
    if fill_.covariates_json is not None:
        for value in json.loads(fill_.covariates_json).values():
            assert isinstance(value, str) or (_finite(float(value)) and abs(value) <= v.MAX_ABS_COVARIATE)


# ---- declarations -------------------------------------------------------------------------------------------
decl_fields = st.sampled_from(["experiment_id", "traffic_split_pct", "min_samples_for_decision", "caliper_seconds",
                               "expected_samples", "planned_looks", "planned_max_samples", "mde_bps",
                               "expected_sd_bps", "winsorize_pct", "drift_margin_bps", "prior_mean_bps",
                               "prior_sd_bps", "harm_margin_bps", "require_human_signoff", "mode", "ci_method",
                               "started_at", "non_inferiority_margins", "adjust_for"])
yaml_numbers = st.one_of(numbers.filter(lambda x: not isinstance(x, float) or math.isfinite(x)),
                         st.sampled_from([".inf", "-.inf", ".nan", "1.0e+308", "1e400", "0x7fffffffffffffffff",
                                          "1_000_000_000_000_000_000_000", "5e-324"]))


@st.composite
def declaration_texts(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=300))
    if kind == 1:  # alias expansion of random shape
        depth, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        lines = [f"n0: &n0 [{', '.join(['x'] * width)}]"]
        lines += [f"n{i}: &n{i} [{', '.join([f'*n{i - 1}'] * width)}]" for i in range(1, depth)]
        return declaration("exp_fuzz") + "\n".join(lines) + "\n"
    overrides = {}
    for name in draw(st.lists(decl_fields, max_size=4, unique=True)):
        value = draw(st.one_of(yaml_numbers, scalars.filter(lambda x: not isinstance(x, float) or math.isfinite(x))))
        overrides[name] = value
    text = declaration("exp_fuzz", **{k: (0 if isinstance(x, str) and k != "experiment_id" else x)
                                      for k, x in overrides.items() if not isinstance(x, str) or k == "experiment_id"})
    for name, value in overrides.items():  # literal YAML spellings (".inf", "1e400", "0x...") written as-is
        if isinstance(value, str) and name != "experiment_id":
            text += f"{name}: {value}\n"
    if draw(st.integers(0, 4)) == 0:
        text += draw(st.sampled_from(["require_human_signoff: false\n", "<<: {a: 1}\n", "x: &x [1, *x]\n",
                                      "experiment_id: exp_fuzz\n"]))
    return text


def _walk_numbers(value: Any):
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk_numbers(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=declaration_texts())
def test_the_declaration_loader_is_total_and_keeps_derived_numbers_finite(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            experiment = read_declaration(path)
        except InvalidDeclaration as exc:
            assert exc.issues and all(i.source == str(path) for i in exc.issues)
            return
    row = experiment.to_row()
    assert _finite(row["traffic_split_pct"], row["caliper_seconds"]) and 0 < row["caliper_seconds"] <= 30 * 86400
    assert 2 <= row["min_samples_for_decision"] <= 1_000_000_000
    assert experiment.experiment_id == experiment.experiment_id.strip() and "\n" not in experiment.experiment_id
    contract = contract_record(experiment.contract)  # exports: every number an exact, bounded integer
    for number in _walk_numbers(json.loads(contract["contract_json"])):
        assert abs(number) < 2 ** 63 and (not isinstance(number, float) or math.isfinite(number))
    for number in _walk_numbers(json.loads(row["declaration_json"])):
        assert isinstance(number, int) or math.isfinite(number)
    plan = experiment.statistics
    for number in (plan.mde_bps, plan.expected_sd_bps, plan.prior_sd_bps, plan.prior_mean_bps, plan.drift_margin_bps):
        assert number is None or math.isfinite(number)
    if plan.mde_bps and plan.expected_sd_bps:
        assert math.isfinite((plan.expected_sd_bps / plan.mde_bps) ** 2 * 16)  # the sample size for 80% power
    yaml.safe_dump(dict(experiment.raw), default_flow_style=True)  # the stored declaration is plain data
    # What is stored reads back as the same experiment (else registering it would set it aside at once).
    assert experiment_from_row(row).declaration_sha256 == experiment.declaration_sha256
