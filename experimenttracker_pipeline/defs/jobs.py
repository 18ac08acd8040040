"""Named jobs: what the CLI, the sensors and the UI launch."""

import dagster as dg

from experimenttracker_pipeline.defs.ingestion import experiments, raw_reports
from experimenttracker_pipeline.defs.samples import experiment_samples

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(experiments, raw_reports),
    description="Register experiment declarations and ingest new report-bus lines.",
)

# Everything per experiment, from its samples down to the drift signal; one run per experiment partition.
experiment_job = dg.define_asset_job(
    "experiment_job",
    selection=dg.AssetSelection.assets(experiment_samples).downstream(),
    description="Pair new fills into samples and evaluate one experiment (one partition).",
    tags={"experimenttracker/stage": "experiment"},
)
