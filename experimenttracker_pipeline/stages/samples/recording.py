"""Append matched-pair samples to an experiment's hash chain (never renumbering old ones), anchor the head an evaluation
used, and verify the chain against its anchors and the pairing count."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from experimenttracker_pipeline.settings import DEVELOPER_TOPIC, AnchorKey, SettingsError, anchor_key
from experimenttracker_pipeline.stages.samples.anchoring import ChainHead, anchor_problem, key_id, make_head
from experimenttracker_pipeline.stages.samples.pairing import (
    ChainBreak,
    build_sample_rows,
    pair_limited_live,
    pair_shadow,
    within_report_bounds,
    sample_hash,
    verify_chain,
)
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.samples.queries import (
    append_samples,
    chain_anchors,
    get_sample,
    insert_anchor,
    iter_samples,
    last_sample_time,
    latest_anchor,
    lock_experiment,
    newest_batch,
    pairing_state,
    sample_hash_at,
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
        usable_v = [v for v in variants if within_report_bounds(v)]
        usable_c = [c for c in controls if within_report_bounds(c)]
        if exp["mode"] == "shadow_only":
            pairs = pair_shadow(usable_v, usable_c)
        else:
            pairs = pair_limited_live(usable_v, usable_c, caliper_ms=int(round(exp["caliper_seconds"] * 1000)))
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


def _walk_chain(store: Store, experiment_id: str, wanted: set[int]) -> tuple[int, ChainBreak | None, dict[int, str]]:
    """Recompute the experiment's chain in one pass: (rows read, first break or None, the stored hash at each
    sample_n in ``wanted``)."""
    hashes: dict[int, str] = {}
    count = 0

    def counted():
        nonlocal count
        for row in iter_samples(store, experiment_id):
            count += 1
            if row["sample_n"] in wanted:
                hashes[int(row["sample_n"])] = row["sample_hash"]
            yield row

    broken = verify_chain(counted())
    return count, broken, hashes


def _check_tail(store: Store, conn: Any, experiment_id: str, tail_n: int, tail_hash: str) -> None:
    """Refuse to extend a chain whose last row no longer matches its hash (tampering since the last run)."""
    row = get_sample(conn, experiment_id, tail_n)
    if sample_hash(row, row["prev_hash"]) != tail_hash:
        raise ImmutableSampleError(f"{experiment_id}: sample {tail_n} no longer matches its hash; refusing to append")


def verify_samples(store: Store, experiment_id: str, key: AnchorKey | None = None) -> tuple[int, ChainBreak | None]:
    """Recompute the whole hash chain of one experiment and compare it with what vouches for it beyond its own
    rows: the pairing state's sample count (the chain must hold at least that many) and every anchored head (its
    HMAC must verify with the anchor key, and its hash must still be the chain's hash at its sample_n). Returns
    (rows checked, first problem or None)."""
    # Read before the samples: both are written with (or after) the samples they describe, so a pairing that
    # appends while this runs cannot make an intact chain look short.
    state = pairing_state(store, experiment_id)
    anchors = chain_anchors(store, experiment_id)
    anchored_n = {int(a["sample_n"]) for a in anchors}
    count, broken, hashes = _walk_chain(store, experiment_id, anchored_n)
    if broken is not None:
        return count, broken
    recorded = int(state["samples"]) if state else 0
    if recorded > count:
        return count, ChainBreak(count + 1, f"the pairing state recorded {recorded} samples but the chain has {count} "
                                            "(samples removed)")
    if anchors:
        try:
            key = key or anchor_key()
        except SettingsError as exc:
            return count, ChainBreak(min(anchored_n), f"the anchors cannot be verified: {exc}")
        exp = experiment_row(store, experiment_id)
        digest = exp["declaration_sha256"] if exp else ""
        for anchor in anchors:
            problem = anchor_problem(key, anchor, hashes, count, digest)
            if problem is not None:
                return count, ChainBreak(min(int(anchor["sample_n"]), count + 1), problem)
    return count, None


def anchor_head(store: Store, experiment_id: str, sample_n: int, declaration_sha256: str,
                key: AnchorKey | None = None) -> ChainHead | None:
    """Anchor the chain head an evaluation of the first ``sample_n`` samples used (None before the first sample).
    The anchor is recorded in ``sample_chain_anchors`` and returned for the evaluation and its report. Raises
    ``ImmutableSampleError`` when the newest earlier anchor no longer matches the chain."""
    if sample_n <= 0:
        return None
    sample_hash = sample_hash_at(store, experiment_id, sample_n)
    if sample_hash is None:
        return None  # the chain has a gap: the blocking chain check names it
    key = key or anchor_key()
    # Never anchor (nor evaluate) a chain rewritten since the last anchor: one lookup, whatever path led here.
    previous = latest_anchor(store, experiment_id, key_id(key), sample_n)
    if previous is not None:
        n = int(previous["sample_n"])
        problem = anchor_problem(key, previous, {n: sample_hash_at(store, experiment_id, n)}, sample_n, declaration_sha256)
        if problem is not None:
            raise ImmutableSampleError(f"{experiment_id}: {problem}; not evaluated")
    head = make_head(key, experiment_id, sample_n, sample_hash, declaration_sha256)
    insert_anchor(store, head.to_row())
    return head


def published_head_problem(store: Store, experiment_id: str, chain_head: Mapping[str, Any],
                           key: AnchorKey | None = None) -> str | None:
    """Why the store no longer holds a chain head published outside it (the ``chain_head`` of an EXPERIMENT_RESULT
    as the report bus delivered it), or None when it still does. Independent of the anchor rows the store holds:
    what an auditor with the published reports runs after someone could have deleted those rows."""
    n = int(chain_head["sample_n"])
    count, broken, hashes = _walk_chain(store, experiment_id, {n})
    if broken is not None and broken.sample_n <= n:
        return f"the chain is broken at sample_n {broken.sample_n}: {broken.problem}"
    exp = experiment_row(store, experiment_id)
    return anchor_problem(key or anchor_key(), {**chain_head, "experiment_id": experiment_id}, hashes, count,
                          exp["declaration_sha256"] if exp else "")
