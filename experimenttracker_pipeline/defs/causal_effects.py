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
from experimenttracker_pipeline.stages.reporting.deciding import rounded
from experimenttracker_pipeline.defs.intervals import confidence_intervals


@dg.asset(partitions_def=experiment_partitions, deps=[confidence_intervals], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def causal_estimates(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """IPW / doubly robust (AIPW) effects for limited-live experiments (propensities logged or estimated),
    overlap diagnostics, and segment effects with Holm-corrected CIs; a segment whose CI lies below the harm
    margin is a harmed segment and blocks any promotion. A sandbox experiment gets the off-policy values (IPS,
    SNIPS, DR) of its candidate policy from the control's logs instead."""
    db = store.get_store()
    return for_each_experiment(context, db, lambda experiment_id: compute_causal(db, experiment_id), causal_metadata,
                               ["causal_id"])


def _n(value, digits: int = 2) -> str:
    number = rounded(value, digits)
    return "n/a" if number is None else f"{number:g}"


def _reading(value) -> str:
    """A diagnostic value for reading: numbers rounded, mappings and lists flattened (no JSON braces)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return _n(value, 3)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_reading(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " to ".join(_reading(v) for v in value) if len(value) == 2 else ", ".join(_reading(v) for v in value)
    return str(value)


def causal_metadata(run: CausalRun) -> dict:
    """Metadata of one causal_estimates materialization: tables in markdown, numbers rounded for reading (the store
    keeps full precision)."""
    r = run.result
    rows = []
    for name in ("naive_diff", "ipw", "aipw", "paired"):
        value = r.get(name) if isinstance(r.get(name), dict) else None
        if value:
            rows.append(f"| {name} | {_n(value.get('estimate_bps'))} | {_n(value.get('ci_95_low'))} | "
                        f"{_n(value.get('ci_95_high'))} | {_n(value.get('se'), 3)} |")
    ate = ("| method | estimate (bps) | CI low | CI high | SE |\n|---|---|---|---|---|\n" + "\n".join(rows)
           + "\n\nSingle-look intervals (supporting evidence): the verdict's **deciding CI** is on the `verdicts` page."
           if rows else "n/a")
    segments = "| segment | n | estimate | CI low | CI high | harmed |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| {s.get('covariate')}={s.get('value')} | {s.get('n')} | {_n(s.get('estimate_bps'))} | {_n(s.get('ci_95_low'))} | "
        f"{_n(s.get('ci_95_high'))} | {'**HARMED**' if s.get('harmed') else ''} |" for s in r.get("segments") or [])
    aipw = r.get("aipw") or {}
    sandbox = r.get("sandbox") or {}
    overlap = r.get("overlap") or sandbox.get("overlap") or {}
    overlap_md = ("| diagnostic | value |\n|---|---|\n" + "\n".join(
        f"| {k.replace('_', ' ')} | {_reading(v)} |"
        for k, v in sorted(overlap.items()))) if overlap else "No overlap diagnostics (paired design)."
    harmed = r.get("harmed_segments") or []
    warnings = r.get("warnings") or []
    return {
        "aipw_estimate_bps": number_or_null(rounded(aipw.get("estimate_bps"), 3)),
        "naive_diff_bps": number_or_null(rounded(r.get("naive_diff_bps"), 3)),
        "harmed_segments": dg.MetadataValue.md("\n".join(f"- {h}" for h in harmed) if harmed else "None."),
        "warnings": dg.MetadataValue.md("\n".join(f"- `{w}`" for w in warnings) if warnings else "None."),
        "overlap": dg.MetadataValue.md(overlap_md),
        "ate_by_method": dg.MetadataValue.md(ate), "segments": dg.MetadataValue.md(segments),
        "off_policy": dg.MetadataValue.md(_off_policy_md(sandbox)),
        "causal_id": run.causal_id,
    }


def _off_policy_md(sandbox: dict) -> str:
    """A sandbox experiment's off-policy values: the candidate's, the logging policy's, and the difference."""
    if not sandbox.get("candidate"):
        return "Not a sandbox experiment." if not sandbox else f"{sandbox.get('logs', 0)} usable logs: too few to estimate."
    rows = [(f"candidate {name.upper()}", sandbox["candidate"].get(name) or {}) for name in ("ips", "snips", "dr")]
    rows.append(("logging policy", sandbox.get("logged") or {}))
    rows += [(f"candidate - logged, {name.upper()}", (sandbox.get("difference") or {}).get(name) or {})
             for name in ("ips", "snips", "dr")]
    return (f"Policy `{sandbox.get('policy')}` from {sandbox.get('logs')} logs of `{sandbox.get('logging_slug')}`.\n\n"
            "| value | estimate (bps) | CI low | CI high | SE |\n|---|---|---|---|---|\n" + "\n".join(
                f"| {label} | {_n(v.get('estimate_bps'))} | {_n(v.get('ci_95_low'))} | {_n(v.get('ci_95_high'))} | "
                f"{_n(v.get('se'), 3)} |" for label, v in rows))
