"""A real Prometheus server (Debian `prometheus`) scraping `experimenttracker serve`: the spec's metric names
arrive, and the stalled alert of deploy/prometheus/alerts.yml (its window shortened from 30 minutes to seconds)
goes pending and then firing once samples stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from experimenttracker_pipeline.stages.declarations.queries import set_experiment_status
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline_tests.builders import fill, write_jsonl
from experimenttracker_pipeline_tests.support.nats import free_port, wait_for_port
from experimenttracker_pipeline_tests.support.pipeline import evaluated_experiment
from experimenttracker_pipeline_tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
P = "polytraders_gov_experimenttracker_"


def _api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _last_scrape(port: int) -> str | None:
    """When Prometheus last scraped the serve target: it moves on every scrape, so it is the wait's progress."""
    targets = _api(port, "/api/v1/targets")["data"]["activeTargets"]
    return targets[0].get("lastScrape") if targets else None


def _wait(predicate, what: str, port: int):
    """Poll `predicate` until it returns something true; fail when Prometheus stopped scraping for two minutes."""
    found = []

    def done() -> bool:
        found[:] = [predicate()]
        return bool(found[0])

    wait_until(done, lambda: _last_scrape(port), idle_timeout=120, overall_cap=900, poll_seconds=0.5, what=what)
    return found[0]


def _alert_state(port: int, experiment_id: str) -> str | None:
    for alert in _api(port, "/api/v1/alerts")["data"]["alerts"]:
        if alert["labels"].get("alertname") == "ExperimentTrackerStalled" and alert["labels"].get("experiment_id") == experiment_id:
            return alert["state"]
    return None


@pytest.mark.slow
def test_prometheus_scrapes_serve_and_the_stalled_alert_fires_when_samples_stop(tmp_path, workdirs):
    assert Path(PROMETHEUS).exists(), "prometheus is required (apt-get install -y prometheus)"
    from experimenttracker_pipeline.store import Store

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    rng = np.random.default_rng(11)
    evaluated_experiment(store, workdirs, "exp_win", 3 + rng.normal(0, 1, 40), min_samples_for_decision=30)
    evaluated_experiment(store, workdirs, "exp_lose", -6 + rng.normal(0, 0.5, 40), min_samples_for_decision=30)
    evaluated_experiment(store, workdirs, "exp_flow", 1 + rng.normal(0, 1, 5), min_samples_for_decision=1000)
    for finished in ("exp_win", "exp_lose"):  # only exp_flow is expected to keep sampling
        set_experiment_status(store, finished, "paused")

    flowing = threading.Event()
    flowing.set()

    def feed() -> None:  # a new matched pair every 0.3 s while `flowing` is set
        i = 1000
        while flowing.is_set():
            write_jsonl(workdirs["landing"] / "exp_flow.jsonl", [
                fill(f"exp_flow-c{i}", "exp_flow-c", "live", f"exp_flow:{i}", t=i * 1000),
                fill(f"exp_flow-v{i}", "exp_flow-v", "shadow", f"exp_flow:{i}", edge=1.01, t=i * 1000 + 1)], append=True)
            ingest_landing(store, workdirs["landing"])
            record_samples(store, "exp_flow")
            i += 1
            time.sleep(0.3)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()

    serve_port, prom_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERIMENTTRACKER_")}
    env.update({"EXPERIMENTTRACKER_DB_URL": store.url, "EXPERIMENTTRACKER_DATA_DIR": str(tmp_path / "data")})
    serve = subprocess.Popen([sys.executable, "-m", "experimenttracker_pipeline.cli", "serve", "--port", str(serve_port)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The project's rule, window shortened for a test: 30 minutes -> 6 seconds, with 'for: 2s' to see 'pending'.
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["expr"] = rule["expr"].replace("[30m]", "[6s]").replace("[10m]", "[6s]")
        if rule["alert"] == "ExperimentTrackerStalled":
            rule["for"] = "2s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "experimenttracker", "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}]}]}))
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    prometheus = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    try:
        wait_for_port(serve_port, up=True, process=serve)
        wait_for_port(prom_port, up=True, process=prometheus)
        targets = _wait(lambda: [t for t in _api(prom_port, "/api/v1/targets")["data"]["activeTargets"] if t["health"] == "up"],
                        "the serve target to be scraped", prom_port)
        assert targets[0]["scrapeUrl"] == f"http://127.0.0.1:{serve_port}/metrics"
        names = set(_wait(lambda: {n for n in _api(prom_port, "/api/v1/label/__name__/values")["data"] if n.startswith(P)} >= {
            P + "samples_total", P + "experiments_total", P + "edge_delta_bps", P + "drift_signals_total"} and
            _api(prom_port, "/api/v1/label/__name__/values")["data"], "the spec's metric names", prom_port))
        assert {P + "samples_total", P + "experiments_total", P + "edge_delta_bps", P + "drift_signals_total"} <= names
        drift = _api(prom_port, "/api/v1/query", query=P + "drift_signals_total")["data"]["result"]
        assert [(r["metric"]["slug"], r["metric"]["job"], r["value"][1]) for r in drift] == [("exp_lose-v", "experimenttracker", "1")]

        # While samples flow, the rate over the window stays above zero: no alert for exp_flow.
        _wait(lambda: float((_api(prom_port, "/api/v1/query", query=f"rate({P}samples_total[6s])")["data"]["result"] or
                             [{"value": [0, "0"]}])[0]["value"][1]) > 0, "a positive sample rate", prom_port)
        time.sleep(4)
        assert _alert_state(prom_port, "exp_flow") is None
        flowing.clear()
        feeder.join(timeout=300)  # one more feed round at most; bounds a hang, not a slow round
        assert not feeder.is_alive(), "the sample feeder did not stop"
        stopped_at = time.monotonic()
        _wait(lambda: _alert_state(prom_port, "exp_flow") == "pending", "the stalled alert to go pending", prom_port)
        _wait(lambda: _alert_state(prom_port, "exp_flow") == "firing", "the stalled alert to fire", prom_port)
        assert time.monotonic() - stopped_at >= 6  # not before the window had emptied
        alert = next(a for a in _api(prom_port, "/api/v1/alerts")["data"]["alerts"] if a["labels"].get("experiment_id") == "exp_flow")
        assert alert["labels"]["severity"] == "P2"
        assert alert["annotations"]["runbook_url"] == "docs/runbook.md#runbook-experimenttracker-stalled"
    finally:
        flowing.clear()
        for process in (prometheus, serve):
            process.send_signal(signal.SIGTERM)
        for process in (prometheus, serve):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        store.dispose()
