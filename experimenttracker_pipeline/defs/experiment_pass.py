"""experiment_pass_job: many experiments in one run, each still with its own partition materializations and checks.

A run gets a list of experiments (the CLI's `run`, or `experiment_pass_sensor` with every experiment that is due);
its config mapping splits the list over a fixed number of steps (EXPERIMENTTRACKER_PASS_STEPS). Each step pairs and
evaluates its experiments one after another (`orchestration.experiment_pass.process_experiment`) and logs, per
experiment, a materialization of each partitioned asset it refreshed (`experiment_samples` ... `promotions`, with
the same metadata a partitioned run records) and the partition's check results, so the UI's partition and check
views are the same as with one run per experiment, at a fraction of the cost (no run, plan and step events per
experiment). Steps pass no data to each other, so with the Celery executor (EXPERIMENTTRACKER_EXECUTOR=celery)
they run on workers on any host without shared storage.

One experiment's failure does not stop the others: its step fails at the end naming it (the sensor retries just
those experiments). A stop request (SIGINT/SIGTERM, or terminating the run in the UI) ends the run as CANCELED
between two experiments.
"""

from pathlib import Path

import dagster as dg

from experimenttracker_pipeline.defs.causal_effects import causal_estimates, causal_metadata
from experimenttracker_pipeline.defs.drift import drift_metadata, drift_signals
from experimenttracker_pipeline.defs.intervals import confidence_intervals, intervals_metadata
from experimenttracker_pipeline.defs.check_events import latest_materializations, log_partition_check
from experimenttracker_pipeline.defs.overview import log_overview
from experimenttracker_pipeline.defs.partitions import progress, refuse_unknown, stop_run
from experimenttracker_pipeline.defs.promotion import (
    PROMOTION_CHECK,
    promotion_metadata,
    promotions,
    signoff_check_result,
)
from experimenttracker_pipeline.defs.resources import ExperimentStoreResource, StrategyRegistryResource
from experimenttracker_pipeline.defs.samples import (
    SAMPLES_CHAIN_CHECK,
    chain_check_result,
    experiment_samples,
    samples_metadata,
)
from experimenttracker_pipeline.defs.verdict import verdict_metadata, verdicts
from experimenttracker_pipeline.orchestration import stopping
from experimenttracker_pipeline.orchestration.due_work import EvaluationRule, split_over_steps
from experimenttracker_pipeline.orchestration.experiment_pass import ExperimentOutcome, process_experiment
from experimenttracker_pipeline.orchestration.instance import pool_storage_connections
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.ingestion.queries import newest_batch_by_slug
from experimenttracker_pipeline.stages.reporting import charts
from experimenttracker_pipeline.stages.reporting.renders import render_stale_reports
from experimenttracker_pipeline.stages.promotion.signoff import promotion_violations
from experimenttracker_pipeline.stages.samples.queries import sample_head

JOB_NAME = "experiment_pass_job"


# (asset, outcome attribute, metadata function taking (store, result, reports folder))
_MATERIALIZED = (
    (experiment_samples, "samples", lambda db, r, d: samples_metadata(r)),
    # No drawing here: charts and HTML reports cost more than the evaluation; `_render_reports` draws a bounded few.
    (confidence_intervals, "intervals", lambda db, r, d: intervals_metadata(db, r, chart=False)),
    (causal_estimates, "causal", lambda db, r, d: causal_metadata(r)),
    (verdicts, "verdict", lambda db, r, d: verdict_metadata(db, r, d, write_report=False)),
    (drift_signals, "drift", lambda db, r, d: drift_metadata(r, db)),
    (promotions, "promotion", lambda db, r, d: promotion_metadata(r)),
)


def _log_materializations(context: dg.OpExecutionContext, db, outcome: ExperimentOutcome,
                          reports_dir: str | None = None) -> None:
    for asset, attribute, metadata in _MATERIALIZED:
        result = getattr(outcome, attribute)
        if result is not None:
            context.log_event(dg.AssetMaterialization(asset_key=asset.key, partition=outcome.experiment_id,
                                                      metadata=metadata(db, result, reports_dir)))


