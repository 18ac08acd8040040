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
from experimenttracker_pipeline.defs.verdict import verdicts


@dg.asset(partitions_def=experiment_partitions, deps=[verdicts], group_name="decision", kinds={"python", "sql"},
          owners=["team:data-eng"], backfill_policy=BACKFILL_POLICY)
def drift_signals(context: dg.AssetExecutionContext, store: ExperimentStoreResource,
                  registry: StrategyRegistryResource) -> dg.MaterializeResult:
    """One drift signal per experiment to the StrategyRegistry when the variant underperforms (on the same
    always-valid footing as the verdict); pending signals are retried until delivered."""
    db, client = store.get_store(), registry.get_registry()
    return for_each_experiment(context, db, lambda experiment_id: signal_drift(db, experiment_id, client), drift_metadata,
                               ["signalled_now", "delivered", "pending"])


def drift_metadata(result: DriftResult) -> dict:
    return {"signalled_now": result.signalled_now, "delivered_now": result.delivered, "pending": result.pending}


