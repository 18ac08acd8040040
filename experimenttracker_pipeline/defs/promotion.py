"""promotions with the blocking sign-off check, and the sign-off job (the promotion stage)."""


import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.overview import log_overview
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
)
from experimenttracker_pipeline.stages.promotion.signoff import (
    PromotionResult,
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
    result = for_each_experiment(context, db, lambda experiment_id: promotion_state(db, experiment_id, apply=True),
                                 promotion_metadata, ["state", "reason_code"])
    log_overview(context, db, store.reports_dir)  # the last asset of an experiment's chain: the overview is current
    return result


def promotion_metadata(result: PromotionResult) -> dict:
    return {"state": result.state, "reason_code": result.reason_code, "detail": result.detail,
            "promoted_now": result.promoted_now}


def signoff_check_result(violations: list) -> dg.AssetCheckResult:
    """The promotions_have_signoff result for some experiments' violations (also logged by the experiment pass)."""
    return dg.AssetCheckResult(passed=not violations, metadata={
        "violations": dg.MetadataValue.json([{"experiment_id": v.experiment_id, "report_id": v.report_id, "reason": v.reason}
                                             for v in violations])})


@dg.asset_check(asset=promotions, name=PROMOTION_CHECK, blocking=True, partitions_def=experiment_partitions,
                description="Fails if a promotion of the experiment exists without the sign-off it requires.")
def promotions_have_signoff(context: dg.AssetCheckExecutionContext, store: ExperimentStoreResource) -> dg.AssetCheckResult:
    keys = set(context.partition_keys)
    return signoff_check_result([v for v in promotion_violations(store.get_store()) if v.experiment_id in keys or v.experiment_id is None])


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

