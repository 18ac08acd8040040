"""The pipeline on a live report bus, as a user runs it (`experimenttracker run` subprocesses against a private
JetStream server): fills in, EXPERIMENT_RESULT out on polytraders.reports.operations exactly once, and the spec's
failure-injection recipes (section 19): REPORT_BUS_UNAVAILABLE, INSUFFICIENT_SAMPLES, DRIFT_SIGNAL."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.builders import declaration, fill
from experimenttracker_pipeline_tests.support.nats import publish, read_subject
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows
from experimenttracker_pipeline.stages.publishing.queries import unpublished_count
from experimenttracker_pipeline.stages.samples.queries import pairing_states

OPERATIONS = "polytraders.reports.operations"
DEVELOPER = "polytraders.reports.developer"


def pairs(n: int, delta_bps: float, *, start: int = 0, sd: float = 1.0, seed: int = 1, variant: str = "v-slug",
          control: str = "c-slug") -> list[dict]:
    """n shadow pairs whose edge delta is delta_bps plus N(0, sd) noise (notional 100 pUSD)."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        d = delta_bps + rng.gauss(0, sd)
        out.append(fill(f"{control}-{i}", control, "live", f"{control}-p{i}", edge=1.0, t=i * 1000))
        out.append(fill(f"{variant}-{i}", variant, "shadow", f"{control}-p{i}", edge=1.0 + d / 100, t=i * 1000 + 1))
    return out


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", *args], capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def live_env(tmp_path: Path, nats_server) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_HOME"))}
    (tmp_path / "experiments").mkdir()
    env.update({"EXPERIMENTTRACKER_DATA_DIR": str(tmp_path / "data"), "EXPERIMENTTRACKER_BUS_URL": nats_server.url,
                "EXPERIMENTTRACKER_EXPERIMENTS_DIR": str(tmp_path / "experiments"),
                "EXPERIMENTTRACKER_BUS_ACK_WAIT_SECONDS": "2", "EXPERIMENTTRACKER_BUS_CONNECT_TIMEOUT_SECONDS": "1"})
    return env


def declare(env: dict, exp_id: str, **fields) -> None:
    Path(env["EXPERIMENTTRACKER_EXPERIMENTS_DIR"], f"{exp_id}.yaml").write_text(declaration(exp_id, **fields))


def on_bus(url: str, subject: str) -> list[dict]:
    return [m for m in read_subject(url, subject) if m["subject"] == subject]


def test_fills_on_the_bus_give_one_result_report_on_the_operations_subject(pg_url, live_env, nats_server):
    live_env["EXPERIMENTTRACKER_DB_URL"] = pg_url
    declare(live_env, "exp_live", min_samples_for_decision=40)
    publish(nats_server.url, pairs(60, 4.0))

    first = run_cli(live_env, "run")
    assert "report_relay_job: success" in first.stdout and "0 reports unpublished" in first.stdout
    second = run_cli(live_env, "run")  # nothing new: nothing evaluated again, nothing published twice
    assert "0 reports unpublished" in second.stdout

    operations = on_bus(nats_server.url, OPERATIONS)
    kinds = Counter(m["payload"]["event_type"] for m in operations)
    assert kinds["EXPERIMENT_RESULT"] == 1 and kinds["EXPERIMENT_STARTED"] == 1
    result = next(m for m in operations if m["payload"]["event_type"] == "EXPERIMENT_RESULT")
    assert result["payload"]["verdict"] == "variant_wins" and result["payload"]["samples"] == 60
    assert result["msg_id"] == result["payload"]["report_id"]
    assert all(m["msg_id"] == m["payload"]["report_id"] for m in operations)
    developer = on_bus(nats_server.url, DEVELOPER)
    assert [m["payload"]["event_type"] for m in developer] == ["SAMPLE_RECORDED"]

    store = Store(pg_url)
    outbox = store.scalar("SELECT COUNT(*) FROM operations_reports")
    assert outbox == len(operations) + len(developer) and unpublished_count(store) == 0
    # The second run read this bot's own reports back from the shared topic and counted them as ignored.
    assert store.scalar("SELECT SUM(ignored) FROM ingestion_batches") == len(operations) + len(developer)
    assert store.scalar("SELECT COUNT(*) FROM raw_reports") == 120
    store.dispose()


