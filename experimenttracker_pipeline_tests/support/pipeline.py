"""Build an evaluated experiment in a store with the stages' own functions (declaration, landing file, ingestion,
pairing, intervals, causal, verdict, drift signal), for tests that need realistic rows in every table."""

from __future__ import annotations

from experimenttracker_pipeline.stages.causal_effects.estimation import compute_causal
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.drift.registry import TableStrategyRegistry
from experimenttracker_pipeline.stages.drift.signal import signal_drift
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.intervals.evaluation import compute_intervals
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
