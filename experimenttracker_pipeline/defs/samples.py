"""Matched-pair samples (one partition per experiment) and the blocking immutability check."""


import dagster as dg

from experimenttracker_pipeline.defs.declarations import experiments
from experimenttracker_pipeline.defs.ingestion import raw_reports
from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.resources import ExperimentStoreResource
from experimenttracker_pipeline.stages.samples.recording import (
    SamplingResult,
    record_samples,
    verify_samples,
)
from experimenttracker_pipeline.stages.samples.recording import ImmutableSampleError
from experimenttracker_pipeline.stages.samples.queries import sample_head
from experimenttracker_pipeline.defs.check_events import partitioned_check

SAMPLES_CHAIN_CHECK = "samples_hash_chain_intact"


@dg.asset(partitions_def=experiment_partitions, deps=[experiments, raw_reports], group_name="samples",
          kinds={"python", "sql"}, owners=["team:data-eng"], pool="experiment_store", backfill_policy=BACKFILL_POLICY)
def experiment_samples(context: dg.AssetExecutionContext, store: ExperimentStoreResource) -> dg.MaterializeResult:
    """Append-only matched-pair samples of one experiment (shadow: same pair_key; limited-live: nearest
    control fill in the same market within the caliper). Re-materializing appends only new pairs."""
    db = store.get_store()

    def work(experiment_id: str):
        try:
            return record_samples(db, experiment_id)
        except ImmutableSampleError as exc:
            raise dg.Failure(str(exc)) from exc

    return for_each_experiment(context, db, work, samples_metadata,
                               ["total_samples", "new_samples", "orphan_variant", "orphan_control"])


def samples_metadata(result: SamplingResult) -> dict:
    return {
        "dagster/row_count": result.total_samples,
        "new_samples": result.new_samples,
        "orphan_variant_fills": result.orphan_variant,
        "orphan_control_fills": result.orphan_control,
        "first_new_sample_n": result.first_new_n if result.first_new_n is not None else dg.MetadataValue.null(),
        "last_new_sample_n": result.last_new_n if result.last_new_n is not None else dg.MetadataValue.null(),
        "batch_mean_edge_delta_bps": (round(result.batch_mean_edge_delta_bps, 4)
                                      if result.batch_mean_edge_delta_bps is not None else dg.MetadataValue.null()),
        "mode": result.mode,
    }


def chain_check_result(experiment_id: str, samples_checked: int, problem, head: dict | None) -> dg.AssetCheckResult:
    """The samples_hash_chain_intact result of one experiment (also logged per experiment by the experiment pass):
    the experiment, the samples verified and the chain head."""
    head_n = int(head["sample_n"]) if head else 0
    metadata = {"experiment_id": experiment_id, "samples_verified": samples_checked,
                "chain_head_sample_n": head_n, "chain_head_hash": (head or {}).get("sample_hash") or dg.MetadataValue.null()}
    if problem is not None:
        metadata.update(first_broken_sample_n=problem.sample_n, problem=problem.problem)
        description = f"{experiment_id}: first broken sample_n {problem.sample_n} ({problem.problem})"
    else:
        description = f"{experiment_id}: {samples_checked} samples verified, chain head sample_n {head_n}"
    return dg.AssetCheckResult(passed=problem is None, description=description, metadata=metadata)


def verify_chain(db, experiment_id: str) -> dg.AssetCheckResult:
    count, problem = verify_samples(db, experiment_id)
    return chain_check_result(experiment_id, count, problem, sample_head(db, experiment_id))


@dg.asset_check(asset=experiment_samples, name=SAMPLES_CHAIN_CHECK, blocking=True, partitions_def=experiment_partitions,
                description="Recomputes the experiment's sample hash chain; fails naming the first broken sample_n. "
                            "Evaluated per experiment: one experiment's broken chain fails only its own result.")
def samples_hash_chain_intact(context: dg.AssetCheckExecutionContext, store: ExperimentStoreResource) -> dg.AssetCheckResult:
    db = store.get_store()
    return partitioned_check(context, experiment_samples.key, SAMPLES_CHAIN_CHECK, lambda key: verify_chain(db, key))
