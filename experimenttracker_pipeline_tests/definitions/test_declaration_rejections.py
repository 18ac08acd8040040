"""One poisoned declaration never takes down the `experiments` asset (nor the ingestion job): it is listed with its
file and field, the other declarations register, and `run` for the rejected experiment says why."""

from __future__ import annotations

import dagster as dg
import pytest

from experimenttracker_pipeline.cli import _rejected_declarations
from experimenttracker_pipeline.definitions import build_definitions
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.declarations.queries import experiment_rows
from experimenttracker_pipeline_tests.builders import declaration


@pytest.mark.parametrize("bad", [
    declaration("exp_bad", min_samples_for_decision=10 ** 23),
    declaration("exp_bad", expected_samples=10 ** 30),
    declaration("exp_bad", mode="limited_live").rstrip() + "\ncaliper_seconds: 1.0e+308\n",
])
def test_the_experiments_asset_survives_a_poisoned_declaration(store, db_url, workdirs, tmp_path, bad):
    (workdirs["experiments"] / "a_bad.yaml").write_text(bad)
    (workdirs["experiments"] / "b_good.yaml").write_text(declaration("exp_good"))
    settings = Settings(data_dir=tmp_path, db_url=db_url, landing_dir=workdirs["landing"],
                        experiments_dir=workdirs["experiments"])
    with dg.instance_for_test() as instance:
        result = build_definitions(settings).resolve_job_def("ingest_job").execute_in_process(instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("experiments")[0].metadata
        assert meta["rejected_declarations"].value == 1 and "a_bad.yaml" in meta["rejections"].value
        assert instance.get_dynamic_partitions("experiments") == ["exp_good"]
    assert [r["experiment_id"] for r in experiment_rows(store)] == ["exp_good"]
    message = _rejected_declarations(settings)
    assert "a_bad.yaml" in message and "exp_good" not in message
