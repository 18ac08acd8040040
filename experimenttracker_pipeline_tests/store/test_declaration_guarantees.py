"""Declarations on SQLite and PostgreSQL: a hostile or mistaken file (alias bomb, duplicate keys, numbers beyond
every bound, an id with a trailing newline) is rejected with its file and field named while the others register;
registration is one transaction; an experiment registered half-way by an older version is set aside instead of
failing every later run."""

from __future__ import annotations

import dataclasses

import pytest

from experimenttracker_pipeline.model.declaration import MAX_ALIASES, load_declarations
from experimenttracker_pipeline.orchestration import due_work
from experimenttracker_pipeline.orchestration.experiment_pass import process_experiment
from experimenttracker_pipeline.stages.declarations import queries as declaration_queries
from experimenttracker_pipeline.stages.declarations.queries import SET_ASIDE, experiment_row, register_experiment
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.drift.registry import TableStrategyRegistry
from experimenttracker_pipeline.stages.governance.operations import contract_record
from experimenttracker_pipeline.stages.samples.queries import sensor_snapshot
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.builders import declaration

BILLION_LAUGHS = "experiment_id: exp_lol\n" + "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def _count(store: Store, table: str, experiment_id: str) -> int:
    return store.scalar(f"SELECT COUNT(*) FROM {table} WHERE experiment_id = :e", e=experiment_id)


@pytest.mark.parametrize("name, text, field", [
    ("caliper", declaration("exp_bad", mode="limited_live").rstrip() + "\ncaliper_seconds: 1.0e+308\n", "caliper_seconds"),
    ("expected", declaration("exp_bad", expected_samples=10 ** 30), "expected_samples"),
    ("min_samples", declaration("exp_bad", min_samples_for_decision=10 ** 23), "min_samples_for_decision"),
    ("newline_id", declaration("exp_bad").replace('experiment_id: "exp_bad"', 'experiment_id: "x\\n"'), "experiment_id"),
    ("signoff_twice", declaration("exp_bad", require_human_signoff=True) + "require_human_signoff: false\n",
     "require_human_signoff"),
    ("billion_laughs", BILLION_LAUGHS, "<document>"),
])
def test_a_bad_declaration_is_rejected_by_file_and_field_and_the_others_register(store, workdirs, name, text, field):
    folder = workdirs["experiments"]
    (folder / "a_bad.yaml").write_text(text)
    (folder / "b_good.yaml").write_text(declaration("exp_good"))
    sync = sync_declarations(store, folder)
    assert sync.new == ["exp_good"]
    assert [(e.source, e.field) for e in sync.rejected] == [(str(folder / "a_bad.yaml"), field)]
    assert store.scalar("SELECT COUNT(*) FROM experiments") == 1
    assert store.scalar("SELECT COUNT(*) FROM experiment_contracts") == 1
    if name == "billion_laughs":
        assert f"more than {MAX_ALIASES} aliases" in sync.rejected[0].message
    again = sync_declarations(store, folder)  # every later run: the same rejection, nothing fails
    assert again.unchanged == ["exp_good"] and len(again.rejected) == 1


def test_registration_is_one_transaction(store, workdirs, monkeypatch):
    """A failure after the experiment's row was written (here: emitting its EXPERIMENT_STARTED) leaves nothing of
    it, and the next run registers it whole."""
    folder = workdirs["experiments"]
    (folder / "a.yaml").write_text(declaration("exp_a"))
    (folder / "b.yaml").write_text(declaration("exp_b", variant_slug="v2"))
    real_emit = store.emit_report

    def failing_for_a(conn, **kwargs):
        if kwargs.get("experiment_id") == "exp_a":
            raise RuntimeError("outbox unavailable")
        return real_emit(conn, **kwargs)

    monkeypatch.setattr(store, "emit_report", failing_for_a)
    sync = sync_declarations(store, folder)
    assert sync.new == ["exp_b"]
    assert [(e.source, e.field) for e in sync.rejected] == [(str(folder / "a.yaml"), "<document>")]
    assert "nothing was recorded" in sync.rejected[0].message
    assert experiment_row(store, "exp_a") is None and _count(store, "experiment_contracts", "exp_a") == 0
    monkeypatch.setattr(store, "emit_report", real_emit)
    assert sync_declarations(store, folder).new == ["exp_a"]
    assert _count(store, "experiment_contracts", "exp_a") == 1
    assert len(store.reports(experiment_id="exp_a", event_type="EXPERIMENT_STARTED")) == 1


def _half_registered(store: Store, folder) -> None:
    """What an older version left: the experiments row of exp_half without its contract."""
    (folder / "half.yaml").write_text(declaration("exp_half"))
    (experiment,) = load_declarations(folder).experiments
    assert register_experiment(store, experiment) == "new"
    assert _count(store, "experiment_contracts", "exp_half") == 0


def test_a_half_registered_experiment_is_set_aside_and_never_fails_a_run(store, workdirs):
    folder = workdirs["experiments"]
    _half_registered(store, folder)
    (folder / "half.yaml").unlink()  # even after its file is gone
    (folder / "good.yaml").write_text(declaration("exp_good"))
    sync = sync_declarations(store, folder)
    assert sync.new == ["exp_good"]
    assert [(e.field, "set aside" in e.message) for e in sync.rejected] == [("experiment_id", True)]
    assert experiment_row(store, "exp_half")["status"] == SET_ASIDE
    due = due_work.due_experiments(sensor_snapshot(store), {"v-slug": 10, "c-slug": 10}, due_work.EvaluationRule("growth"))
    assert "exp_half" not in [d.experiment_id for d in due]
    outcome = process_experiment(store, TableStrategyRegistry(), "exp_half", due_work.EvaluationRule("growth"), {})
    assert outcome.failed_stage is None and "set aside" in outcome.notes[0]
    assert sync_declarations(store, folder).rejected == []  # reported once; set aside for good


def test_a_half_registered_experiment_whose_file_is_still_there_is_completed(store, workdirs):
    folder = workdirs["experiments"]
    _half_registered(store, folder)
    sync = sync_declarations(store, folder)
    assert sync.unchanged == ["exp_half"] and sync.rejected == []
    assert _count(store, "experiment_contracts", "exp_half") == 1
    assert experiment_row(store, "exp_half")["status"] == "active"


def test_a_stored_declaration_that_fails_todays_checks_is_set_aside(store, workdirs):
    folder = workdirs["experiments"]
    (folder / "old.yaml").write_text(declaration("exp_old"))
    (experiment,) = load_declarations(folder).experiments
    # Stored by a version without today's bounds: the declaration JSON carries a count no check accepts now.
    stored = dataclasses.replace(experiment, raw={**experiment.raw, "expected_samples": 10 ** 30})
    assert register_experiment(store, stored, contract_record(experiment.contract)) == "new"
    (folder / "old.yaml").unlink()
    sync = sync_declarations(store, folder)
    assert [e.field for e in sync.rejected] == ["experiment_id"] and "today's checks" in sync.rejected[0].message
    assert experiment_row(store, "exp_old")["status"] == SET_ASIDE


def test_the_set_aside_status_is_one_word_everywhere():
    assert declaration_queries.SET_ASIDE == due_work.SET_ASIDE
