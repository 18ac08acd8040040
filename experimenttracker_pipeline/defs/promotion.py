"""promotions with the blocking sign-off check, and the sign-off job (the promotion stage)."""

from pathlib import Path

import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.check_events import latest_materializations, log_partition_check, partitioned_check
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
from experimenttracker_pipeline.stages.promotion.signoff import awaiting_signoff
from experimenttracker_pipeline.stages.reporting.html_report import report_file_name, write_experiment_report
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id
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


def signoff_check_result(experiment_id: str, violations: list) -> dg.AssetCheckResult:
    """The promotions_have_signoff result of one experiment (also logged per experiment by the experiment pass)."""
    rows = "\n".join(f"| {v.report_id} | {v.reason} |" for v in violations)
    metadata = {"experiment_id": experiment_id, "violations": len(violations)}
    if violations:
        metadata["detail"] = dg.MetadataValue.md("| report | reason |\n|---|---|\n" + rows)
    return dg.AssetCheckResult(
        passed=not violations, metadata=metadata,
        description=(f"{experiment_id}: {len(violations)} promotion(s) without the required sign-off" if violations
                     else f"{experiment_id}: every promotion has its sign-off"))


@dg.asset_check(asset=promotions, name=PROMOTION_CHECK, blocking=True, partitions_def=experiment_partitions,
                description="Fails if a promotion of the experiment exists without the sign-off it requires. Evaluated "
                            "per experiment: one experiment's violation fails only its own result.")
def promotions_have_signoff(context: dg.AssetCheckExecutionContext, store: ExperimentStoreResource) -> dg.AssetCheckResult:
    db = store.get_store()
    return partitioned_check(context, promotions.key, PROMOTION_CHECK,
                             lambda key: signoff_check_result(key, promotion_violations(db, key)))


class SignoffConfig(dg.Config):
    """Only ``approver`` needs typing: the experiment is the run's partition (picked in the launchpad), else
    ``experiment_id``, else the one experiment awaiting a sign-off; the report is the experiment's latest
    EXPERIMENT_RESULT unless ``report_id`` names another."""

    approver: str
    experiment_id: str | None = None
    report_id: str | None = None
    latest_report: bool = True
    note: str | None = None


def _signoff_target(context: dg.OpExecutionContext, db, config: SignoffConfig) -> tuple[str, str]:
    experiment_id = context.partition_key if context.has_partition_key else config.experiment_id
    if experiment_id is None:
        waiting = awaiting_signoff(db)
        if len(waiting) != 1:
            raise dg.Failure(f"pick the experiment (partition) to sign off: {len(waiting)} await a sign-off"
                             + (f" ({', '.join(waiting)})" if waiting else ""))
        experiment_id = waiting[0]
    report_id = config.report_id or (latest_result_report_id(db, experiment_id) if config.latest_report else None)
    if report_id is None:
        raise dg.Failure(f"{experiment_id} has no EXPERIMENT_RESULT report to sign off" if config.latest_report
                         else "report_id is required when latest_report is false")
    return experiment_id, report_id


@dg.op(description="Record a human sign-off of one verdict report, run the promotion gate, and refresh the "
                   "experiment's promotions materialization, its sign-off check and the experiments overview.")
def record_signoff(context: dg.OpExecutionContext, config: SignoffConfig, store: ExperimentStoreResource) -> None:
    db = store.get_store()
    experiment_id, report_id = _signoff_target(context, db, config)
    try:
        signoff = signoff_stage.record_signoff(db, experiment_id, config.approver, report_id, config.note)
    except SignoffError as exc:
        raise dg.Failure(str(exc)) from exc
    result = promotion_state(db, experiment_id, apply=True)
    context.log.info(f"sign-off {signoff['id']} by {config.approver} of {report_id}; promotion: {result.state} ({result.reason_code})")
    # The UI is current when the run ends: the experiment's promotions partition, its check and the overview.
    context.log_event(dg.AssetMaterialization(asset_key=promotions.key, partition=experiment_id,
                                              metadata={**promotion_metadata(result), "signed_off_by": config.approver,
                                                        "signed_off_report": report_id}))
    records = latest_materializations(context, promotions.key, [experiment_id], context.run.run_id)
    log_partition_check(context, promotions.key, PROMOTION_CHECK, experiment_id, records.get(experiment_id),
                        signoff_check_result(experiment_id, promotion_violations(db, experiment_id)))
    if store.reports_dir:
        write_experiment_report(db, experiment_id, Path(store.reports_dir) / report_file_name(experiment_id))
    log_overview(context, db, store.reports_dir)


@dg.job(partitions_def=experiment_partitions,
        description="Sign off a verdict: pick the experiment (partition) in the launchpad and type the approver; the "
                    "experiment's latest EXPERIMENT_RESULT report is approved (latest_report: true) unless report_id "
                    "names another. Its promotions partition and the overview are current when the run ends.")
def signoff_job():
    record_signoff()
