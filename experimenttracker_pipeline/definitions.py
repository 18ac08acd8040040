"""The project's Dagster `Definitions` (loaded by `dg dev`, `dagster dev -w workspace.yaml` and the CLI)."""

from __future__ import annotations

import dagster as dg

from experimenttracker_pipeline.defs.decisions import (
    causal_estimates, confidence_intervals, drift_signals, promotions, promotions_have_signoff, signoff_job, verdicts,
)
from experimenttracker_pipeline.defs.ingestion import experiments, raw_reports
from experimenttracker_pipeline.defs.jobs import (
    declarations_job, evaluation_job, experiment_job, ingest_job, reports_job, samples_job,
)
from experimenttracker_pipeline.defs.sensors import SENSORS, signal_delivery_job
from experimenttracker_pipeline.defs.resources import (
    ExperimentStoreResource, PipelineSettingsResource, StrategyRegistryResource,
)
from experimenttracker_pipeline.defs.samples import experiment_samples, samples_hash_chain_intact
from experimenttracker_pipeline.settings import Settings

ASSETS = [experiments, raw_reports, experiment_samples, confidence_intervals, causal_estimates, verdicts, drift_signals,
          promotions]
ASSET_CHECKS = [samples_hash_chain_intact, promotions_have_signoff]
JOBS = [ingest_job, declarations_job, reports_job, samples_job, evaluation_job, experiment_job, signoff_job,
        signal_delivery_job]


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "store": ExperimentStoreResource(db_url=settings.db_url),
        "settings": PipelineSettingsResource(
            landing_dir=str(settings.landing_dir), experiments_dir=str(settings.experiments_dir),
            caliper_seconds=settings.caliper_seconds, stall_window_seconds=settings.stall_window_seconds),
        "registry": StrategyRegistryResource(url=settings.registry_url),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    return dg.Definitions(assets=ASSETS, asset_checks=ASSET_CHECKS, jobs=JOBS, sensors=SENSORS,
                          resources=build_resources(settings))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
