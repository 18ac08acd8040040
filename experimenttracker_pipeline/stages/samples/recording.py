"""Append matched-pair samples to an experiment's hash chain (never renumbering old ones) and verify the chain."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from experimenttracker_pipeline.settings import DEVELOPER_TOPIC
from experimenttracker_pipeline.stages.samples.pairing import (
    ChainBreak,
    build_sample_rows,
    pair_limited_live,
    pair_shadow,
    sample_hash,
    verify_chain,
)
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.samples.queries import (
    append_samples,
    get_sample,
    iter_samples,
    last_sample_time,
    lock_experiment,
    newest_batch,
    sample_tail,
    save_pairing_state,
    unpaired_candidates,
)

log = logging.getLogger(__name__)


SAMPLE_RECORDED = "SAMPLE_RECORDED"


class ImmutableSampleError(RuntimeError):
    """An attempt to change recorded samples, or a broken chain found before appending."""


@dataclass
class SamplingResult:
    experiment_id: str
    mode: str
    new_samples: int
    total_samples: int
    orphan_variant: int
    orphan_control: int
    first_new_n: int | None
    last_new_n: int | None
    batch_mean_edge_delta_bps: float | None


def record_samples(store: Store, experiment_id: str) -> SamplingResult:
    """Pair the experiment's unpaired fills and append the new pairs as samples (never renumbering old ones)."""
    exp = experiment_row(store, experiment_id)
    if exp is None:
        raise KeyError(f"experiment {experiment_id!r} is not registered; declare it in the experiments folder")
    with store.begin() as conn:
        lock_experiment(conn, experiment_id)
        # Read before the candidates: every fill of a batch up to this id is then visible to this pairing.
        through_batch = newest_batch(conn)
        tail_n, tail_hash = sample_tail(conn, experiment_id)
        if tail_n:
            _check_tail(store, conn, experiment_id, tail_n, tail_hash)
        variants, controls = unpaired_candidates(conn, exp)
        if exp["mode"] == "shadow_only":
            pairs = pair_shadow(variants, controls)
        else:
            pairs = pair_limited_live(variants, controls, caliper_ms=int(round(exp["caliper_seconds"] * 1000)))
        rows = build_sample_rows(experiment_id, pairs, first_n=tail_n + 1, prev_hash=tail_hash)
        append_samples(conn, rows)
        total = tail_n + len(rows)
        # The newest sample time so far: the previous state's, or a newer pair's (no scan of the samples).
        previous_last = last_sample_time(conn, experiment_id)
        last_at = max([t for t in [previous_last, *(r["recorded_at_ms"] for r in rows)] if t is not None], default=None)
        save_pairing_state(conn, experiment_id, total, len(variants) - len(pairs), len(controls) - len(pairs), last_at,
                           appended=len(rows), paired_through_batch=through_batch)
        batch_mean = sum(r["edge_delta_bps"] for r in rows) / len(rows) if rows else None
        if rows:
            last = rows[-1]
            store.emit_report(
                conn, event_type=SAMPLE_RECORDED, severity="DEBUG", report_kind="DeveloperReport", topic=DEVELOPER_TOPIC,
                dedupe_key=f"{SAMPLE_RECORDED}:{experiment_id}:{last['sample_n']}", experiment_id=experiment_id,
                payload={"experiment_id": experiment_id, "sample_n": last["sample_n"],
                         "first_sample_n": rows[0]["sample_n"], "samples_in_batch": len(rows),
                         "variant_fill_pusd": last["variant_fill_pusd"], "control_fill_pusd": last["control_fill_pusd"],
                         "edge_delta_bps": round(last["edge_delta_bps"], 6),
                         "batch_mean_edge_delta_bps": round(batch_mean, 6)})
    return SamplingResult(experiment_id, exp["mode"], len(rows), total, len(variants) - len(pairs), len(controls) - len(pairs),
                          rows[0]["sample_n"] if rows else None, rows[-1]["sample_n"] if rows else None, batch_mean)


def _check_tail(store: Store, conn: Any, experiment_id: str, tail_n: int, tail_hash: str) -> None:
    """Refuse to extend a chain whose last row no longer matches its hash (tampering since the last run)."""
    row = get_sample(conn, experiment_id, tail_n)
    if sample_hash(row, row["prev_hash"]) != tail_hash:
        raise ImmutableSampleError(f"{experiment_id}: sample {tail_n} no longer matches its hash; refusing to append")


def verify_samples(store: Store, experiment_id: str) -> tuple[int, ChainBreak | None]:
    """Recompute the whole hash chain of one experiment; returns (rows checked, first break or None)."""
    count = 0

    def counted():
        nonlocal count
        for row in iter_samples(store, experiment_id):
            count += 1
            yield row

    broken = verify_chain(counted())
    return count, broken


