"""Alert rules (spec section 15) checked by promtool, runbook anchors, and the runbook's pause override."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from experimenttracker_pipeline.orchestration import due_work

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def test_alert_rules_are_the_spec_rules():
    rules = {r["alert"]: r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]}
    assert set(rules) == {"ExperimentTrackerStalled", "ExperimentTrackerDriftSignal"}
    assert rules["ExperimentTrackerStalled"]["expr"] == "rate(polytraders_gov_experimenttracker_samples_total[30m]) == 0"
    assert rules["ExperimentTrackerDriftSignal"]["expr"] == "rate(polytraders_gov_experimenttracker_drift_signals_total[10m]) > 0"
    assert {r["labels"]["severity"] for r in rules.values()} == {"P2"}
    assert rules["ExperimentTrackerStalled"]["annotations"]["runbook_url"].endswith("#runbook-experimenttracker-stalled")
    assert rules["ExperimentTrackerDriftSignal"]["annotations"]["runbook_url"].endswith("#runbook-experimenttracker-drift")


def test_promtool_checks_and_unit_tests_the_rules():
    assert Path(PROMTOOL).exists(), "promtool is required (apt-get install -y prometheus)"
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "2 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=RULES.parent, capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_promtool_rejects_a_wrong_expectation(tmp_path):
    """The rule tests can fail: the same stalled scenario expecting the alert one minute early is refused."""
    shutil.copy(RULES, tmp_path / "alerts.yml")
    wrong = (RULES.parent / "alerts_test.yml").read_text().replace("- eval_time: 49m\n        alertname: ExperimentTrackerStalled\n        exp_alerts: []",
                                                                  "- eval_time: 49m\n        alertname: ExperimentTrackerStalled\n        exp_alerts: [{exp_labels: {severity: P2, job: experimenttracker, experiment_id: exp_a}}]")
    (tmp_path / "alerts_test.yml").write_text(wrong)
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "FAILED" in (result.stdout + result.stderr)


def test_every_runbook_link_has_its_anchor():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', runbook))
    links = set(re.findall(r"#(runbook-[a-z-]+)", RULES.read_text())) | set(re.findall(r"\]\(#(runbook-[a-z-]+)\)", runbook))
    assert {"runbook-experimenttracker-stalled", "runbook-experimenttracker-drift"} <= links
    assert links <= anchors
    for heading in ("First step", "Diagnosis", "Mitigation", "Escalate to"):
        assert runbook.count(f"**{heading}.**") >= 4, heading
    for override in ("Pause an experiment", "Replay from the archive", "Resend a pending drift signal"):
        assert f"**{override}.**" in runbook


def test_a_paused_experiment_is_neither_paired_nor_evaluated_nor_stalled():
    rows = [{"experiment_id": "on", "status": "active", "variant_slug": "v1", "control_slug": "c1",
             "min_samples_for_decision": 10, "samples": 50, "last_appended_at_ms": 0, "registered_at_ms": 0},
            {"experiment_id": "off", "status": "paused", "variant_slug": "v2", "control_slug": "c2",
             "min_samples_for_decision": 10, "samples": 50, "last_appended_at_ms": 0, "registered_at_ms": 0}]
    for rule in (due_work.EvaluationRule("growth"), due_work.EvaluationRule("step")):
        due = due_work.due_experiments(rows, {"v1": 3, "v2": 3}, rule)
        assert [(d.experiment_id, d.pair, d.evaluate) for d in due] == [("on", True, True)]
    changes = due_work.stall_changes(rows, {}, now_ms=10**13, window_ms=1000, bus_error="down")
    assert [c.experiment_id for c in changes] == ["on"]
