"""Builders for test inputs: fill reports, experiment declarations and JSON-lines files. Plain functions, imported
by the tests that need them (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

BASE_MS = 1_778_000_000_000  # the epoch-ms origin of every built report; `t` offsets are added to it


def fill(report_id: str, slug: str, mode: str, pair_key: str, *, edge: float = 1.0, notional: float = 100.0,
         t: int = 0, market: str = "mkt_1", **extra) -> dict:
    """One FILL operations report for strategy `slug` in `mode` (shadow/live), paired by `pair_key`."""
    return {"report_id": report_id, "report_kind": "OperationsReport", "event_type": "FILL",
            "topic": "polytraders.reports.operations", "bot_id": f"strat.{slug}", "strategy_slug": slug,
            "mode": mode, "pair_key": pair_key, "market_id": market, "size_pusd": notional * 2,
            "notional_pusd": notional, "edge_pusd": edge, "slippage_bps": 2.5, "recorded_at_ms": BASE_MS + t, **extra}


def write_jsonl(path: Path, records: list, *, append: bool = False) -> None:
    """Write `records` (dicts, or raw strings written verbatim) one per line; creates parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


def declaration(exp_id: str = "exp_a", **overrides) -> str:
    """The YAML text of a valid experiment declaration; `overrides` replace fields, a None value drops one."""
    fields = {"experiment_id": exp_id, "principal": "desk:sports", "variant_slug": "v-slug",
              "control_slug": "c-slug", "mode": "shadow_only", "traffic_split_pct": 10,
              "min_samples_for_decision": 100, "started_at": "2026-05-01T00:00:00Z", **overrides}
    lines = []
    for key, value in fields.items():
        if value is None:
            continue
        lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def abn_shadow_fills(effects: dict, n: int, *, seed: int, control: str = "ctl", name: str = "k") -> list[dict]:
    """An A/B/n shadow experiment's fills: n live control fills (edge 1.0 pusd + noise on a notional of 100, so
    0.01 pusd is 1 bp) and, for each, one shadow fill per treatment (slug ``s-<variant id>``) with the same
    pair_key, its edge shifted by the treatment's effect in bps (``effects``: variant id -> bps) plus its own noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        key = f"{name}-{i}"
        base = 1.0 + rng.normal(0, 0.05)
        records.append(fill(f"{key}-c", control, "live", key, edge=base, t=i * 1000))
        for vid, effect in effects.items():
            records.append(fill(f"{key}-{vid}", f"s-{vid}", "shadow", key, t=i * 1000 + 5,
                                edge=base + effect / 100 + rng.normal(0, 0.05)))
    return records
