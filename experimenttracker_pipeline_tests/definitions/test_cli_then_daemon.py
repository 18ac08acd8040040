"""`make dev` after `make demo`: the sensors start from what the store says, so the daemon requests none of the work
the CLI already did (a daemon blind to it would start 5 pairing runs with 0 new samples and 4 evaluation runs)."""

import io

import dagster as dg

from experimenttracker_pipeline import cli
from experimenttracker_pipeline.defs import sensors
from experimenttracker_pipeline.defs.resources import ExperimentStoreResource, PipelineSettingsResource
from experimenttracker_pipeline.demo import write_demo
from experimenttracker_pipeline.settings import Settings


def test_sensors_request_nothing_the_cli_already_did(tmp_path, monkeypatch, db_url):
    data = tmp_path / "data"
    write_demo(data / "experiments", data / "landing")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    settings = Settings(data_dir=data, db_url=db_url, landing_dir=data / "landing", experiments_dir=data / "experiments")
    out = io.StringIO()
    assert cli.run_pipeline(settings, out=out) == 0
    assert "experiment_pass_job[8 experiments]: success" in out.getvalue()

    resources = {"store": ExperimentStoreResource(db_url=db_url),
                 "settings": PipelineSettingsResource(landing_dir=str(data / "landing"),
                                                      experiments_dir=str(data / "experiments"))}
    instance = dg.DagsterInstance.get()  # the CLI's instance, as `make dev` opens it; empty sensor cursors
    try:
        for sensor in (sensors.new_experiments_sensor, sensors.new_reports_sensor, sensors.experiment_pass_sensor):
            result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
            requests = [] if isinstance(result, dg.SkipReason) else list(result.run_requests or [])
            changes = [] if isinstance(result, dg.SkipReason) else list(result.dynamic_partitions_requests or [])
            assert requests == [] and changes == [], (sensor.name, requests, changes)
    finally:
        instance.dispose()
    # And the CLI agrees: a second run has nothing to do.
    again = io.StringIO()
    assert cli.run_pipeline(settings, out=again) == 0
    assert again.getvalue().startswith("nothing new"), again.getvalue()
