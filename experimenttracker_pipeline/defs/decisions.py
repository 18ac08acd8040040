"""Decision stage, one partition per experiment: confidence intervals -> causal estimates -> verdicts ->
drift signals and promotions, with the blocking sign-off check and the sign-off job."""

import base64
import io

import dagster as dg

from experimenttracker_pipeline import decisions
from experimenttracker_pipeline.defs.partitions import BACKFILL_POLICY, experiment_partitions, for_each_experiment
from experimenttracker_pipeline.defs.resources import ExperimentStoreResource, StrategyRegistryResource
from experimenttracker_pipeline.defs.samples import experiment_samples

PROMOTION_CHECK = "promotions_have_signoff"


def _num(value):
    """Numeric metadata (plotted across materializations); missing values stay visible as null."""
    return dg.MetadataValue.null() if value is None else float(value)


def _ci_chart(store, experiment_id: str, evaluation: dict) -> str | None:
    """A small PNG of the confidence sequence narrowing over samples (markdown-embedded), drawn from ~200
    cumulative checkpoints aggregated in SQL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experimenttracker_pipeline.lib import stats as st

    checkpoints = [st.SufficientStats(*c) for c in store.cumulative_delta_stats(experiment_id, int(evaluation["samples"]))]
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

    def metadata(result: decisions.IntervalsResult) -> dict:
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
            "samples": e["samples"], "edge_delta_bps": _num(e["edge_delta_bps"]),
            "ci_95_low": _num(e["ci_95_low"]), "ci_95_high": _num(e["ci_95_high"]),
            "fixed_ci_95_low": _num(e["fixed_ci_95_low"]), "fixed_ci_95_high": _num(e["fixed_ci_95_high"]),
            "p_value": _num(e["p_value"]), "fixed_p_value": _num(e["fixed_p_value"]), "power": _num(e.get("power")),
            "ci_method": e["ci_method"], "evaluation_id": result.evaluation_id, "intervals": dg.MetadataValue.md(table),
            "metrics": dg.MetadataValue.json(e["metrics"]),
        }

    return for_each_experiment(context, lambda experiment_id: decisions.compute_intervals(db, experiment_id), metadata,
                               ["evaluation_id"])


@dg.asset(partitions_def=experiment_partitions, deps=[confidence_intervals], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def causal_estimates(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """IPW / doubly robust (AIPW) effects for limited-live experiments (propensities logged or estimated),
    overlap diagnostics, and segment effects with Holm-corrected CIs; a segment whose CI lies below the harm
    margin is a harmed segment and blocks any promotion."""
    db = store.get_store()
    return for_each_experiment(context, lambda experiment_id: decisions.compute_causal(db, experiment_id), _causal_metadata,
                               ["causal_id"])


def _causal_metadata(run: decisions.CausalRun) -> dict:
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
        "aipw_estimate_bps": _num(aipw.get("estimate_bps")), "naive_diff_bps": _num(r.get("naive_diff_bps")),
        "harmed_segments": dg.MetadataValue.json(r.get("harmed_segments") or []),
        "warnings": dg.MetadataValue.json(r.get("warnings") or []),
        "overlap": dg.MetadataValue.json(r.get("overlap") or {}),
        "ate_by_method": dg.MetadataValue.md(ate), "segments": dg.MetadataValue.md(segments),
        "causal_id": run.causal_id,
    }


@dg.asset(partitions_def=experiment_partitions, deps=[causal_estimates], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def verdicts(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """The verdict (variant_wins, control_wins, inconclusive, insufficient_samples, srm_blocked,
    harm_detected) with the CI it used; emits EXPERIMENT_RESULT (spec section 13) only when the verdict or
    the evidence changed materially."""
    db = store.get_store()

    def metadata(result: decisions.VerdictResult) -> dict:
        from experimenttracker_pipeline import governance_ops

        v = result.verdict
        views = governance_ops.persona_views(db, result.experiment_id)
        return {
            "verdict": v["verdict"], "basis": v["basis"], "samples": v["samples"],
            "edge_delta_bps": _num(v["edge_delta_bps"]), "ci_95_low": _num(v["ci_95_low"]), "ci_95_high": _num(v["ci_95_high"]),
            "drift": bool(v["drift_signalled"]), "reason_codes": dg.MetadataValue.json(v["reason_codes"]),
            "report_emitted": result.report["report_id"] if result.report else dg.MetadataValue.null(),
            "plain_english": dg.MetadataValue.md(v["plain_english"] or ""),
            "stop_rules": dg.MetadataValue.json(v.get("stop_rules") or []),
            "view_trader": dg.MetadataValue.md(views.get("trader", "")),
            "view_risk": dg.MetadataValue.md(views.get("risk", "")),
            "view_governance": dg.MetadataValue.md(views.get("governance", "")),
        }

    return for_each_experiment(context, lambda experiment_id: decisions.decide(db, experiment_id), metadata, ["verdict_id"])


@dg.asset(partitions_def=experiment_partitions, deps=[verdicts], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def drift_signals(context: dg.AssetExecutionContext, store: ExperimentStoreResource,
                  registry: StrategyRegistryResource) -> dg.MaterializeResult:
    """One drift signal per experiment to the StrategyRegistry when the variant underperforms (on the same
    always-valid footing as the verdict); pending signals are retried until delivered."""
    db, client = store.get_store(), registry.get_registry()
    return for_each_experiment(context, lambda experiment_id: decisions.signal_drift(db, experiment_id, client),
                               lambda r: {"signalled_now": r.signalled_now, "delivered_now": r.delivered, "pending": r.pending},
                               ["signalled_now", "delivered", "pending"])


@dg.asset(partitions_def=experiment_partitions, deps=[verdicts], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def promotions(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """The promotion gate: a winning variant is promoted only with a human sign-off of that verdict report
    when one is required (require_human_signoff, or traffic_split_pct > 50); never on auto-promote alone."""
    db = store.get_store()
    return for_each_experiment(context, lambda experiment_id: decisions.promotion_state(db, experiment_id, apply=True),
                               lambda r: {"state": r.state, "reason_code": r.reason_code, "detail": r.detail,
                                          "promoted_now": r.promoted_now},
                               ["state", "reason_code"])


@dg.asset_check(asset=promotions, name=PROMOTION_CHECK, blocking=True,
                description="Fails if any promotion exists without the sign-off its experiment requires.")
def promotions_have_signoff(store: ExperimentStoreResource) -> dg.AssetCheckResult:
    violations = decisions.promotion_violations(store.get_store())
    return dg.AssetCheckResult(passed=not violations, metadata={
        "violations": dg.MetadataValue.json([{"experiment_id": v.experiment_id, "report_id": v.report_id, "reason": v.reason}
                                             for v in violations])})


class SignoffConfig(dg.Config):
    experiment_id: str
    approver: str
    report_id: str
    note: str | None = None


@dg.op(description="Record a human sign-off of one verdict report, then run the promotion gate.")
def record_signoff(context: dg.OpExecutionContext, config: SignoffConfig, store: ExperimentStoreResource) -> None:
    db = store.get_store()
    try:
        signoff = decisions.record_signoff(db, config.experiment_id, config.approver, config.report_id, config.note)
    except decisions.SignoffError as exc:
        raise dg.Failure(str(exc)) from exc
    result = decisions.promotion_state(db, config.experiment_id, apply=True)
    context.log.info(f"sign-off {signoff['id']} by {config.approver} of {config.report_id}; promotion: {result.state} ({result.reason_code})")


@dg.job(description="Launch from the UI launchpad with experiment_id, approver and report_id to sign off a verdict.")
def signoff_job():
    record_signoff()
