"""promotions with the blocking sign-off check, and the sign-off job (the promotion stage)."""


import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
)
from experimenttracker_pipeline.stages.promotion.signoff import (
    SignoffError,
    promotion_state,
    promotion_violations,
)
from experimenttracker_pipeline.stages.promotion import signoff as signoff_stage
from experimenttracker_pipeline.defs.verdict import verdicts


PROMOTION_CHECK = "promotions_have_signoff"

@dg.asset(partitions_def=experiment_partitions, deps=[verdicts], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def promotions(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """The promotion gate: a winning variant is promoted only with a human sign-off of that verdict report
    when one is required (require_human_signoff, or traffic_split_pct > 50); never on auto-promote alone."""
    db = store.get_store()
    return for_each_experiment(context, lambda experiment_id: promotion_state(db, experiment_id, apply=True),
                               lambda r: {"state": r.state, "reason_code": r.reason_code, "detail": r.detail,
                                          "promoted_now": r.promoted_now},
                               ["state", "reason_code"])


@dg.asset_check(asset=promotions, name=PROMOTION_CHECK, blocking=True,
                description="Fails if any promotion exists without the sign-off its experiment requires.")
def promotions_have_signoff(store: ExperimentStoreResource) -> dg.AssetCheckResult:
    violations = promotion_violations(store.get_store())
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
        signoff = signoff_stage.record_signoff(db, config.experiment_id, config.approver, config.report_id, config.note)
    except SignoffError as exc:
        raise dg.Failure(str(exc)) from exc
    result = promotion_state(db, config.experiment_id, apply=True)
    context.log.info(f"sign-off {signoff['id']} by {config.approver} of {config.report_id}; promotion: {result.state} ({result.reason_code})")


@dg.job(description="Launch from the UI launchpad with experiment_id, approver and report_id to sign off a verdict.")
def signoff_job():
    record_signoff()

