"""Demo experiments and a demo report archive with known truth (seeded, so every demo run is identical).

Six experiments: a winning, a losing, an A/A and a too-small shadow experiment, a limited-live experiment whose
routing depends on market liquidity (so its naive difference of means is confounded), and an A/B/n shadow
experiment with three treatments (one better, one no different, one worse than the control).
The archive also carries redeliveries and malformed lines so quarantine and accounting are visible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BASE_MS = 1_778_000_000_000  # 2026-05-05T16:53:20Z
STARTED_AT = "2026-05-05T00:00:00Z"


@dataclass(frozen=True)
class DemoExperiment:
    experiment_id: str
    variant_slug: str
    control_slug: str
    true_delta_bps: float
    pairs: int
    min_samples: int = 100
    mode: str = "shadow_only"
    split: float = 10


DEMO_EXPERIMENTS = (
    DemoExperiment("exp_sports_v2", "sports-model-v2", "sports-model", 4.0, 400),
    DemoExperiment("exp_crypto_v3", "crypto-model-v3", "crypto-model", -5.0, 300),
    DemoExperiment("exp_politics_aa", "politics-model-aa", "politics-model", 0.0, 400),
    DemoExperiment("exp_weather_small", "weather-model-v2", "weather-model", 2.0, 50, min_samples=100),
    DemoExperiment("exp_esports_ll", "esports-model-v2", "esports-model", 2.0, 600, mode="limited_live", split=30),
)


@dataclass(frozen=True)
class DemoMultiVariant:
    """An A/B/n shadow experiment: each treatment (variant id, slug, true delta in bps) against one control."""

    experiment_id: str
    control_slug: str
    treatments: tuple[tuple[str, str, float], ...]
    pairs: int
    min_samples: int = 100

    @property
    def comparison_ids(self) -> list[str]:
        return [f"{self.experiment_id}/{vid}" for vid, _, _ in self.treatments]


DEMO_MULTI_VARIANT = (
    DemoMultiVariant("exp_tennis_abn", "tennis-model", (("fast", "tennis-model-fast", 4.0),
                                                        ("safe", "tennis-model-safe", 0.0),
                                                        ("wide", "tennis-model-wide", -5.0)), 400),
)


def demo_experiment_ids() -> list[str]:
    """The demo's experiments as declared (an A/B/n experiment once)."""
    return [e.experiment_id for e in DEMO_EXPERIMENTS] + [e.experiment_id for e in DEMO_MULTI_VARIANT]


def demo_partition_keys() -> list[str]:
    """The demo's units of evaluation (Dagster partitions): each experiment, or each comparison of an A/B/n one."""
    return [e.experiment_id for e in DEMO_EXPERIMENTS] + [c for e in DEMO_MULTI_VARIANT for c in e.comparison_ids]


def _multi_variant_declaration(exp: DemoMultiVariant) -> str:
    share = 1000
    lines = [f"experiment_id: {exp.experiment_id}", f"principal: desk:{exp.control_slug.split('-')[0]}",
             f"variant_slug: {exp.treatments[0][1]}", f"control_slug: {exp.control_slug}", "mode: shadow_only",
             f"traffic_split_pct: {share * len(exp.treatments) / 100:g}",
             f"min_samples_for_decision: {exp.min_samples}", "auto_promote_on_winning: false",
             "require_human_signoff: true", f"started_at: '{STARTED_AT}'", "variants:",
             f"  control: {{slug: {exp.control_slug}, traffic_share_bp: {10000 - share * len(exp.treatments)}}}"]
    lines += [f"  {vid}: {{slug: {slug}, traffic_share_bp: {share}}}" for vid, slug, _ in exp.treatments]
    return "\n".join(lines) + "\n"


def multi_variant_reports(exp: DemoMultiVariant, rng: np.random.Generator, *, sd_bps: float = 10.0) -> list[dict]:
    """One live control fill per opportunity and, mirroring it, one shadow fill of each treatment (same pair_key)
    whose edge differs from the control's by N(true delta, sd) bps."""
    out = []
    for i in range(exp.pairs):
        t = BASE_MS + i * 60_000 + int(rng.integers(0, 5_000))
        notional = float(rng.uniform(200, 800))
        control_bps = float(rng.normal(12, 8))
        market = f"mkt_{exp.control_slug}_{i % 17}"
        key = f"{exp.experiment_id}:opp:{i:06d}"
        out.append(_fill(f"{exp.experiment_id}-c-{i:06d}", exp.control_slug, "live", key, market, notional,
                         control_bps, rng.normal(3, 1), t))
        for vid, slug, delta in exp.treatments:
            out.append(_fill(f"{exp.experiment_id}-{vid}-{i:06d}", slug, "shadow", key, market, notional,
                             control_bps + float(rng.normal(delta, sd_bps)), rng.normal(3, 1), t + 150,
                             experiment_id=exp.experiment_id))
    return out


def _declaration(exp: DemoExperiment) -> str:
    return (
        f"experiment_id: {exp.experiment_id}\n"
        f"principal: desk:{exp.control_slug.split('-')[0]}\n"
        f"variant_slug: {exp.variant_slug}\n"
        f"control_slug: {exp.control_slug}\n"
        f"mode: {exp.mode}\n"
        f"traffic_split_pct: {exp.split:g}\n"
        f"min_samples_for_decision: {exp.min_samples}\n"
        "auto_promote_on_winning: false\n"
        "require_human_signoff: true\n"
        f"started_at: '{STARTED_AT}'\n"
    )


