"""One dynamic partition per experiment. The name is the storage key: never rename it."""

import dagster as dg

experiment_partitions = dg.DynamicPartitionsDefinition(name="experiments")

# Backfills of many experiments run as a few ranged runs (not one run per experiment, not one giant run whose
# single failure fails everything).
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=25)


def for_each_experiment(context, work, metadata_one, summary_fields):
    """Run ``work(experiment_id)`` for every partition key of this run (one, or a backfill range).

    One experiment's failure does not stop the others; the step fails at the end naming them all (re-running is
    idempotent). Returns a MaterializeResult: full metadata for one experiment, a summary table for a range.
    """
    results, failures = {}, {}
    for experiment_id in context.partition_keys:
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