def _render_reports(context: dg.OpExecutionContext, db, reports_dir: str, evaluated: list[str], *, limit: int) -> None:
    """Render the HTML reports of up to ``limit`` of this step's evaluated experiments (newest verdict first) and
    show each on its verdicts partition (link and CI-over-time chart). A failure is logged, never fails the step."""
    if not evaluated:
        return
    try:
        # The index page is rewritten with the overview, once per run.
        rendering = render_stale_reports(db, Path(reports_dir), evaluated, limit=limit, index=False)
    except Exception as exc:  # noqa: BLE001 - reports are a view; the verdicts are recorded
        context.log.warning(f"HTML reports not rendered: {type(exc).__name__}: {exc}")
        return
    for experiment_id, path in rendering.written.items():
        metadata = {"html_report": dg.MetadataValue.path(str(path)),
                    "html_report_url": dg.MetadataValue.url(path.resolve().as_uri())}
        chart = charts.b64(rendering.charts.get(experiment_id))
        if chart:
            metadata["ci_over_time"] = dg.MetadataValue.md(f"![confidence sequence over samples](data:image/png;base64,{chart})")
        context.log_event(dg.AssetObservation(asset_key=verdicts.key, partition=experiment_id, metadata=metadata))
    if rendering.pending:
        context.log.info(f"{len(rendering.written)} HTML reports rendered; {len(rendering.pending)} left for the next "
                         f"pass or `experimenttracker report --all` (EXPERIMENTTRACKER_REPORTS_PER_PASS)")


def _log_checks(context: dg.OpExecutionContext, db, outcomes: list[ExperimentOutcome]) -> None:
    """Each experiment's own check results (chain intact, sign-off present), pointing at this run's materializations."""
    run_id = context.run.run_id
    paired = [o for o in outcomes if o.samples is not None]
    records = latest_materializations(context, experiment_samples.key, [o.experiment_id for o in paired], run_id)
    for outcome in paired:
        if outcome.experiment_id in records:
            result = chain_check_result(outcome.experiment_id, outcome.chain_checked or 0, outcome.chain_break,
                                        sample_head(db, outcome.experiment_id))
            log_partition_check(context, experiment_samples.key, SAMPLES_CHAIN_CHECK, outcome.experiment_id,
                                records[outcome.experiment_id], result)
    gated = [o for o in outcomes if o.promotion is not None]
    records = latest_materializations(context, promotions.key, [o.experiment_id for o in gated], run_id)
    for outcome in gated:
        if outcome.experiment_id in records:
            result = signoff_check_result(outcome.experiment_id, promotion_violations(db, outcome.experiment_id))
            log_partition_check(context, promotions.key, PROMOTION_CHECK, outcome.experiment_id,
                                records[outcome.experiment_id], result)


STEP_CONFIG = {
    "experiment_ids": dg.Field([str], description="this step's experiments"),
    "evaluation": dg.Field(str, default_value="growth", description="growth | step (see EvaluationRule)"),
    "step_pct": dg.Field(float, default_value=10.0),
    "step_n": dg.Field(int, default_value=1),
    "reports_limit": dg.Field(int, default_value=25, description="HTML reports this step renders at most"),
    "refresh_overview": dg.Field(bool, default_value=True,
                                 description="log experiments_overview and rewrite the reports index after this step"),
}


