"""The reporting stage's reads on SQLite and PostgreSQL: the overview row of an evaluated experiment (deciding CI,
power progress, drift state, promotion state), the CI-over-time points, and the HTML report and index files."""

import json

import numpy as np
import pytest

from experimenttracker_pipeline.stages.reporting.renders import render_stale_reports
from experimenttracker_pipeline.stages.reporting.overview import (
    ci_points,
    decision_look,
    mde_band,
    overview_rows,
)
from experimenttracker_pipeline.stages.reporting.queries import drift_signal_states, evaluation_history, verdict_history
from experimenttracker_pipeline.stages.verdict.queries import latest_verdict
from experimenttracker_pipeline_tests.support.pipeline import evaluate_once as _evaluate
from experimenttracker_pipeline_tests.support.pipeline import shadow_experiment as _experiment


def test_overview_and_report_of_a_losing_variant(store, workdirs, tmp_path):
    rng = np.random.default_rng(5)
    _experiment(store, workdirs, rng.normal(-5, 2, 120), min_samples_for_decision=100)
    _evaluate(store)
    (row,) = overview_rows(store)
    verdict = json.loads(latest_verdict(store, "exp_a")["verdict_json"])
    assert row["verdict"] == "control_wins" and row["ci_method"] == "always_valid"
    assert row["_ci"]["ci_95_low"] == verdict["ci_95_low"]  # full precision behind the rounded text
    assert row["deciding_ci"] == f"[{verdict['ci_95_low']:+.2f}, {verdict['ci_95_high']:+.2f}] bps"
    assert row["samples"] == 120 and row["required_samples"] is not None and row["power"] is not None
    assert row["drift_state"] == "delivered (1 attempt)" and row["promotion_state"] == "not_promotable"
    assert row["last_sample_at"].endswith("Z")
    state = drift_signal_states(store, "exp_a")["exp_a"]
    assert state["delivery_status"] == "delivered" and state["attempts"] == 1
    history = verdict_history(store, "exp_a")
    assert [h["verdict"] for h in history] == ["control_wins"] and len(evaluation_history(store, "exp_a")) == 1
    assert decision_look(history) == 120
    evaluation = {"samples": 120, "alpha": 0.05, "tuning_samples": 100}
    points = ci_points(store, "exp_a", evaluation)
    assert points[-1].n == 120 and points[-1].estimate == pytest.approx(verdict["edge_delta_bps"], abs=0.6)
    assert points[-1].low < points[-1].estimate < points[-1].high
    written = render_stale_reports(store, tmp_path / "reports", ["exp_a"], limit=None).written
    page = written["exp_a"].read_text()
    assert 'id="results"' in page and "deciding CI" in page and 'id="ci-over-time"' in page
    assert "exp_a.html" in (tmp_path / "reports" / "index.html").read_text()


def test_mde_band_is_declared_or_the_80_percent_power_mde():
    declared, label = mde_band({"statistics_json": None}, {"sd_bps": 10.0, "samples": 400})
    assert declared == pytest.approx((1.959964 + 0.841621) * 10 / 20) and "80% power" in label
    assert mde_band({}, {}) == (None, "")


def test_a_pass_renders_a_bounded_number_of_stale_reports_newest_verdict_first(store, workdirs, tmp_path):
    from experimenttracker_pipeline.stages.reporting.renders import render_stale_reports, stale_reports

    rng = np.random.default_rng(8)
    for exp_id in ("exp_a", "exp_b", "exp_c"):
        _experiment(store, workdirs, rng.normal(1, 3, 60), exp_id=exp_id, min_samples_for_decision=20)
    for exp_id in ("exp_a", "exp_b", "exp_c"):
        _evaluate(store, exp_id)
    reports = tmp_path / "reports"
    ids = ["exp_a", "exp_b", "exp_c"]
    assert stale_reports(store, reports, ids) == ["exp_c", "exp_b", "exp_a"]  # newest verdict first

    first = render_stale_reports(store, reports, ids, limit=2)
    assert sorted(first.written) == ["exp_b", "exp_c"] and first.pending == ["exp_a"]
    assert set(first.charts) == {"exp_b", "exp_c"} and first.index == reports / "index.html"
    assert stale_reports(store, reports, ids) == ["exp_a"]

    # A new verdict makes exactly that report stale again; a deleted file is stale too.
    _evaluate(store, "exp_b")
    (reports / "exp_c.html").unlink()
    assert stale_reports(store, reports, ids) == ["exp_b", "exp_c", "exp_a"]
    rest = render_stale_reports(store, reports, ids, limit=None)
    assert sorted(rest.written) == ids and rest.pending == []
    assert render_stale_reports(store, reports, ids, limit=None).written == {}  # nothing drawn twice
