"""What the overview and the experiment reports show, read from the store: one row per experiment with its
deciding CI, power progress, SRM, harm, drift and promotion state; the CI-over-time points of one experiment."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from experimenttracker_pipeline.stages.causal_effects.queries import latest_causal, latest_causal_all
from experimenttracker_pipeline.stages.declarations.queries import experiment_row, experiment_rows
from experimenttracker_pipeline.stages.intervals.queries import cumulative_delta_stats, latest_evaluation
from experimenttracker_pipeline.stages.promotion.signoff import promotion_state
from experimenttracker_pipeline.stages.reporting import charts
from experimenttracker_pipeline.stages.reporting.deciding import deciding_ci, fmt_interval, rounded
from experimenttracker_pipeline.stages.reporting.queries import (
    drift_signal_states,
    evaluation_history,
    latest_evaluations,
)
from experimenttracker_pipeline.stages.samples.queries import pairing_states
from experimenttracker_pipeline.stages.verdict.queries import latest_verdict, latest_verdicts
from experimenttracker_pipeline.store import Store

# Overview table columns: (name, Dagster table type, description)
OVERVIEW_COLUMNS = (
    ("experiment_id", "string", "experiment"),
    ("verdict", "string", "latest verdict"),
    ("deciding_ci", "string", "the interval the verdict was decided on, bps"),
    ("ci_method", "string", "method of the deciding CI"),
    ("estimate_bps", "float", "edge delta estimate of the deciding method, bps"),
    ("samples", "int", "paired samples"),
    ("required_samples", "int", "samples the plan needs for the declared power"),
    ("power", "float", "power at the current sample size"),
    ("expected_days", "float", "expected days until the required samples are reached (0: reached)"),
    ("srm_p_value", "float", "sample ratio mismatch p-value (limited-live; shadow pairs every fill)"),
    ("harmed_segments", "string", "segments measurably worse off"),
    ("drift_state", "string", "drift signal to the StrategyRegistry: delivery status and attempts"),
    ("promotion_state", "string", "promotion gate state"),
    ("last_sample_at", "string", "time of the newest paired sample (UTC)"),
)


def iso_ms(ms: Any) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _stamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ") if value.tzinfo is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def drift_state(signal: dict[str, Any] | None, drift_flag: bool = False) -> dict[str, Any]:
    """The experiment's drift-signal state, shown every time (also when nothing new was signalled)."""
    if signal is None:
        return {"state": "flagged, not yet recorded" if drift_flag else "none", "sent_at": None,
                "delivery_status": None, "attempts": 0, "delivered_at": None, "last_error": None}
    attempts = int(signal.get("attempts") or 0)
    return {"state": f"{signal['delivery_status']} ({attempts} attempt{'s' if attempts != 1 else ''})",
            "signal_type": signal.get("signal_type"), "sent_at": _stamp(signal.get("created_at")),
            "delivery_status": signal["delivery_status"], "attempts": attempts,
            "delivered_at": _stamp(signal.get("delivered_at")), "last_error": signal.get("last_error")}


