"""Build and evaluate experiments in a store with the stages' own functions (declaration, landing file, ingestion,
pairing, intervals, causal, verdict, drift signal, promotion gate), for tests that need realistic rows in every table."""

from __future__ import annotations

from experimenttracker_pipeline.stages.causal_effects.estimation import compute_causal
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.drift.registry import TableStrategyRegistry
from experimenttracker_pipeline.stages.drift.signal import signal_drift
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals
from experimenttracker_pipeline.stages.promotion.signoff import promotion_state
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline.stages.verdict.decision import decide
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl


def evaluated_experiment(store, workdirs, exp_id: str, deltas, **decl) -> None:
    """Declare ``exp_id`` (slugs ``<exp_id>-v`` / ``<exp_id>-c``), feed it shadow pairs whose edge deltas are
    exactly ``deltas`` bps, and evaluate it once (verdict and drift signal included)."""
    (workdirs["experiments"] / f"{exp_id}.yaml").write_text(
        declaration(exp_id, variant_slug=f"{exp_id}-v", control_slug=f"{exp_id}-c", **decl))
    sync_declarations(store, workdirs["experiments"])
    records = []
    for i, delta in enumerate(deltas):
        records.append(fill(f"{exp_id}-c{i}", f"{exp_id}-c", "live", f"{exp_id}:{i}", edge=1.0, t=i * 1000))
        records.append(fill(f"{exp_id}-v{i}", f"{exp_id}-v", "shadow", f"{exp_id}:{i}", edge=1.0 + float(delta) / 100, t=i * 1000 + 1))
    write_jsonl(workdirs["landing"] / f"{exp_id}.jsonl", records)
    ingest_landing(store, workdirs["landing"])
    record_samples(store, exp_id)
    compute_intervals(store, exp_id)
    compute_causal(store, exp_id)
    decide(store, exp_id)
    signal_drift(store, exp_id, TableStrategyRegistry())


def shadow_experiment(store, workdirs, deltas, *, exp_id="exp_a", start=0, **decl):
    """Declare an experiment (once) and feed it shadow pairs whose edge deltas are exactly `deltas` bps."""
    path = workdirs["experiments"] / f"{exp_id}.yaml"
    if not path.exists():
        path.write_text(declaration(exp_id, **decl))
        sync_declarations(store, workdirs["experiments"])
    records = []
    for i, delta in enumerate(deltas, start=start):
        key = f"{exp_id}:{i}"
        records.append(fill(f"{exp_id}-c{i}", "c-slug", "live", key, edge=1.0, notional=100.0, t=i * 1000))
        records.append(fill(f"{exp_id}-v{i}", "v-slug", "shadow", key, edge=1.0 + float(delta) / 100.0, notional=100.0,
                            t=i * 1000 + 1, experiment_id=exp_id))
    write_jsonl(workdirs["landing"] / f"{exp_id}-{start}.jsonl", records)
    assert ingest_landing(store, workdirs["landing"]).balanced
    record_samples(store, exp_id)


def evaluate_once(store, exp_id="exp_a", registry=None):
    """One evaluation of the experiment, as the scheduled pipeline runs it; returns (verdict, drift, promotion)."""
    compute_intervals(store, exp_id)
    compute_causal(store, exp_id)
    verdict = decide(store, exp_id)
    drift = signal_drift(store, exp_id, registry or TableStrategyRegistry())
    promotion = promotion_state(store, exp_id, apply=True)
    return verdict, drift, promotion
