"""The project's Dagster `Definitions` (loaded by `dg dev`, `dagster dev -w workspace.yaml` and the CLI)."""

from __future__ import annotations

import dagster as dg

from experimenttracker_pipeline.defs.bus import report_bus_sensor, report_relay_job, report_relay_sensor
from experimenttracker_pipeline.defs.causal_effects import causal_estimates
from experimenttracker_pipeline.defs.declarations import experiments
from experimenttracker_pipeline.defs.drift import drift_signals
from experimenttracker_pipeline.defs.ingestion import raw_reports
from experimenttracker_pipeline.defs.intervals import confidence_intervals
from experimenttracker_pipeline.defs.experiment_pass import build_experiment_pass_job
from experimenttracker_pipeline.defs.overview import experiments_overview
from experimenttracker_pipeline.defs.jobs import declarations_job, experiment_job, ingest_job, reports_job
from experimenttracker_pipeline.defs.promotion import promotions, promotions_have_signoff, signoff_job
from experimenttracker_pipeline.defs.resources import build_resources
from experimenttracker_pipeline.defs.samples import experiment_samples, samples_hash_chain_intact
from experimenttracker_pipeline.defs.sensors import SENSORS, signal_delivery_job
from experimenttracker_pipeline.defs.verdict import verdicts
from experimenttracker_pipeline.settings import Settings

ASSETS = [experiments, raw_reports, experiment_samples, confidence_intervals, causal_estimates, verdicts, drift_signals,
          promotions, experiments_overview]
ASSET_CHECKS = [samples_hash_chain_intact, promotions_have_signoff]
JOBS = [ingest_job, declarations_job, reports_job, experiment_job, signoff_job, signal_delivery_job, report_relay_job]


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    # in_process also for the implicit asset job of UI backfills: a subprocess per step costs more than the work.
    return dg.Definitions(assets=ASSETS, asset_checks=ASSET_CHECKS, jobs=[*JOBS, build_experiment_pass_job(settings)],
                          sensors=[*SENSORS, report_bus_sensor, report_relay_sensor], resources=build_resources(settings),
                          executor=dg.in_process_executor)


def experiment_pass_job_from_env() -> dg.JobDefinition:
    """experiment_pass_job with its resources, built from the environment (`dg.build_reconstructable_job` target:
    a Celery worker rebuilds the job the run was launched with from this function)."""
    return build_definitions().resolve_job_def("experiment_pass_job")


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