def power_progress(evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """Samples against the required sample size, power and expected days to a decision."""
    e = evaluation or {}
    samples, required = e.get("samples"), e.get("required_samples")
    fraction = (min(1.0, samples / required) if isinstance(samples, (int, float)) and required else None)
    return {"samples": samples, "required_samples": required, "progress": rounded(fraction, 3),
            "power": rounded(e.get("power"), 3), "power_basis": e.get("power_basis"),
            "expected_days": rounded(e.get("expected_days_to_decision"), 1),
            "samples_per_day": rounded(e.get("samples_per_day"), 1)}


def srm_state(evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """SRM of the latest look: p-value and counts (limited-live), or why there is none (shadow pairs every fill)."""
    srm = (evaluation or {}).get("srm")
    if not srm:
        note = (evaluation or {}).get("srm_note") or "not applicable: every shadow fill is paired"
        return {"p_value": None, "mismatch": False, "note": note}
    return {"p_value": rounded(srm.get("p_value"), 4), "mismatch": bool(srm.get("mismatch")),
            "n_variant": srm.get("n_variant"), "n_control": srm.get("n_control"),
            "expected_share": rounded(srm.get("expected_share"), 3), "observed_share": rounded(srm.get("observed_share"), 3),
            "note": "sample ratio mismatch" if srm.get("mismatch") else "traffic split as declared"}


def overview_rows(store: Store) -> list[dict[str, Any]]:
    """One row per experiment (OVERVIEW_COLUMNS), numbers rounded for reading, plus the full-precision deciding CI."""
    verdicts, evaluations = latest_verdicts(store), latest_evaluations(store)
    states, signals = pairing_states(store), drift_signal_states(store)
    rows = []
    stored = experiment_rows(store)
    parents = {e["parent_experiment_id"] for e in stored if e.get("parent_experiment_id")}
    for exp in stored:
        eid = exp["experiment_id"]
        if eid in parents:
            rows.append(_overall_row(store, exp))
            continue
        verdict = json.loads(verdicts[eid]["verdict_json"]) if eid in verdicts else None
        evaluation = json.loads(evaluations[eid]["evaluation_json"]) if eid in evaluations else None
        state = states.get(eid, {})
        ci = deciding_ci(verdict) if verdict else None
        progress, srm = power_progress(evaluation), srm_state(evaluation)
        rows.append({
            "experiment_id": eid, "verdict": verdict["verdict"] if verdict else "not evaluated",
            "deciding_ci": fmt_interval(ci["ci_95_low"], ci["ci_95_high"]) if ci else "n/a",
            "ci_method": ci["method"] if ci else None, "estimate_bps": rounded(ci["estimate_bps"]) if ci else None,
            "samples": int(state.get("samples") or 0), "required_samples": progress["required_samples"],
            "power": rounded(progress["power"], 2), "expected_days": progress["expected_days"],
            "srm_p_value": srm["p_value"],
            "harmed_segments": ", ".join(verdict.get("harmed_segments") or []) if verdict else "",
            "drift_state": drift_state(signals.get(eid), bool(verdict and verdict.get("drift_signalled")))["state"],
            "promotion_state": promotion_state(store, eid).state if verdict else "no_verdict",
            "last_sample_at": iso_ms(state.get("last_sample_at_ms")),
            # full precision, for charts (not table columns)
            "_ci": ci, "_mode": exp["mode"], "_mde_bps": _mde(exp),
            "_comparison": exp.get("parent_experiment_id") is not None,
        })
    return rows


def _overall_row(store: Store, exp: dict[str, Any]) -> dict[str, Any]:
    """The row of an A/B/n experiment: its overall verdict (which variant wins, if any) on the deciding CI of the
    winner, or else of the best-ranked treatment; its comparisons have their own rows."""
    from experimenttracker_pipeline.stages.verdict.decision import experiment_overall

    overall = experiment_overall(store, exp["experiment_id"]) or {}
    variants = overall.get("variants") or {}
    evaluated = any(v["verdict"] != "insufficient_samples" or v["ci_95_low"] is not None for v in variants.values())
    winner = overall.get("winning_variant")
    label = overall.get("verdict", "not evaluated") if evaluated else "not evaluated"
    low, high = overall.get("ci_95_low"), overall.get("ci_95_high")
    return {
        "experiment_id": exp["experiment_id"], "verdict": f"{label} ({winner})" if winner else label,
        "deciding_ci": (f"{fmt_interval(low, high)} ({overall.get('ci_variant')})" if low is not None else "n/a"),
        "ci_method": "per variant, alpha/k", "estimate_bps": rounded(overall.get("edge_delta_bps")),
        "samples": int(overall.get("samples") or 0), "required_samples": None, "power": None, "expected_days": None,
        "srm_p_value": None, "harmed_segments": "",
        "drift_state": ", ".join(f"{vid}: signalled" for vid, v in variants.items() if v["drift_signalled"]) or "none",
        "promotion_state": "per variant", "last_sample_at": None,
        "_ci": None, "_mode": exp["mode"], "_mde_bps": _mde(exp), "_verdict": label,
    }


def _mde(exp: dict[str, Any]) -> float | None:
    """The declared minimum detectable effect (statistics.mde_bps), or None."""
    try:
        from experimenttracker_pipeline.model.experiment import experiment_from_row

        return experiment_from_row(exp).statistics.mde_bps
    except Exception:  # noqa: BLE001 - a chart without the MDE band rather than no overview
        return None


def mde_band(exp: dict[str, Any], evaluation: dict[str, Any] | None) -> tuple[float | None, str]:
    """(MDE in bps, label): the declared MDE, else the effect a fixed-horizon test of the current sample size
    detects with 80% power at alpha 0.05, (z_0.975 + z_0.8) * sd / sqrt(n)."""
    declared = _mde(exp)
    if declared:
        return float(declared), f"declared MDE ±{declared:g} bps"
    e = evaluation or {}
    sd, n = e.get("sd_bps"), e.get("samples")
    if not sd or not n:
        return None, ""
    value = (1.959964 + 0.841621) * float(sd) / float(n) ** 0.5
    return value, f"MDE at {int(n)} samples, 80% power: ±{value:.2f} bps (none declared)"


def overview_forest(rows: list[dict[str, Any]], limit: int = 40) -> bytes | None:
    """Forest plot of the deciding CIs of (up to ``limit``) evaluated experiments."""
    shown = [r for r in rows if r["_ci"] and r["_ci"]["ci_95_low"] is not None][:limit]
    items = [charts.IntervalRow(f"{r['experiment_id']} ({r['verdict']})", r["_ci"]["estimate_bps"], r["_ci"]["ci_95_low"],
                                r["_ci"]["ci_95_high"], flagged=r["verdict"] in ("control_wins", "harm_detected")
                                or bool(r["harmed_segments"]), note=r["ci_method"] or "") for r in shown]
    more = len([r for r in rows if r["_ci"]]) - len(shown)
    return charts.forest_plot(items, "Deciding 95% CI of every experiment" + (f" (first {limit}; {more} more)" if more > 0 else ""))


def ci_points(store: Store, experiment_id: str, evaluation: dict[str, Any]) -> list[charts.SequencePoint]:
    """The always-valid confidence sequence at ~200 checkpoints (window sums in SQL, no sample rows loaded)."""
    import experimenttracker_pipeline.stats as st

    checkpoints = [st.SufficientStats(*c) for c in cumulative_delta_stats(store, experiment_id, int(evaluation["samples"]))]
    tuning = evaluation.get("tuning_samples") or 100
    out = []
    for c in checkpoints:
        if c.n < 2:
            continue
        i = st.confidence_sequence(c, evaluation.get("alpha") or 0.05, n_tune=tuning)
        out.append(charts.SequencePoint(c.n, i.estimate, i.low, i.high))
    return out


def decision_look(history: list[dict[str, Any]]) -> int | None:
    """The sample count of the first look of the run of looks that ends in the current verdict."""
    if not history:
        return None
    current = history[-1]["verdict"]
    n = history[-1]["samples"]
    for row in reversed(history):
        if row["verdict"] != current:
            break
        n = row["samples"]
    return int(n)


def ci_over_time_png(store: Store, experiment_id: str, evaluation: dict[str, Any] | None = None,
                     verdict: dict[str, Any] | None = None) -> bytes | None:
    """The CI-over-time chart of one experiment (MDE band, looks, decision look, the deciding CI)."""
    exp = experiment_row(store, experiment_id)
    if evaluation is None:
        row = latest_evaluation(store, experiment_id)
        evaluation = json.loads(row["evaluation_json"]) if row else None
    if exp is None or not evaluation:
        return None
    if verdict is None:
        row = latest_verdict(store, experiment_id)
        verdict = json.loads(row["verdict_json"]) if row else None
    history = evaluation_history(store, experiment_id)  # every look, the current one included
    decided = verdict["verdict"] if verdict else evaluation.get("verdict")
    look_n = decision_look(history)
    label = (f"decision look: {decided} since {look_n} samples" if decided in ("variant_wins", "control_wins", "harm_detected")
             else f"latest look: {decided}")
    ci = deciding_ci(verdict or evaluation)
    deciding = ((ci["estimate_bps"], ci["ci_95_low"], ci["ci_95_high"])
                if None not in (ci["estimate_bps"], ci["ci_95_low"], ci["ci_95_high"]) else None)
    mde, mde_label = mde_band(exp, evaluation)
    looks = tuple(int(h["samples"]) for h in history)
    # The intervals asset and the HTML report of one look draw the same chart: drawn once (~0.3 s each).
    key = (store.url if hasattr(store, "url") else id(store), experiment_id, int(evaluation["samples"]), deciding,
           ci["method"], look_n, label, looks, mde)
    if key not in _CHART_CACHE:
        if len(_CHART_CACHE) >= 64:
            _CHART_CACHE.pop(next(iter(_CHART_CACHE)))
        _CHART_CACHE[key] = charts.ci_over_time(
            ci_points(store, experiment_id, evaluation), title=f"{experiment_id}: edge delta over samples", mde_bps=mde,
            mde_label=mde_label, decision_n=look_n, decision_label=label, looks=looks, deciding=deciding,
            deciding_label=f"deciding CI ({ci['method']})", min_samples=int(exp.get("min_samples_for_decision") or 0))
    return _CHART_CACHE[key]


_CHART_CACHE: dict[tuple, bytes | None] = {}


def segment_rows(causal: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-segment effects of the causal layer (tested segments), harmed ones flagged."""
    out = []
    for s in (causal or {}).get("segments") or []:
        if s.get("ci_95_low") is None or s.get("ci_95_high") is None:
            continue
        out.append({"segment": f"{s.get('covariate')}={s.get('value')}", "n": s.get("n"),
                    "estimate_bps": rounded(s.get("estimate_bps")), "ci_95_low": s.get("ci_95_low"),
                    "ci_95_high": s.get("ci_95_high"), "harmed": bool(s.get("harmed"))})
    return out


def segment_forest_png(experiment_id: str, causal: dict[str, Any] | None) -> bytes | None:
    rows = segment_rows(causal)
    items = [charts.IntervalRow(r["segment"] + (" (HARMED)" if r["harmed"] else ""), r["estimate_bps"], r["ci_95_low"],
                                r["ci_95_high"], flagged=r["harmed"], note=f"n={r['n']}") for r in rows]
    return charts.forest_plot(items, f"{experiment_id}: effect by segment (harmed segments in red)")


def latest_causal_doc(store: Store, experiment_id: str) -> dict[str, Any] | None:
    row = latest_causal(store, experiment_id)
    return json.loads(row["result_json"]) if row else None


def latest_causal_docs(store: Store) -> dict[str, dict[str, Any]]:
    return {k: json.loads(v["result_json"]) for k, v in latest_causal_all(store).items()}
