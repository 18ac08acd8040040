"""Per-partition asset check results: one evaluation per experiment, pointing at that partition's materialization,
so the UI's check history names the experiment and a bad experiment shows failed alone."""

import dagster as dg


def latest_materializations(context, asset_key: dg.AssetKey, experiment_ids: list[str], run_id: str | None = None) -> dict:
    """partition -> the latest materialization record of ``asset_key`` (of run ``run_id`` when given)."""
    if not experiment_ids:
        return {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=experiment_ids), limit=len(experiment_ids) * 4).records
    out = {}
    for record in records:  # newest first
        if (run_id is None or record.run_id == run_id) and record.partition_key not in out:
            out[record.partition_key] = record
    return out


def log_partition_check(context, asset_key: dg.AssetKey, check_name: str, partition: str, record,
                        result: dg.AssetCheckResult) -> None:
    """Log one experiment's check evaluation (``record``: its latest materialization, or None)."""
    # The UI counts a partition's check result only when it points at the partition's latest materialization.
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (  # not exported in 1.13
        AssetCheckEvaluationTargetMaterializationData,
    )

    target = None if record is None else AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp)
    context.log_event(dg.AssetCheckEvaluation(
        asset_key=asset_key, check_name=check_name, passed=result.passed, partition=partition,
        metadata=result.metadata, description=result.description, target_materialization_data=target))


def partitioned_check(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey, check_name: str,
                      evaluate) -> dg.AssetCheckResult:
    """Evaluate ``evaluate(experiment_id) -> AssetCheckResult`` for every partition of the step.

    One partition: its result (Dagster records it for that partition). A range: one evaluation per experiment is
    logged (the UI shows which experiment failed), and the step's result fails naming the failed experiments.
    """
    keys = list(context.partition_keys)
    results = {key: evaluate(key) for key in keys}
    if len(keys) == 1:
        return results[keys[0]]
    op_context = context.op_execution_context
    records = latest_materializations(op_context, asset_key, keys)
    for key, result in results.items():
        log_partition_check(op_context, asset_key, check_name, key, records.get(key), result)
    failed = sorted(k for k, r in results.items() if not r.passed)
    return dg.AssetCheckResult(
        passed=not failed,
        description=(f"failed for {', '.join(failed)}" if failed else f"{len(keys)} experiments passed"),
        metadata={"experiments_checked": len(keys), "failed_experiments": ", ".join(failed) or "none"})
