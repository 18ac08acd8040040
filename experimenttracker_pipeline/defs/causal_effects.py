"""causal_estimates: IPW/AIPW and segment effects per experiment partition (the causal effects stage)."""


import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
)
from experimenttracker_pipeline.stages.causal_effects.estimation import (
    CausalRun,
    compute_causal,
)
from experimenttracker_pipeline.defs.metadata import number_or_null
from experimenttracker_pipeline.defs.intervals import confidence_intervals


@dg.asset(partitions_def=experiment_partitions, deps=[confidence_intervals], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def causal_estimates(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """IPW / doubly robust (AIPW) effects for limited-live experiments (propensities logged or estimated),
    overlap diagnostics, and segment effects with Holm-corrected CIs; a segment whose CI lies below the harm
    margin is a harmed segment and blocks any promotion."""
    db = store.get_store()
    return for_each_experiment(context, db, lambda experiment_id: compute_causal(db, experiment_id), causal_metadata,
                               ["causal_id"])


def causal_metadata(run: CausalRun) -> dict:
    r = run.result
    rows = []
    for name in ("naive_diff", "ipw", "aipw", "paired"):
        value = r.get(name) if isinstance(r.get(name), dict) else None
        if value:
            rows.append(f"| {name} | {value.get('estimate_bps')} | {value.get('ci_95_low')} | {value.get('ci_95_high')} | {value.get('se')} |")
    ate = "| method | estimate (bps) | CI low | CI high | SE |\n|---|---|---|---|---|\n" + "\n".join(rows) if rows else "n/a"
    segments = "| segment | n | estimate | CI low | CI high | harmed |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| {s.get('covariate')}={s.get('value')} | {s.get('n')} | {s.get('estimate_bps')} | {s.get('ci_95_low')} | "
        f"{s.get('ci_95_high')} | {'**HARMED**' if s.get('harmed') else ''} |" for s in r.get("segments") or [])
    aipw = r.get("aipw") or {}
    return {
        "aipw_estimate_bps": number_or_null(aipw.get("estimate_bps")), "naive_diff_bps": number_or_null(r.get("naive_diff_bps")),
        "harmed_segments": dg.MetadataValue.json(r.get("harmed_segments") or []),
        "warnings": dg.MetadataValue.json(r.get("warnings") or []),
        "overlap": dg.MetadataValue.json(r.get("overlap") or {}),
        "ate_by_method": dg.MetadataValue.md(ate), "segments": dg.MetadataValue.md(segments),
        "causal_id": run.causal_id,
    }


