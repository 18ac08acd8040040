"""Named jobs: what the CLI, the sensors and the UI launch."""

import dagster as dg

from experimenttracker_pipeline.defs.declarations import experiments
from experimenttracker_pipeline.defs.ingestion import raw_reports
from experimenttracker_pipeline.defs.samples import experiment_samples

EXPERIMENT_TAG = "experimenttracker/experiment"

ingest_job = dg.define_asset_job(
    "ingest_job", selection=dg.AssetSelection.assets(experiments, raw_reports),
    description="Register experiment declarations and ingest new report-bus lines (the CLI's first step).")

declarations_job = dg.define_asset_job(
    "declarations_job", selection=dg.AssetSelection.assets(experiments),
    description="Register new experiment declarations (new partitions, EXPERIMENT_STARTED once).")

reports_job = dg.define_asset_job(
    "reports_job", selection=dg.AssetSelection.assets(raw_reports),
    description="Ingest new or grown landing files of the report bus archive.")

# The per-experiment steps run one after another, so a subprocess per step would only add start-up time.
# Everything per experiment, from its samples down to the drift signal (CLI `run`, backfills).
experiment_job = dg.define_asset_job(
    "experiment_job", selection=dg.AssetSelection.assets(experiment_samples).downstream()
    - dg.AssetSelection.assets("experiments_overview"), executor_def=dg.in_process_executor,
    description="Pair new fills into samples and evaluate one experiment partition, or a range of them (UI "
                "materializations and backfills; the CLI and the sensors batch experiments in experiment_pass_job).",
    tags={"experimenttracker/stage": "experiment"})
