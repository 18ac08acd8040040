"""confidence_intervals: one look per experiment partition (the intervals stage)."""

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
from experimenttracker_pipeline.stages.reporting import charts
from experimenttracker_pipeline.stages.reporting.deciding import fmt_bps, fmt_interval, method_name, rounded
from experimenttracker_pipeline.stages.reporting.overview import ci_over_time_png, power_progress, srm_state
from experimenttracker_pipeline.stages.reporting.verdict_view import power_markdown, srm_markdown


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


def intervals_metadata(db, result: IntervalsResult, *, chart: bool = True) -> dict:
    """Metadata of one experiment's confidence_intervals materialization: the chosen interval first, the others as
    supporting evidence, SRM and power progress on every look, the CI-over-time chart (1000x500, y-axis fitted to
    the looks that matter, MDE band and decision look marked). Numbers rounded for reading; the store keeps full
    precision."""
    e = result.evaluation
    r = lambda key, digits=3: rounded(e.get(key), digits)  # noqa: E731
    table = "| role | interval | 95% interval | p |\n|---|---|---|---|\n" + "\n".join(
        f"| {role} | {name} | {fmt_interval(e.get(lo), e.get(hi))} | {_p(e.get(p))} |" for role, name, lo, hi, p in (
            ("**this look's paired interval**", f"**{method_name(e['ci_method'])}**", "ci_95_low", "ci_95_high", "p_value"),
            ("supporting evidence", "always-valid confidence sequence", "always_valid_ci_95_low", "always_valid_ci_95_high", "always_valid_p_value"),
            ("supporting evidence", "fixed-horizon t interval", "fixed_ci_95_low", "fixed_ci_95_high", "fixed_p_value")))
    table += ("\n\nThe verdict's **deciding CI** is shown first on the `verdicts` page; for a limited-live experiment "
              "whose routing was not uniformly random it is the AIPW estimate, and these paired intervals are "
              "supporting evidence.")
    # A pass over many experiments leaves the chart to the experiment's HTML report (see reporting/renders.py).
    chart = charts.b64(ci_over_time_png(db, result.experiment_id, e, verdict=e)) if chart else None
    progress, srm = power_progress(e), srm_state(e)
    metadata = {
        "samples": e["samples"], "edge_delta_bps": number_or_null(r("edge_delta_bps")),
        "ci_95_low": number_or_null(r("ci_95_low")), "ci_95_high": number_or_null(r("ci_95_high")),
        "fixed_ci_95_low": number_or_null(r("fixed_ci_95_low")), "fixed_ci_95_high": number_or_null(r("fixed_ci_95_high")),
        "p_value": number_or_null(r("p_value", 4)), "fixed_p_value": number_or_null(r("fixed_p_value", 4)),
        "power": number_or_null(progress["power"]), "required_samples": number_or_null(progress["required_samples"]),
        "expected_days_to_decision": number_or_null(progress["expected_days"]),
        "power_progress": dg.MetadataValue.md(power_markdown(progress)),
        "srm": dg.MetadataValue.md(srm_markdown(srm)), "srm_p_value": number_or_null(srm["p_value"]),
        "ci_method": e["ci_method"], "evaluation_id": result.evaluation_id, "intervals": dg.MetadataValue.md(table),
        "metrics": dg.MetadataValue.md(_metrics_md(e.get("metrics") or {})),
        "chance_to_beat_control": number_or_null(rounded((e.get("bayesian") or {}).get("chance_to_beat_control"), 4)),
        "variance_reduction": number_or_null(rounded((e.get("regression_adjustment") or {}).get("variance_reduction"), 4)),
    }
    if chart:
        metadata["ci_over_time"] = dg.MetadataValue.md(f"![confidence sequence over samples](data:image/png;base64,{chart})")
    return metadata


def _p(value) -> str:
    number = rounded(value, 4)
    return "n/a" if number is None else ("< 0.0001" if number == 0 else f"{number}")


def _metrics_md(metrics: dict) -> str:
    rows = [f"| {name} | {fmt_bps(ci.get('estimate'))} | {fmt_interval(ci.get('ci_95_low'), ci.get('ci_95_high'))} | {ci.get('n', 'n/a')} |"
            for name, ci in sorted(metrics.items()) if isinstance(ci, dict)]
    return "| metric | estimate | 95% interval | n |\n|---|---|---|---|\n" + "\n".join(rows) if rows else "No per-metric CIs."
