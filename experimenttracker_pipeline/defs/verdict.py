"""verdicts: the verdict per experiment partition (the verdict stage)."""

from pathlib import Path

import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
)
from experimenttracker_pipeline.stages.design.recommendation import allocation_markdown, latest_allocation
from experimenttracker_pipeline.stages.governance import operations as governance_ops
from experimenttracker_pipeline.stages.reporting import verdict_view
from experimenttracker_pipeline.stages.reporting.html_report import report_file_name, write_experiment_report
from experimenttracker_pipeline.stages.verdict.decision import VerdictResult, decide, experiment_overall
from experimenttracker_pipeline.defs.metadata import number_or_null
from experimenttracker_pipeline.defs.causal_effects import causal_estimates


@dg.asset(partitions_def=experiment_partitions, deps=[causal_estimates], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def verdicts(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """The verdict (variant_wins, control_wins, inconclusive, insufficient_samples, srm_blocked,
    harm_detected) with the one deciding CI it used, the supporting intervals, SRM and power progress; emits
    EXPERIMENT_RESULT (spec section 13) only when the verdict or the evidence changed materially, and writes the
    experiment's HTML report under the data folder."""
    db = store.get_store()
    return for_each_experiment(context, db, lambda experiment_id: decide(db, experiment_id),
                               lambda result: verdict_metadata(db, result, store.reports_dir), ["verdict_id"])


def verdict_metadata(db, result: VerdictResult, reports_dir: str | None = None, *, write_report: bool = True) -> dict:
    """Metadata of one experiment's verdicts materialization: the deciding CI first (rounded for reading; the
    store keeps full precision), supporting evidence, SRM, power progress, the persona views, the report and, for
    an experiment that declares adaptive allocation, its newest recommended shares."""
    v = result.verdict
    views = governance_ops.persona_views(db, result.experiment_id)
    shown = verdict_view.verdict_summary(db, result.experiment_id, v)
    metadata = {
        "verdict": v["verdict"],
        "deciding_ci": shown["deciding_ci_text"],
        "deciding_ci_method": shown["deciding_ci"]["method"],
        "plain_english": dg.MetadataValue.md(v["plain_english"] or ""),
        "intervals": dg.MetadataValue.md(shown["intervals_md"]),
        "samples": v["samples"],
        "edge_delta_bps": number_or_null(shown["rounded"]["edge_delta_bps"]),
        "ci_95_low": number_or_null(shown["rounded"]["ci_95_low"]),
        "ci_95_high": number_or_null(shown["rounded"]["ci_95_high"]),
        "basis": v["basis"],
        "power_progress": dg.MetadataValue.md(shown["power_md"]),
        "srm": dg.MetadataValue.md(shown["srm_md"]),
        "srm_p_value": number_or_null(shown["srm"]["p_value"]),
        "power": number_or_null(shown["power"]["power"]),
        "required_samples": number_or_null(shown["power"]["required_samples"]),
        "expected_days_to_decision": number_or_null(shown["power"]["expected_days"]),
        "drift": bool(v["drift_signalled"]),
        "harmed_segments": dg.MetadataValue.md(shown["harmed_md"]),
        "reason_codes": dg.MetadataValue.md(shown["reason_codes_md"]),
        "stop_rules": dg.MetadataValue.md(shown["stop_rules_md"]),
        "report_emitted": result.report["report_id"] if result.report else dg.MetadataValue.null(),
        "view_trader": dg.MetadataValue.md(views.get("trader", "")),
        "view_risk": dg.MetadataValue.md(views.get("risk", "")),
        "view_governance": dg.MetadataValue.md(views.get("governance", "")),
    }
    if "/" in result.experiment_id:
        metadata["experiment_overall"] = dg.MetadataValue.md(overall_md(db, result.experiment_id.split("/", 1)[0]))
    allocation = latest_allocation(db, result.experiment_id)
    if allocation is not None:  # declared adaptive allocation: the newest recommendation, per arm
        metadata["allocation"] = dg.MetadataValue.md(allocation_markdown(allocation))
        metadata["allocation_json"] = dg.MetadataValue.json(allocation)
        metadata["allocation_report_id"] = allocation["report_id"]
        for arm, row in allocation["arms"].items():  # plotted across materializations
            metadata[f"recommended_share_bp_{arm}"] = number_or_null(row["recommended_share_bp"])
    if reports_dir:
        # The HTML report follows the EXPERIMENT_RESULT reports: rewritten when one is emitted (or the file is
        # missing), not at every look; the sign-off job and `experimenttracker report` rewrite it too.
        path = Path(reports_dir) / report_file_name(result.experiment_id)
        if write_report and (result.report is not None or not path.exists()):
            path = write_experiment_report(db, result.experiment_id, path)
        if path is not None and path.exists():
            metadata["html_report"] = dg.MetadataValue.path(str(path))
            metadata["html_report_url"] = dg.MetadataValue.url(path.resolve().as_uri())
    return metadata


def overall_md(db, experiment_id: str) -> str:
    """An A/B/n experiment's overall verdict and every variant's, as a markdown table (on each comparison's
    verdicts partition, so the UI answers "which variant wins" wherever one looks)."""
    overall = experiment_overall(db, experiment_id)
    if overall is None:
        return ""
    lines = [f"**{experiment_id}: {overall['verdict']}**"
             + (f" (winner: {overall['winning_variant']})" if overall["winning_variant"] else "")
             + f"; ranking {' > '.join(overall['ranking'])}; Pareto set {', '.join(overall['pareto_set']) or 'none'}",
             "", "| variant | slug | verdict | deciding CI (bps) | samples | drift |", "|---|---|---|---|---|---|"]
    for vid, v in overall["variants"].items():
        ci = (f"[{v['ci_95_low']:+.2f}, {v['ci_95_high']:+.2f}]" if v["ci_95_low"] is not None and v["ci_95_high"] is not None
              else "n/a")
        lines.append(f"| {vid} | {v['variant_slug']} | {v['verdict']} | {ci} | {v['samples']} | "
                     f"{'signalled' if v['drift_signalled'] else 'no'} |")
    lines.append(f"\nEach variant tested at alpha {overall['multiple_testing']['alpha_per_treatment']:.4f} "
                 f"(0.05 / {overall['multiple_testing']['treatments']}, Bonferroni).")
    return "\n".join(lines)