def _pass_step(index: int) -> dg.OpDefinition:
    @dg.op(name=f"pass_step_{index:02d}", config_schema=STEP_CONFIG, out={},
           description="Pair and evaluate this step's experiments one after another; log each one's materializations "
                       "and checks; fail at the end naming the experiments that failed.")
    def pass_step(context: dg.OpExecutionContext, store: ExperimentStoreResource,
                  registry: StrategyRegistryResource):
        config = context.op_config
        experiment_ids = list(config["experiment_ids"])
        if not experiment_ids:
            return
        pool_storage_connections(context.instance)
        db, client = store.get_store(), registry.get_registry()
        refuse_unknown(context, db, experiment_ids)
        rule = EvaluationRule(config["evaluation"], config["step_pct"] / 100, config["step_n"])
        newest = newest_batch_by_slug(db)
        outcomes: list[ExperimentOutcome] = []
        with stopping.deferred_signals():
            for position, experiment_id in enumerate(experiment_ids):
                if stopping.requested():
                    _log_checks(context, db, outcomes)
                    stop_run(context, progress(experiment_ids[:position], experiment_ids[position:]))
                outcome = process_experiment(db, client, experiment_id, rule, newest)
                _log_materializations(context, db, outcome, store.reports_dir)
                if not outcome.ok:
                    context.log.error(f"{experiment_id} failed at {outcome.failed_stage}: {outcome.error}")
                if outcome.notes:
                    context.log.info(f"{experiment_id}: {'; '.join(outcome.notes)}")
                outcomes.append(outcome)
            _log_checks(context, db, outcomes)
            if store.reports_dir:
                _render_reports(context, db, store.reports_dir, [o.experiment_id for o in outcomes if o.evaluated],
                                limit=config["reports_limit"])
            if config["refresh_overview"]:
                log_overview(context, db, store.reports_dir)
        failed = {o.experiment_id: f"{o.failed_stage}: {o.error}" for o in outcomes if not o.ok}
        summary = (f"{len(outcomes)} experiments: {sum(o.paired for o in outcomes)} paired, "
                   f"{sum(o.evaluated for o in outcomes)} evaluated, {len(failed)} failed")
        context.log.info(summary)
        if failed:
            raise dg.Failure(description=f"{summary}: " + "; ".join(f"{k} ({v})" for k, v in list(failed.items())[:20]),
                             metadata={"failed_experiments": dg.MetadataValue.json(failed)})

    return pass_step


JOB_CONFIG = {
    "experiment_ids": dg.Field([str], description="the experiments of this pass"),
    "evaluation": dg.Field(str, default_value="growth",
                           description="growth: evaluate when the sample count changed since the latest verdict; step: "
                                       "from min_samples_for_decision on, every +step_pct / +step_n samples"),
    "step_pct": dg.Field(float, default_value=10.0),
    "step_n": dg.Field(int, default_value=1),
    "console_log_level": dg.Field(str, default_value="DEBUG", description="level of the run's console log"),
}


def pass_executor(settings: Settings) -> dg.ExecutorDefinition:
    """In-process by default; Dagster's Celery executor (each step a Celery task) with EXPERIMENTTRACKER_EXECUTOR=celery."""
    if settings.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured({"broker": settings.celery_broker, "backend": settings.celery_backend},
                                          name="celery")
    return dg.in_process_executor


def build_experiment_pass_job(settings: Settings) -> dg.JobDefinition:
    steps = [_pass_step(index) for index in range(settings.pass_steps)]

    def config_fn(config: dict) -> dict:
        EvaluationRule(config["evaluation"])  # a bad rule name fails at launch, before any work
        slices = split_over_steps(config["experiment_ids"], len(steps))
        common = {k: config[k] for k in ("evaluation", "step_pct", "step_n")}
        # The run's report budget (EXPERIMENTTRACKER_REPORTS_PER_PASS) shared by the steps that have experiments.
        busy = max(1, sum(1 for part in slices if part))
        limit = -(-settings.reports_per_pass // busy)
        # The overview reads every experiment: refreshed once per run, by the last step with experiments (in-process
        # the steps run in order, so it sees the whole run; on Celery workers it may run before the others finish).
        last = max((i for i, part in enumerate(slices) if part), default=-1)
        return {"loggers": {"console": {"config": {"log_level": config["console_log_level"]}}},
                "ops": {step.name: {"config": {"experiment_ids": part, "reports_limit": limit,
                                               "refresh_overview": i == last, **common}}
                        for i, (step, part) in enumerate(zip(steps, slices))}}

    @dg.job(name=JOB_NAME, executor_def=pass_executor(settings), tags={"experimenttracker/stage": "pass"},
            config=dg.ConfigMapping(config_fn=config_fn, config_schema=JOB_CONFIG),
            description="Pair and evaluate many experiments in one run (CLI `run`/`backfill`, experiment_pass_sensor); "
                        "each experiment gets its own partition materializations and checks.")
    def experiment_pass_job():
        for step in steps:
            step()

    return experiment_pass_job