def _fill(report_id: str, slug: str, mode: str, pair_key: str, market: str, notional: float, edge_bps: float,
          slippage: float, t_ms: int, **extra) -> dict:
    return {
        "report_id": report_id, "report_kind": "OperationsReport", "event_type": "FILL",
        "topic": "polytraders.reports.operations", "bot_id": f"strat.{slug}", "strategy_slug": slug, "mode": mode,
        "pair_key": pair_key, "market_id": market, "size_pusd": round(notional / 0.55, 4),
        "notional_pusd": round(notional, 4), "edge_pusd": round(notional * edge_bps / 10_000, 6),
        "slippage_bps": round(slippage, 3), "recorded_at_ms": int(t_ms), **extra,
    }


def shadow_reports(exp: DemoExperiment, rng: np.random.Generator, *, sd_bps: float = 10.0) -> list[dict]:
    """Matched shadow/live fills: the variant's edge differs from the control's by N(true_delta, sd) bps."""
    out = []
    for i in range(exp.pairs):
        t = BASE_MS + i * 60_000 + int(rng.integers(0, 5_000))
        notional = float(rng.uniform(200, 800))
        control_bps = float(rng.normal(12, 8))
        delta = float(rng.normal(exp.true_delta_bps, sd_bps))
        market = f"mkt_{exp.control_slug}_{i % 17}"
        key = f"{exp.experiment_id}:opp:{i:06d}"
        category = ["major", "minor", "futures"][i % 3]
        out.append(_fill(f"{exp.experiment_id}-c-{i:06d}", exp.control_slug, "live", key, market, notional, control_bps,
                         rng.normal(3, 1), t, covariates={"category": category}))
        out.append(_fill(f"{exp.experiment_id}-v-{i:06d}", exp.variant_slug, "shadow", key, market, notional,
                         control_bps + delta, rng.normal(3, 1), t + 150, experiment_id=exp.experiment_id,
                         fill_quality=round(float(rng.uniform(0.7, 1.0)), 3), covariates={"category": category}))
    return out


def limited_live_reports(exp: DemoExperiment, rng: np.random.Generator) -> list[dict]:
    """Live fills routed by a liquidity-dependent propensity: deep markets go to the variant more often and
    also have higher edge, which biases a naive comparison upward."""
    out = []
    for i in range(exp.pairs * 2):
        market = f"mkt_esports_{i % 40}"
        liquidity = "deep" if i % 40 < 20 else "thin"
        category = "minor" if i % 5 == 0 else "major"
        propensity = 0.45 if liquidity == "deep" else 0.15
        treated = rng.random() < propensity
        base = 14.0 if liquidity == "deep" else 6.0
        effect = exp.true_delta_bps if category == "major" else -6.0
        edge_bps = base + (effect if treated else 0.0) + float(rng.normal(0, 8))
        t = BASE_MS + (i // 40) * 30_000 + (i % 40) * 10 + int(rng.integers(0, 2_000))
        out.append(_fill(f"{exp.experiment_id}-{'v' if treated else 'c'}-{i:06d}", exp.variant_slug if treated else exp.control_slug,
                         "live", f"{exp.experiment_id}:opp:{i:06d}", market, float(rng.uniform(200, 800)), edge_bps,
                         rng.normal(3, 1), t, assignment_propensity=propensity,
                         covariates={"liquidity": liquidity, "category": category},
                         **({"experiment_id": exp.experiment_id} if treated else {})))
    return out


def write_demo(experiments_dir: Path, landing_dir: Path, *, seed: int = 20260505) -> dict[str, int]:
    """Write demo declarations and a demo report archive; returns report lines written per experiment."""
    rng = np.random.default_rng(seed)
    experiments_dir.mkdir(parents=True, exist_ok=True)
    landing_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for exp in DEMO_EXPERIMENTS:
        (experiments_dir / f"{exp.experiment_id}.yaml").write_text(_declaration(exp), encoding="utf-8")
        reports = limited_live_reports(exp, rng) if exp.mode == "limited_live" else shadow_reports(exp, rng)
        reports.sort(key=lambda r: (r["recorded_at_ms"], r["report_id"]))
        lines = [json.dumps(r, sort_keys=True) for r in reports]
        if exp.experiment_id == "exp_sports_v2":
            lines.insert(10, lines[3])  # an exact redelivery: counted as a duplicate
            lines.insert(20, "{not json")
            lines.insert(30, json.dumps({**reports[5], "report_id": "bad-notional", "notional_pusd": 0}))
            lines.insert(40, json.dumps({**reports[6], "edge_pusd": reports[6]["edge_pusd"] + 1}))  # conflicting redelivery
        path = landing_dir / f"{exp.experiment_id}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[exp.experiment_id] = len(lines)
    for multi in DEMO_MULTI_VARIANT:  # after the others: their reports stay what they were
        (experiments_dir / f"{multi.experiment_id}.yaml").write_text(_multi_variant_declaration(multi), encoding="utf-8")
        reports = sorted(multi_variant_reports(multi, rng), key=lambda r: (r["recorded_at_ms"], r["report_id"]))
        (landing_dir / f"{multi.experiment_id}.jsonl").write_text(
            "\n".join(json.dumps(r, sort_keys=True) for r in reports) + "\n", encoding="utf-8")
        counts[multi.experiment_id] = len(reports)
    return counts
