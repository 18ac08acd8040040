"""One dynamic partition per experiment, and what every per-experiment step shares: unknown keys refused at once,
one experiment's failure isolated from the others, a stop request honoured between experiments. The partition
definition's name is the storage key: never rename it."""

from typing import NoReturn

import dagster as dg

from experimenttracker_pipeline.orchestration import stopping
from experimenttracker_pipeline.orchestration.experiment_pass import UnknownExperiments, check_known

experiment_partitions = dg.DynamicPartitionsDefinition(name="experiments")

# Backfills of many experiments run as a few ranged runs (not one run per experiment, not one giant run whose
# single failure fails everything).
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=25)

# Run tag read by the run-retry daemon: a step failure of this run is not worth retrying.
NO_RETRY_TAGS = {"dagster/retry_on_asset_or_op_failure": "false"}


def refuse_unknown(context, store, experiment_ids: list[str]) -> None:
    """Fail at once, and for good, when a key is no declared experiment (a partition key typed into the UI):
    the run is tagged so the run-retry daemon does not retry it, and the sensors remove such partitions."""
    try:
        check_known(store, experiment_ids)
    except UnknownExperiments as exc:
        context.instance.add_run_tags(context.run.run_id, NO_RETRY_TAGS)
        raise dg.Failure(description=str(exc), allow_retries=False,
                         metadata={"unknown_experiments": dg.MetadataValue.json(exc.experiment_ids)}) from None


def progress(finished: list[str], remaining: list[str], what: str = "experiment(s)") -> str:
    shown = ", ".join(remaining[:20]) + (" ..." if len(remaining) > 20 else "")
    return f"{len(finished)} {what} finished, {len(remaining)} not" + (f" ({shown})" if remaining else "")


def stop_run(context, detail: str) -> NoReturn:
    """End this run as CANCELED (not failed) after a stop request; ``detail`` says what was finished and what not."""
    message = f"stopped on {stopping.STOP.signal_name}: {detail}"
    context.log.warning(message)
    run = context.instance.get_run_by_id(context.run.run_id)
    if run is not None and run.status not in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
        context.instance.report_run_canceling(run, message=message)
    raise dg.DagsterExecutionInterruptedError(message)


def for_each_experiment(context, store, work, metadata_one, summary_fields):
    """Run ``work(experiment_id)`` for every partition key of this run (one, or a backfill range).

    Unknown keys fail the step at once (no retry). One experiment's failure does not stop the others; the step
    fails at the end naming them all (re-running is idempotent). A stop request ends the run as canceled between
    experiments. Returns a MaterializeResult: full metadata for one experiment, a summary table for a range.
    """
    keys = list(context.partition_keys)
    refuse_unknown(context, store, keys)
    results, failures = {}, {}
    with stopping.deferred_signals():
        for index, experiment_id in enumerate(keys):
            if stopping.requested():
                stop_run(context, progress(keys[:index], keys[index:]))
            try:
                results[experiment_id] = work(experiment_id)
            except Exception as exc:  # noqa: BLE001 - reported below, with every other failure of the range
                failures[experiment_id] = f"{type(exc).__name__}: {exc}"
                context.log.error(f"{experiment_id}: {failures[experiment_id]}")
    if failures:
        raise dg.Failure(description="; ".join(f"{k}: {v}" for k, v in failures.items()),
                         metadata={"failed_experiments": dg.MetadataValue.json(failures),
                                   "succeeded_experiments": dg.MetadataValue.json(sorted(results))})
    if len(results) == 1:
        return dg.MaterializeResult(metadata=metadata_one(next(iter(results.values()))))
    header = "| experiment | " + " | ".join(summary_fields) + " |\n|---|" + "---|" * len(summary_fields) + "\n"
    rows = "\n".join(f"| {experiment_id} | " + " | ".join(str(getattr(r, f, None) if not isinstance(r, dict) else r.get(f))
                                                          for f in summary_fields) + " |"
                     for experiment_id, r in results.items())
    return dg.MaterializeResult(metadata={"experiments": len(results), "summary": dg.MetadataValue.md(header + rows)})
