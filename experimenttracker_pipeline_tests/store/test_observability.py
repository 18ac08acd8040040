"""Metrics and health read from the store: the spec's metric names, types and labels with values checked against
independently computed figures, and the health states (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from experimenttracker_pipeline.observability.health import check_health
from experimenttracker_pipeline.observability.metrics import build_registry
from experimenttracker_pipeline.stages.causal_effects.estimation import compute_causal
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.drift.registry import TableStrategyRegistry
from experimenttracker_pipeline.stages.drift.signal import signal_drift
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline.stages.verdict.decision import decide
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl
from experimenttracker_pipeline_tests.support.nats import free_port, publish
from experimenttracker_pipeline_tests.support.pipeline import evaluated_experiment

P = "polytraders_gov_experimenttracker_"


def scrape(store, bus=None) -> dict:
    text = generate_latest(build_registry(store, bus)).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples_of(families: dict, name: str) -> dict:
    family = families[name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


@pytest.fixture
def populated(store, workdirs):
    rng = np.random.default_rng(7)
    winner = 3.0 + rng.normal(0, 1.0, 60)
    loser = -6.0 + rng.normal(0, 0.5, 60)
    small = 1.0 + rng.normal(0, 1.0, 10)
    evaluated_experiment(store, workdirs, "exp_win", winner, min_samples_for_decision=30)
    evaluated_experiment(store, workdirs, "exp_lose", loser, min_samples_for_decision=30)
    evaluated_experiment(store, workdirs, "exp_small", small, min_samples_for_decision=1000)
    write_jsonl(workdirs["landing"] / "junk.jsonl", ["{bad", "[1]", "{bad again"])
    ingest_landing(store, workdirs["landing"])
    return {"exp_win": winner, "exp_lose": loser, "exp_small": small}


def test_spec_metrics_have_their_names_types_labels_and_store_values(store, populated):
    families = scrape(store)
    # Spec section 15: exact names, types and labels (the library adds _total to counter samples).
    assert families["polytraders_gov_experimenttracker_experiments"].type == "counter"
    assert families["polytraders_gov_experimenttracker_samples"].type == "counter"
    assert families["polytraders_gov_experimenttracker_edge_delta_bps"].type == "gauge"
    assert families["polytraders_gov_experimenttracker_drift_signals"].type == "counter"
    assert {s.name for s in families[P + "experiments"].samples} == {P + "experiments_total"}
    assert samples_of(families, P + "experiments") == {
        (("verdict", "variant_wins"),): 1, (("verdict", "control_wins"),): 1, (("verdict", "insufficient_samples"),): 1}
    assert samples_of(families, P + "samples") == {
        (("experiment_id", "exp_win"),): 60, (("experiment_id", "exp_lose"),): 60, (("experiment_id", "exp_small"),): 10}
    edge = samples_of(families, P + "edge_delta_bps")
    for exp_id, deltas in populated.items():  # the running edge delta is the mean of the deltas fed in
        assert edge[(("experiment_id", exp_id),)] == pytest.approx(float(np.mean(deltas)), rel=1e-5)  # reports keep 6 digits
    assert samples_of(families, P + "drift_signals") == {(("slug", "exp_lose-v"),): 1}
    # On-call metrics
    assert samples_of(families, P + "quarantined_reports") == {
        (("reason_code", "REPORT_INVALID_JSON"),): 2, (("reason_code", "REPORT_NOT_OBJECT"),): 1}
    ingested = samples_of(families, P + "ingested_reports")
    assert ingested[(("outcome", "accepted"),)] == 260 and ingested[(("outcome", "quarantined"),)] == 3
    assert samples_of(families, P + "registry_signals") == {(("status", "delivered"),): 1, (("status", "pending"),): 0}
    assert samples_of(families, P + "outbox_unpublished_reports") == {(): store.scalar("SELECT COUNT(*) FROM operations_reports")}
    assert samples_of(families, P + "stalled_experiments") == {(): 0}
    assert samples_of(families, P + "store_up") == {(): 1}
    ages = samples_of(families, P + "last_sample_age_seconds")
    assert set(ages) == {(("experiment_id", e),) for e in populated} and all(0 <= a < 600 for a in ages.values())


def test_metrics_survive_a_restart_and_a_broken_store_is_a_value(store, populated, tmp_path):
    first = generate_latest(build_registry(store)).decode()
    again = Store(store.url)  # another process's view of the same store
    second = generate_latest(build_registry(again)).decode()
    strip = lambda text: [l for l in text.splitlines() if "last_sample_age" not in l]  # noqa: E731 - time moves on
    assert strip(first) == strip(second)
    again.dispose()
    down = Store(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere")
    families = scrape(down)
    assert samples_of(families, P + "store_up") == {(): 0} and P + "samples" not in families


def test_health_states(store, populated, nats_server, bus_config):
    now = time.time()
    healthy = check_health(store, None, clock=lambda: now)
    assert healthy.state == "green" and healthy.http_status == 200
    assert set(healthy.checks) == {"store", "report_bus", "recent_samples", "no_silent_experiment", "registry_deliveries"}
    quiet = check_health(store, None, clock=lambda: now + 90 * 60)
    assert quiet.state == "amber" and quiet.http_status == 200 and not quiet.checks["recent_samples"]["ok"]
    silent = check_health(store, None, clock=lambda: now + 150 * 60)
    assert silent.state == "red" and silent.http_status == 503
    assert silent.checks["no_silent_experiment"]["silent_count"] == 3

    publish(nats_server.url, [])
    assert check_health(store, bus_config, clock=lambda: now).state == "green"
    nats_server.stop()
    bus_down = check_health(store, bus_config, clock=lambda: now)
    assert bus_down.state == "red" and not bus_down.checks["report_bus"]["ok"]

    down = Store(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere")
    assert check_health(down, None).state == "red"


def test_a_drift_signal_stuck_in_delivery_turns_health_red(store, workdirs):
    rng = np.random.default_rng(3)
    (workdirs["experiments"] / "e.yaml").write_text(declaration("e", min_samples_for_decision=30))
    sync_declarations(store, workdirs["experiments"])

    class Down:
        def deliver(self, signal):
            raise ConnectionError("registry down")

    records = []
    for i, delta in enumerate(-6 + rng.normal(0, 0.5, 40)):
        records += [fill(f"c{i}", "c-slug", "live", f"k{i}", t=i), fill(f"v{i}", "v-slug", "shadow", f"k{i}", edge=1 + delta / 100, t=i)]
    write_jsonl(workdirs["landing"] / "a.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    record_samples(store, "e")
    compute_intervals(store, "e")
    compute_causal(store, "e")
    decide(store, "e")
    signal_drift(store, "e", TableStrategyRegistry())
    with store.begin() as conn:  # what an HTTP registry outage leaves behind: the signal still pending
        conn.exec_driver_sql("UPDATE strategy_registry_signals SET delivery_status = 'pending', attempts = 3")
    now = datetime.now(timezone.utc).timestamp()
    assert check_health(store, None, clock=lambda: now).checks["registry_deliveries"]["ok"]
    later = check_health(store, None, clock=lambda: now + 20 * 60)
    assert later.state == "red" and later.checks["registry_deliveries"]["failing"] == 1
