"""Matched-pair construction and the tamper-evident sample hash chain.

Pure functions: the store hands in the *unpaired* candidate fills of one experiment and appends what comes
out. Pairing is deterministic: the same candidates always give the same pairs in the same order.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

GENESIS_HASH = "0" * 64
VARIANT_MODES = {"shadow_only": ("shadow", "replay"), "limited_live": ("live",)}
CONTROL_MODE = "live"


@dataclass(frozen=True)
class Candidate:
    """A fill that may become one half of a matched pair."""

    report_id: str
    pair_key: str
    market_id: str
    recorded_at_ms: int
    size_pusd: float
    notional_pusd: float
    edge_pusd: float
    slippage_bps: float
    fill_quality: float | None = None
    assignment_propensity: float | None = None
    covariates_json: str | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> "Candidate":
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.recorded_at_ms, self.report_id)


@dataclass(frozen=True)
class Pair:
    variant: Candidate
    control: Candidate

    @property
    def sort_key(self) -> tuple[int, str]:
        return (max(self.variant.recorded_at_ms, self.control.recorded_at_ms), self.variant.report_id)


def pair_shadow(variants: Iterable[Candidate], controls: Iterable[Candidate]) -> list[Pair]:
    """shadow_only: a variant shadow/replay fill and the live control fill it mirrors share ``pair_key``.

    If a producer sends several fills for one pair_key, the earliest of each side pair first; the rest stay
    unpaired (orphans) instead of being guessed at.
    """
    by_key: dict[str, list[Candidate]] = {}
    for control in sorted(controls, key=lambda c: c.sort_key):
        by_key.setdefault(control.pair_key, []).append(control)
    pairs: list[Pair] = []
    for variant in sorted(variants, key=lambda v: v.sort_key):
        waiting = by_key.get(variant.pair_key)
        if waiting:
            pairs.append(Pair(variant, waiting.pop(0)))
    return sorted(pairs, key=lambda p: p.sort_key)


def pair_limited_live(variants: Iterable[Candidate], controls: Iterable[Candidate], caliper_ms: int) -> list[Pair]:
    """limited_live: each variant live fill takes the nearest unused control live fill in the same market
    within ``caliper_ms``; ties break on (time, report_id). Variants are served in time order, so the
    result depends only on the candidate set."""
    by_market: dict[str, tuple[list[int], list[Candidate]]] = {}
    for control in sorted(controls, key=lambda c: c.sort_key):
        times, items = by_market.setdefault(control.market_id, ([], []))
        times.append(control.recorded_at_ms)
        items.append(control)
    used: set[str] = set()
    pairs: list[Pair] = []
    for variant in sorted(variants, key=lambda v: v.sort_key):
        market = by_market.get(variant.market_id)
        if market is None:
            continue
        times, items = market
        lo = bisect.bisect_left(times, variant.recorded_at_ms - caliper_ms)
        hi = bisect.bisect_right(times, variant.recorded_at_ms + caliper_ms)
        best: Candidate | None = None
        best_key: tuple[int, int, str] | None = None
        for control in items[lo:hi]:
            if control.report_id in used:
                continue
            key = (abs(control.recorded_at_ms - variant.recorded_at_ms), control.recorded_at_ms, control.report_id)
            if best_key is None or key < best_key:
                best, best_key = control, key
        if best is not None:
            used.add(best.report_id)
            pairs.append(Pair(variant, best))
    return sorted(pairs, key=lambda p: p.sort_key)


def within_report_bounds(candidate: Candidate) -> bool:
    """Whether a stored fill is within the bounds ingestion enforces today (amounts, edge, slippage), so every
    number derived from a pair with it is finite. Fills stored before those bounds existed may not be: they stay
    unpaired (counted as orphans), never become a sample."""
    from experimenttracker_pipeline.stages.ingestion.validation import NUMBER_BOUNDS

    for name, (low, high) in NUMBER_BOUNDS.items():
        value = getattr(candidate, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
            return False
    return True


def edge_delta_bps(variant: Candidate, control: Candidate) -> float:
    """The spec's delta: (variant edge - control edge) / control notional, in bps."""
    return (variant.edge_pusd - control.edge_pusd) / control.notional_pusd * 10_000.0


