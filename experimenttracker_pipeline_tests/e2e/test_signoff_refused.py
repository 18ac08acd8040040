"""`experimenttracker signoff` and the Dagster signoff_job refuse to sign off or promote while the experiment's
blocking checks fail (here the hash chain, tampered with by a database superuser), on both databases."""

from __future__ import annotations

import dagster as dg
import numpy as np
import sqlalchemy as sa

from experimenttracker_pipeline import cli
from experimenttracker_pipeline.definitions import build_definitions
from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.stages.promotion.queries import promotions
from experimenttracker_pipeline_tests.support.pipeline import evaluate_once, shadow_experiment
from experimenttracker_pipeline_tests.support.tampering import superuser

EXP = "exp_t"


def test_signoff_command_and_job_refuse_while_the_chain_check_fails(store, db_url, workdirs, tmp_path, monkeypatch,
                                                                    capsys):
    rng = np.random.default_rng(13)
    shadow_experiment(store, workdirs, rng.normal(5, 10, 300), exp_id=EXP, require_human_signoff=True)
    verdict, _, promotion = evaluate_once(store, EXP)
    assert (verdict.verdict["verdict"], promotion.state) == ("variant_wins", "awaiting_signoff")
    report_id = verdict.report["report_id"]
    with superuser(store) as conn:
        conn.execute(sa.text("UPDATE experiment_samples SET edge_delta_bps = -99 WHERE experiment_id = :e AND sample_n = 7"),
                     {"e": EXP})

    monkeypatch.setenv("EXPERIMENTTRACKER_DB_URL", db_url)
    monkeypatch.setenv("EXPERIMENTTRACKER_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["signoff", EXP, "--approver", "alice", "--report", report_id]) == 2
    err = capsys.readouterr().err
    assert "cannot be signed off or promoted while its blocking checks fail" in err
    assert "samples_hash_chain_intact: sample_n 7" in err

    settings = Settings(data_dir=tmp_path, db_url=db_url, landing_dir=workdirs["landing"],
                        experiments_dir=workdirs["experiments"])
    with dg.instance_for_test() as instance:
        result = build_definitions(settings).resolve_job_def("signoff_job").execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": {"record_signoff": {"config": {
                "experiment_id": EXP, "approver": "alice", "report_id": report_id}}}})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "blocking checks fail" in failure.event_specific_data.error.message
    assert promotions(store) == [] and store.scalar("SELECT COUNT(*) FROM signoffs") == 0
