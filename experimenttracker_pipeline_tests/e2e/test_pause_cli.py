"""`experimenttracker pause` / `resume` as a user types them (the runbook's manual override)."""

from __future__ import annotations

import subprocess
import sys

from experimenttracker_pipeline_tests.builders import declaration
from experimenttracker_pipeline.stages.declarations.queries import experiment_row


def test_pause_and_resume_commands(tmp_path):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "e.yaml").write_text(declaration("exp_p"))
    env = {"EXPERIMENTTRACKER_DATA_DIR": str(tmp_path / "data"), "EXPERIMENTTRACKER_EXPERIMENTS_DIR": str(experiments),
           "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "experimenttracker_pipeline.cli"]
    from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
    from experimenttracker_pipeline.store import Store

    store = Store(f"sqlite:///{tmp_path / 'data' / 'experimenttracker.db'}")
    store.migrate()
    sync_declarations(store, experiments)
    paused = subprocess.run([*cli, "pause", "exp_p"], env=env, capture_output=True, text=True)
    assert paused.returncode == 0 and "active -> paused" in paused.stdout
    assert experiment_row(store, "exp_p")["status"] == "paused"
    resumed = subprocess.run([*cli, "resume", "exp_p"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and experiment_row(store, "exp_p")["status"] == "active"
    again = subprocess.run([*cli, "resume", "exp_p"], env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "not paused" in again.stderr
    unknown = subprocess.run([*cli, "pause", "nope"], env=env, capture_output=True, text=True)
    assert unknown.returncode == 2
    store.dispose()
