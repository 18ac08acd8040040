"""The console script as a user types it: demo, run, status, and clean failures on bad settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experimenttracker_pipeline import cli
from experimenttracker_pipeline.store.migrations import revisions


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_HOME"))}
    env.update({"EXPERIMENTTRACKER_DATA_DIR": str(tmp_path / "data"), **extra})
    return env


def _cli(tmp_path, *args, **env):
    return subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", *args], capture_output=True, text=True,
                          env=_env(tmp_path, **env), cwd=tmp_path, timeout=600)


def test_demo_then_status_json(tmp_path):
    demo = _cli(tmp_path, "demo")
    assert demo.returncode == 0, demo.stderr
    assert "experiment_pass_job[8 experiments]: success" in demo.stdout
    status = _cli(tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["experiment_id"]: r for r in json.loads(status.stdout)}
    assert rows["exp_sports_v2"]["samples"] == 400 and rows["exp_sports_v2"]["mode"] == "shadow_only"
    assert rows["exp_weather_small"]["samples"] == 50
    assert rows["exp_esports_ll"]["orphans"] > 0 and rows["exp_sports_v2"]["last_sample_at"].endswith("Z")
    # The runs are in the persistent Dagster instance under the data folder (visible to `dg dev`).
    assert (tmp_path / "data" / "dagster_home").is_dir()
    winner = rows["exp_sports_v2"]
    assert winner["verdict"] == "variant_wins" and winner["ci_method"] == "always_valid"
    for key in ("ci_95_low", "ci_95_high", "fixed_ci_95_low", "fixed_ci_95_high", "edge_delta_bps", "p_value", "power"):
        assert isinstance(winner[key], float), key
    assert winner["promotion_state"] == "awaiting_signoff" and winner["drift_signalled"] is False
    assert rows["exp_crypto_v3"]["drift_signalled"] is True and rows["exp_crypto_v3"]["verdict"] == "control_wins"
    assert rows["exp_weather_small"]["verdict"] == "insufficient_samples"
    abn = rows["exp_tennis_abn"]  # A/B/n: the overall verdict, and each treatment's own
    assert (abn["verdict"], abn["winning_variant"], abn["samples"]) == ("variant_wins", "fast", 1200)
    assert {v: s["verdict"] for v, s in abn["variants"].items()} == {
        "fast": "variant_wins", "safe": "inconclusive", "wide": "control_wins"}
    assert [v for v, s in abn["variants"].items() if s["drift_signalled"]] == ["wide"]
    causal = rows["exp_esports_ll"]["causal"]
    assert {"naive_diff_bps", "ipw", "aipw", "overlap", "segments", "harmed_segments"} <= set(causal)
    assert set(causal["aipw"]) >= {"estimate_bps", "ci_95_low", "ci_95_high", "se"}
    rerun = _cli(tmp_path, "run")
    assert rerun.returncode == 0 and rerun.stdout.startswith("nothing new"), rerun.stdout
    again = {r["experiment_id"]: r for r in json.loads(_cli(tmp_path, "status", "--json").stdout)}
    assert again["exp_sports_v2"]["verdict_report_id"] == winner["verdict_report_id"]
    # Sign-off from the command line promotes the winner; a bad report id is a one-line error.
    bad = _cli(tmp_path, "signoff", "exp_sports_v2", "--approver", "alice", "--report", "ops_nope")
    assert bad.returncode == 2 and "unknown report" in bad.stderr
    ok = _cli(tmp_path, "signoff", "exp_sports_v2", "--approver", "alice", "--report", winner["verdict_report_id"])
    assert ok.returncode == 0 and "promotion: promoted" in ok.stdout
    # The views are current at once: the HTML report (and, in the Dagster instance, promotions and the overview).
    assert "not refreshed" not in ok.stderr
    assert "<td>promoted</td>" in (tmp_path / "data" / "reports" / "exp_sports_v2.html").read_text()
    final = {r["experiment_id"]: r for r in json.loads(_cli(tmp_path, "status", "--json").stdout)}
    assert final["exp_sports_v2"]["promotion_state"] == "promoted"


@pytest.mark.parametrize("env, message", [
    ({"EXPERIMENTTRACKER_DB_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}, "unreachable"),
    ({"EXPERIMENTTRACKER_DB_URL": "not a url"}, "bad setting"),
    ({"EXPERIMENTTRACKER_CALIPER_SECONDS": "soon"}, "bad setting"),
    ({"EXPERIMENTTRACKER_DB_URL": "mysql://x@localhost/db"}, "unsupported database"),
])
def test_bad_settings_exit_nonzero_with_one_line(tmp_path, env, message):
    result = _cli(tmp_path, "status", **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_run_unknown_experiment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPERIMENTTRACKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    (tmp_path / "data" / "landing").mkdir(parents=True)
    assert cli.main(["run", "exp_nope"]) == 2
    assert "no such experiment: exp_nope" in capsys.readouterr().err


def test_migrate_lists_what_it_applied(tmp_path, db_url):
    """`experimenttracker migrate` on a fresh database names the revisions it applied; run again, nothing."""
    first = _cli(tmp_path, "migrate", EXPERIMENTTRACKER_DB_URL=db_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "applied: " + ", ".join(revisions())
    second = _cli(tmp_path, "migrate", EXPERIMENTTRACKER_DB_URL=db_url)
    assert second.returncode == 0 and second.stdout.strip() == "applied: nothing (up to date)"
