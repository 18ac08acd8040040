"""A partition key no declared experiment backs (typed into the UI's Materialize dialog): the run fails at once with
"no such experiment", the run-retry daemon does not retry it, and the sensor removes the partition."""

import dagster as dg

from experimenttracker_pipeline.defs import sensors
from experimenttracker_pipeline.defs.resources import ExperimentStoreResource, PipelineSettingsResource
from experimenttracker_pipeline.definitions import build_definitions
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline_tests.builders import declaration

RETRYING = {"run_retries": {"enabled": True, "max_retries": 2}}


def _settings(db_url, workdirs, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, db_url=db_url, landing_dir=workdirs["landing"],
                    experiments_dir=workdirs["experiments"])


def test_made_up_partition_fails_at_once_is_not_retried_and_is_removed(store, db_url, workdirs, tmp_path):
    (workdirs["experiments"] / "a.yaml").write_text(declaration("exp_sports"))
    sync_declarations(store, workdirs["experiments"])
    with dg.instance_for_test(overrides=RETRYING) as instance:
        instance.add_dynamic_partitions("experiments", ["exp_sports", "exp_typo_sports"])
        job = build_definitions(_settings(db_url, workdirs, tmp_path)).resolve_job_def("experiment_job")
        result = job.execute_in_process(instance=instance, partition_key="exp_typo_sports", raise_on_error=False)
        assert not result.success
        failures = [e for e in result.all_events if e.is_step_failure]
        assert [e.step_key for e in failures] == ["experiment_samples"]  # the first step; nothing downstream ran
        assert "no such experiment: exp_typo_sports" in failures[0].step_failure_data.user_failure_data.description
        run = instance.get_run_by_id(result.run_id)
        assert run.tags["dagster/retry_on_asset_or_op_failure"] == "false"
        assert run.tags["dagster/will_retry"] == "false"  # decided when the failure was stored, retries enabled
        assert store.scalar("SELECT COUNT(*) FROM experiment_pairing_state") == 0

        resources = {"store": ExperimentStoreResource(db_url=db_url),
                     "settings": PipelineSettingsResource(landing_dir=str(workdirs["landing"]),
                                                          experiments_dir=str(workdirs["experiments"]))}
        tick = sensors.new_experiments_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        deletes = [r for r in tick.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
        assert [list(r.partition_keys) for r in deletes] == [["exp_typo_sports"]]


def test_a_transient_failure_of_a_declared_experiment_is_still_retried(store, db_url, workdirs, tmp_path, monkeypatch):
    """The no-retry tag is for unknown keys only: other step failures keep the run retries of dagster.yaml."""
    import experimenttracker_pipeline.defs.samples as samples_defs

    def store_restarting(*_args, **_kwargs):
        raise ConnectionError("server closed the connection unexpectedly")

    monkeypatch.setattr(samples_defs, "record_samples", store_restarting)
    (workdirs["experiments"] / "a.yaml").write_text(declaration("exp_sports"))
    sync_declarations(store, workdirs["experiments"])
    with dg.instance_for_test(overrides=RETRYING) as instance:
        instance.add_dynamic_partitions("experiments", ["exp_sports"])
        job = build_definitions(_settings(db_url, workdirs, tmp_path)).resolve_job_def("experiment_job")
        result = job.execute_in_process(instance=instance, partition_key="exp_sports", raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        assert "dagster/retry_on_asset_or_op_failure" not in run.tags
        assert run.tags["dagster/will_retry"] == "true"


def test_pass_job_refuses_unknown_experiments_at_once(store, db_url, workdirs, tmp_path):
    (workdirs["experiments"] / "a.yaml").write_text(declaration("exp_sports"))
    sync_declarations(store, workdirs["experiments"])
    with dg.instance_for_test(overrides=RETRYING) as instance:
        instance.add_dynamic_partitions("experiments", ["exp_sports"])
        job = build_definitions(_settings(db_url, workdirs, tmp_path)).resolve_job_def("experiment_pass_job")
        result = job.execute_in_process(instance=instance, raise_on_error=False,
                                        run_config={"experiment_ids": ["exp_nope", "exp_sports"]})
        assert not result.success
        failures = [e for e in result.all_events if e.is_step_failure]
        # The step holding the unknown id fails before any work; the other step's experiment is evaluated.
        assert [e.step_key for e in failures] == ["pass_step_00"]
        assert "no such experiment: exp_nope" in failures[0].step_failure_data.user_failure_data.description
        assert instance.get_run_by_id(result.run_id).tags["dagster/will_retry"] == "false"
        assert store.scalar("SELECT COUNT(DISTINCT experiment_id) FROM experiment_verdicts") == 1