def test_recipe_report_bus_unavailable_stalls_once_and_resumes_by_itself(tmp_path, live_env, nats_server):
    """Spec section 19, REPORT_BUS_UNAVAILABLE: block reads from the bus -> stalled; automatic resume."""
    declare(live_env, "exp_a", min_samples_for_decision=500)
    declare(live_env, "exp_b", variant_slug="v2", control_slug="c2", min_samples_for_decision=500)
    publish(nats_server.url, pairs(20, 1.0) + pairs(20, 1.0, variant="v2", control="c2"))
    run_cli(live_env, "run")
    publish(nats_server.url, pairs(30, 1.0, start=20) + pairs(10, 1.0, start=20, variant="v2", control="c2"))  # backlog

    nats_server.stop()
    down = run_cli(live_env, "run")
    assert "report bus unavailable" in down.stdout
    run_cli(live_env, "run")  # still down: nothing emitted twice
    store = Store(f"sqlite:///{tmp_path / 'data' / 'experimenttracker.db'}")
    stalled = store.reports(event_type="EXPERIMENT_STALLED")
    assert sorted((r["experiment_id"], r["reason"]) for r in stalled) == [
        ("exp_a", "REPORT_BUS_UNAVAILABLE"), ("exp_b", "REPORT_BUS_UNAVAILABLE")]
    assert {r["experiment_id"]: r["status"] for r in experiment_rows(store)} == {"exp_a": "stalled", "exp_b": "stalled"}
    assert unpublished_count(store) >= 2  # the stall reports wait in the outbox

    nats_server.start()
    run_cli(live_env, "run")
    run_cli(live_env, "run")
    resumed = store.reports(event_type="EXPERIMENT_RESUMED")
    assert sorted(r["experiment_id"] for r in resumed) == ["exp_a", "exp_b"]
    assert {r["experiment_id"]: r["status"] for r in experiment_rows(store)} == {"exp_a": "active", "exp_b": "active"}
    states = pairing_states(store)
    assert (states["exp_a"]["samples"], states["exp_b"]["samples"]) == (50, 30)  # the backlog was ingested
    assert unpublished_count(store) == 0
    operations = Counter(m["payload"]["event_type"] for m in on_bus(nats_server.url, OPERATIONS))
    assert operations["EXPERIMENT_STALLED"] == 2 and operations["EXPERIMENT_RESUMED"] == 2
    store.dispose()


def test_recipe_insufficient_samples_keeps_sampling(tmp_path, live_env, nats_server):
    """Spec section 19, INSUFFICIENT_SAMPLES: min_samples 1000 with 50 samples -> no winner, continue sampling."""
    declare(live_env, "exp_small", min_samples_for_decision=1000)
    publish(nats_server.url, pairs(50, 5.0))
    run_cli(live_env, "run")
    status = {r["experiment_id"]: r for r in json.loads(run_cli(live_env, "status", "--json").stdout)}["exp_small"]
    assert status["verdict"] == "insufficient_samples" and status["samples"] == 50 and status["status"] == "active"
    publish(nats_server.url, pairs(50, 5.0, start=50, seed=2))
    run_cli(live_env, "run")
    status = {r["experiment_id"]: r for r in json.loads(run_cli(live_env, "status", "--json").stdout)}["exp_small"]
    assert status["samples"] == 100 and status["verdict"] == "insufficient_samples"
    reports = [m["payload"] for m in on_bus(nats_server.url, OPERATIONS)]
    assert [r["event_type"] for r in reports if r["event_type"].startswith("EXPERIMENT_INSUFFICIENT")]
    assert not [r for r in reports if r["event_type"] == "EXPERIMENT_RESULT" and r.get("verdict") == "variant_wins"]


def test_recipe_drift_signal_reaches_the_registry(tmp_path, live_env, nats_server, registry_server):
    """Spec section 19, DRIFT_SIGNAL: 50 samples with edge delta below -5 bps -> the registry gets the signal."""
    live_env["EXPERIMENTTRACKER_REGISTRY_URL"] = registry_server.url
    declare(live_env, "exp_drift", min_samples_for_decision=50)
    publish(nats_server.url, pairs(50, -6.0, sd=0.5))
    run_cli(live_env, "run")
    run_cli(live_env, "run")
    assert len(registry_server.received) == 1
    key, payload = registry_server.received[0]
    assert key and payload["experiment_id"] == "exp_drift" and payload["variant_slug"] == "v-slug"
    kinds = Counter(m["payload"]["event_type"] for m in on_bus(nats_server.url, OPERATIONS))
    assert kinds["EXPERIMENT_DRIFT_SIGNAL"] == 1