# Columns covered by the hash chain, in a fixed order. Changing this list breaks every stored chain.
SAMPLE_HASH_FIELDS = (
    "experiment_id", "sample_n", "variant_report_id", "control_report_id", "pair_key", "market_id",
    "variant_fill_pusd", "control_fill_pusd", "variant_notional_pusd", "control_notional_pusd",
    "variant_edge_pusd", "control_edge_pusd", "edge_delta_bps", "slippage_delta_bps", "fill_quality_delta",
    "assignment_propensity", "covariates_json", "recorded_at_ms", "recorded_at",
)


def sample_hash(row: Mapping[str, Any], prev_hash: str) -> str:
    """sha256 over the previous hash and a canonical JSON encoding of the row's chained fields."""
    payload = json.dumps([row[name] for name in SAMPLE_HASH_FIELDS], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode("utf-8")).hexdigest()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_sample_rows(experiment_id: str, pairs: Sequence[Pair], *, first_n: int, prev_hash: str) -> list[dict[str, Any]]:
    """Number the pairs from ``first_n`` on and chain each row's hash to the previous one."""
    rows: list[dict[str, Any]] = []
    for offset, pair in enumerate(pairs):
        v, c = pair.variant, pair.control
        quality_delta = (v.fill_quality - c.fill_quality) if v.fill_quality is not None and c.fill_quality is not None else None
        recorded_ms = max(v.recorded_at_ms, c.recorded_at_ms)
        row = {
            "experiment_id": experiment_id,
            "sample_n": first_n + offset,
            "variant_report_id": v.report_id,
            "control_report_id": c.report_id,
            "pair_key": v.pair_key,
            "market_id": v.market_id,
            "variant_fill_pusd": float(v.size_pusd),
            "control_fill_pusd": float(c.size_pusd),
            "variant_notional_pusd": float(v.notional_pusd),
            "control_notional_pusd": float(c.notional_pusd),
            "variant_edge_pusd": float(v.edge_pusd),
            "control_edge_pusd": float(c.edge_pusd),
            "edge_delta_bps": edge_delta_bps(v, c),
            "slippage_delta_bps": float(v.slippage_bps) - float(c.slippage_bps),
            "fill_quality_delta": quality_delta,
            "assignment_propensity": v.assignment_propensity,
            "covariates_json": v.covariates_json if v.covariates_json is not None else c.covariates_json,
            "recorded_at_ms": int(recorded_ms),
            "recorded_at": _iso(recorded_ms),
        }
        row["prev_hash"] = prev_hash
        row["sample_hash"] = prev_hash = sample_hash(row, prev_hash)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class ChainBreak:
    sample_n: int
    problem: str


def verify_chain(rows: Iterable[Mapping[str, Any]]) -> ChainBreak | None:
    """Recompute the chain over rows ordered by sample_n; return the first break, or None if intact.

    Catches changed rows (hash mismatch), removed rows (gap in sample_n or prev_hash mismatch) and rows
    inserted out of order.
    """
    expected_n = 1
    prev = GENESIS_HASH
    for row in rows:
        n = row["sample_n"]
        if n != expected_n:
            return ChainBreak(expected_n if n > expected_n else n, f"expected sample_n {expected_n}, found {n} (row removed or inserted out of order)")
        if row["prev_hash"] != prev:
            return ChainBreak(n, "prev_hash does not match the previous sample's hash")
        recomputed = sample_hash(row, prev)
        if recomputed != row["sample_hash"]:
            return ChainBreak(n, "row content does not match its stored hash (row changed)")
        prev = row["sample_hash"]
        expected_n += 1
    return None
