"""drift_signals: the drift signal to the StrategyRegistry per experiment partition (the drift stage)."""


import dagster as dg

from experimenttracker_pipeline.defs.partitions import (
    BACKFILL_POLICY,
    experiment_partitions,
    for_each_experiment,
)
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource,
    StrategyRegistryResource,
)
from experimenttracker_pipeline.stages.drift.signal import DriftResult, signal_drift
from experimenttracker_pipeline.stages.reporting.overview import drift_state
from experimenttracker_pipeline.stages.reporting.queries import drift_signal_states
from experimenttracker_pipeline.defs.verdict import verdicts


@dg.asset(partitions_def=experiment_partitions, deps=[verdicts], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def drift_signals(context: dg.AssetExecutionContext, store: ExperimentStoreResource,
                  registry: StrategyRegistryResource) -> dg.MaterializeResult:
    """One drift signal per experiment to the StrategyRegistry when the variant underperforms (on the same
    always-valid footing as the verdict); pending signals are retried until delivered."""
    db, client = store.get_store(), registry.get_registry()
    return for_each_experiment(context, db, lambda experiment_id: signal_drift(db, experiment_id, client),
                               lambda result: drift_metadata(result, db), ["signalled_now", "delivered", "pending"])


def drift_metadata(result: DriftResult, db=None) -> dict:
    """What this run did, and the experiment's signal state every time (also when nothing new was signalled)."""
    metadata = {"signalled_now": result.signalled_now, "delivered_now": result.delivered, "pending": result.pending}
    if db is not None:
        state = drift_state(drift_signal_states(db, result.experiment_id).get(result.experiment_id))
        metadata.update({
            "signal_state": state["state"], "signal_type": state.get("signal_type") or dg.MetadataValue.null(),
            "sent_at": state["sent_at"] or dg.MetadataValue.null(),
            "delivery_status": state["delivery_status"] or dg.MetadataValue.null(),
            "attempts": state["attempts"], "delivered_at": state["delivered_at"] or dg.MetadataValue.null(),
            "last_error": state["last_error"] or dg.MetadataValue.null()})
    return metadata


