"""confidence_intervals: one look per experiment partition (the intervals stage)."""

import base64
import io
import time

import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
)
from experimenttracker_pipeline.defs.samples import experiment_samples
from experimenttracker_pipeline.stages.intervals.evaluation import (
    IntervalsResult,
    compute_intervals,
)
from experimenttracker_pipeline.defs.metadata import number_or_null
from experimenttracker_pipeline.stages.intervals.queries import cumulative_delta_stats


def _ci_chart(store, experiment_id: str, evaluation: dict) -> str | None:
    """A small PNG of the confidence sequence narrowing over samples (markdown-embedded), drawn from ~200
    cumulative checkpoints aggregated in SQL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import experimenttracker_pipeline.stats as st

    checkpoints = [st.SufficientStats(*c) for c in cumulative_delta_stats(store, experiment_id, int(evaluation["samples"]))]
    checkpoints = [c for c in checkpoints if c.n >= 2]
    if len(checkpoints) < 2:
        return None
    tuning = evaluation.get("tuning_samples") or 100
    intervals = [st.confidence_sequence(c, evaluation.get("alpha") or 0.05, n_tune=tuning) for c in checkpoints]
    n = [c.n for c in checkpoints]
    fig, ax = plt.subplots(figsize=(4.5, 2.4), dpi=80)
    ax.fill_between(n, [i.low for i in intervals], [i.high for i in intervals], alpha=0.3, label="always-valid 95%")
    ax.plot(n, [i.estimate for i in intervals], lw=1)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("samples")
    ax.set_ylabel("edge delta (bps)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


@dg.asset(partitions_def=experiment_partitions, deps=[experiment_samples], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def confidence_intervals(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """One look at the experiment: the always-valid confidence sequence (the verdict's default basis), the
    fixed-horizon t interval (always reported), group-sequential bounds when declared, power, SRM and
    per-metric CIs, all from sufficient statistics aggregated in SQL."""
    db = store.get_store()

    def evaluate(experiment_id: str) -> IntervalsResult:
        started = time.perf_counter()
        result = compute_intervals(db, experiment_id)
        db.record_stage_duration("evaluation", time.perf_counter() - started)  # read by the metrics endpoint
        return result

    return for_each_experiment(context, db, evaluate, lambda result: intervals_metadata(db, result), ["evaluation_id"])


def intervals_metadata(db, result: IntervalsResult) -> dict:
    """Metadata of one experiment's confidence_intervals materialization."""
    e = result.evaluation
    table = "| interval | low | high | p |\n|---|---|---|---|\n" + "\n".join(
        f"| {name} | {e.get(lo)} | {e.get(hi)} | {e.get(p)} |" for name, lo, hi, p in (
            (f"chosen ({e['ci_method']})", "ci_95_low", "ci_95_high", "p_value"),
            ("always-valid", "always_valid_ci_95_low", "always_valid_ci_95_high", "always_valid_p_value"),
            ("fixed-horizon t", "fixed_ci_95_low", "fixed_ci_95_high", "fixed_p_value")))
    chart = _ci_chart(db, result.experiment_id, e)
    if chart:
        table += f"\n\n![confidence sequence](data:image/png;base64,{chart})"
    return {
        "samples": e["samples"], "edge_delta_bps": number_or_null(e["edge_delta_bps"]),
        "ci_95_low": number_or_null(e["ci_95_low"]), "ci_95_high": number_or_null(e["ci_95_high"]),
        "fixed_ci_95_low": number_or_null(e["fixed_ci_95_low"]), "fixed_ci_95_high": number_or_null(e["fixed_ci_95_high"]),
        "p_value": number_or_null(e["p_value"]), "fixed_p_value": number_or_null(e["fixed_p_value"]), "power": number_or_null(e.get("power")),
        "ci_method": e["ci_method"], "evaluation_id": result.evaluation_id, "intervals": dg.MetadataValue.md(table),
        "metrics": dg.MetadataValue.json(e["metrics"]),
        "chance_to_beat_control": number_or_null((e.get("bayesian") or {}).get("chance_to_beat_control")),
        "variance_reduction": number_or_null((e.get("regression_adjustment") or {}).get("variance_reduction")),
    }
