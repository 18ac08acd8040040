"""An A/B/n experiment through the console script: `run` pairs and evaluates each treatment's comparison as its own
Dagster partition (``<experiment_id>/<variant_id>``), `status --json` shows the overall verdict and a ``variants``
object, and `signoff` promotes the overall winner alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

from experimenttracker_pipeline_tests.builders import abn_shadow_fills, declaration, write_jsonl

EFFECTS = {"better": 8.0, "flat": 0.0, "worse": -8.0}


def _cli(tmp_path: Path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_HOME"))}
    env["EXPERIMENTTRACKER_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=900)


def test_abn_run_status_and_signoff(tmp_path):
    data = tmp_path / "data"
    variants = {"control": {"slug": "ctl", "traffic_share_bp": 7000}}
    variants.update({vid: {"slug": f"s-{vid}", "traffic_share_bp": 1000} for vid in EFFECTS})
    (data / "experiments").mkdir(parents=True)
    (data / "experiments" / "exp_abn.yaml").write_text(declaration(
        "exp_abn", variant_slug="s-better", control_slug="ctl", traffic_split_pct=30, min_samples_for_decision=30,
        variants=variants))
    records = abn_shadow_fills(EFFECTS, 300, seed=3)
    write_jsonl(data / "landing" / "abn.jsonl", records)

    run = _cli(tmp_path, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "experiment_pass_job[3 experiments]: success" in run.stdout
    status = _cli(tmp_path, "status", "--json")
    rows = {r["experiment_id"]: r for r in json.loads(status.stdout)}
    assert list(rows) == ["exp_abn"]
    row = rows["exp_abn"]
    assert (row["verdict"], row["winning_variant"]) == ("variant_wins", "better")
    assert {vid: v["verdict"] for vid, v in row["variants"].items()} == {
        "better": "variant_wins", "flat": "inconclusive", "worse": "control_wins"}
    assert {vid: v["drift_signalled"] for vid, v in row["variants"].items()} == {
        "better": False, "flat": False, "worse": True}
    assert all(v["samples"] == 300 for v in row["variants"].values())
    table = _cli(tmp_path, "status").stdout
    assert "exp_abn/worse" in table and "control_wins" in table

    report_id = row["variants"]["better"]["verdict_report_id"]
    ok = _cli(tmp_path, "signoff", "exp_abn/better", "--approver", "alice", "--report", report_id)
    assert ok.returncode == 0 and "promotion: promoted" in ok.stdout, ok.stdout + ok.stderr
    assert (data / "reports" / "exp_abn--better.html").is_file()
    final = json.loads(_cli(tmp_path, "status", "--json").stdout)[0]
    assert final["variants"]["better"]["promotion_state"] == "promoted"
    assert _cli(tmp_path, "run").stdout.startswith("nothing new")
    whole = _cli(tmp_path, "report", "exp_abn")
    assert whole.returncode == 2 and "exp_abn/better, exp_abn/flat, exp_abn/worse" in whole.stderr
    one = _cli(tmp_path, "report", "exp_abn/worse")
    assert one.returncode == 0 and (data / "reports" / "exp_abn--worse.html").is_file()
