"""verdicts: the verdict per experiment partition (the verdict stage)."""


import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
)
from experimenttracker_pipeline.stages.governance import operations as governance_ops
from experimenttracker_pipeline.stages.verdict.decision import VerdictResult, decide
from experimenttracker_pipeline.defs.metadata import number_or_null
from experimenttracker_pipeline.defs.causal_effects import causal_estimates


@dg.asset(partitions_def=experiment_partitions, deps=[causal_estimates], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def verdicts(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """The verdict (variant_wins, control_wins, inconclusive, insufficient_samples, srm_blocked,
    harm_detected) with the CI it used; emits EXPERIMENT_RESULT (spec section 13) only when the verdict or
    the evidence changed materially."""
    db = store.get_store()
    return for_each_experiment(context, db, lambda experiment_id: decide(db, experiment_id),
                               lambda result: verdict_metadata(db, result), ["verdict_id"])


def verdict_metadata(db, result: VerdictResult) -> dict:
    """Metadata of one experiment's verdicts materialization (with the persona views)."""
    v = result.verdict
    views = governance_ops.persona_views(db, result.experiment_id)
    return {
        "verdict": v["verdict"], "basis": v["basis"], "samples": v["samples"],
        "edge_delta_bps": number_or_null(v["edge_delta_bps"]), "ci_95_low": number_or_null(v["ci_95_low"]), "ci_95_high": number_or_null(v["ci_95_high"]),
        "drift": bool(v["drift_signalled"]), "reason_codes": dg.MetadataValue.json(v["reason_codes"]),
        "report_emitted": result.report["report_id"] if result.report else dg.MetadataValue.null(),
        "plain_english": dg.MetadataValue.md(v["plain_english"] or ""),
        "stop_rules": dg.MetadataValue.json(v.get("stop_rules") or []),
        "view_trader": dg.MetadataValue.md(views.get("trader", "")),
        "view_risk": dg.MetadataValue.md(views.get("risk", "")),
        "view_governance": dg.MetadataValue.md(views.get("governance", "")),
    }
