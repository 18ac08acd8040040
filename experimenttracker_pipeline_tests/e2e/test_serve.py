"""`experimenttracker serve` as a process: Dagster-free, two processes agree (the values come from the store), the
health endpoint, 404s, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from experimenttracker_pipeline_tests.builders import write_jsonl
from experimenttracker_pipeline_tests.support.nats import free_port, wait_for_port
from experimenttracker_pipeline_tests.support.pipeline import evaluated_experiment
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing

P = "polytraders_gov_experimenttracker_"


@pytest.fixture
def populated(store, workdirs):
    rng = np.random.default_rng(7)
    evaluated_experiment(store, workdirs, "exp_win", 3.0 + rng.normal(0, 1.0, 60), min_samples_for_decision=30)
    evaluated_experiment(store, workdirs, "exp_lose", -6.0 + rng.normal(0, 0.5, 60), min_samples_for_decision=30)
    write_jsonl(workdirs["landing"] / "junk.jsonl", ["{bad"])
    ingest_landing(store, workdirs["landing"])


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_serve_is_a_small_dagster_free_process(store, populated, tmp_path):
    check = subprocess.run([sys.executable, "-c", "import sys, experimenttracker_pipeline.cli as c, "
                            "experimenttracker_pipeline.observability.server; print('dagster' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "False"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERIMENTTRACKER_")}
    env.update({"EXPERIMENTTRACKER_DB_URL": store.url, "EXPERIMENTTRACKER_DATA_DIR": str(tmp_path / "d")})
    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([sys.executable, "-m", "experimenttracker_pipeline.cli", "serve", "--port", str(p)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in ports]
    try:
        for port, server in zip(ports, servers):
            wait_for_port(port, up=True, process=server)
        bodies = []
        for port in ports:
            status, content_type, body = _get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200 and content_type.startswith("text/plain")
            for name in ("experiments_total", "samples_total", "edge_delta_bps", "drift_signals_total"):
                assert f"# TYPE {P}{name}" in body or f"# TYPE {P}{name.removesuffix('_total')}" in body
            bodies.append([l for l in body.splitlines() if "last_sample_age" not in l])
        assert bodies[0] == bodies[1]  # two processes, one truth: the store
        status, content_type, body = _get(f"http://127.0.0.1:{ports[0]}/internal/health/experimenttracker")
        assert status == 200 and content_type == "application/json" and json.loads(body)["state"] == "green"
        assert _get(f"http://127.0.0.1:{ports[0]}/nope")[0] == 404
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        codes = [server.wait(timeout=120) for server in servers]  # bounds a hang, not a slow exit
    assert codes == [0, 0]
