"""One experiment's pass (`process_experiment`) on SQLite and PostgreSQL: pairing only when a newer batch brought
its fills, evaluation only when due, paused and unknown experiments, a broken chain stopping that experiment alone,
and two passes racing on one experiment doing its work once."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from experimenttracker_pipeline.orchestration.due_work import EvaluationRule
from experimenttracker_pipeline.orchestration.experiment_pass import NO_SUCH_EXPERIMENT, process_experiment
from experimenttracker_pipeline.stages.declarations.queries import set_experiment_status
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.drift.registry import registry_for
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.ingestion.queries import newest_batch_by_slug
from experimenttracker_pipeline.stages.samples.queries import sensor_snapshot
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl

GROWTH = EvaluationRule("growth")


def _declare(store, workdirs, *experiments: tuple[str, str, str]) -> None:
    for experiment_id, variant, control in experiments:
        (workdirs["experiments"] / f"{experiment_id}.yaml").write_text(
            declaration(experiment_id, variant_slug=variant, control_slug=control, min_samples_for_decision=20))
    sync_declarations(store, workdirs["experiments"])


def _pairs(name: str, variant: str, control: str, start: int, count: int, *, delta: float = 1.0) -> list[dict]:
    records = []
    for i in range(start, start + count):
        key = f"{name}-{i}"
        records.append(fill(f"{key}-c", control, "live", key, edge=1.0, t=i * 1000))
        records.append(fill(f"{key}-v", variant, "shadow", key, edge=1.0 + delta * (1 + (i % 3)) / 10, t=i * 1000 + 5))
    return records


def _land(store, workdirs, file_name: str, records: list[dict]) -> None:
    write_jsonl(workdirs["landing"] / file_name, records)
    assert ingest_landing(store, workdirs["landing"]).balanced


def _pass(store, experiment_id: str):
    return process_experiment(store, registry_for(None), experiment_id, GROWTH, newest_batch_by_slug(store))


def _verdict_count(store, experiment_id: str) -> int:
    return store.scalar("SELECT COUNT(*) FROM experiment_verdicts WHERE experiment_id = :e", e=experiment_id)


def test_pairs_and_evaluates_when_due_and_nothing_when_nothing_is_new(store, workdirs):
    _declare(store, workdirs, ("exp_a", "v-a", "c-a"), ("exp_b", "v-b", "c-b"))
    _land(store, workdirs, "a1.jsonl", _pairs("a", "v-a", "c-a", 0, 30))

    first = _pass(store, "exp_a")
    assert first.ok and first.paired and first.evaluated
    assert not any(row["sandbox"] for row in sensor_snapshot(store))  # ordinary shadow experiments
    assert (first.samples.new_samples, first.chain_checked) == (30, 30)
    assert first.verdict.verdict["verdict"] in {"variant_wins", "control_wins", "inconclusive"}
    assert _verdict_count(store, "exp_a") == 1

    # No newer batch with its slugs: neither paired nor evaluated again.
    again = _pass(store, "exp_a")
    assert again.ok and not again.paired and not again.evaluated
    # exp_b's fills have not arrived: nothing to pair, and nothing to evaluate beyond a first look at 0 samples.
    other = _pass(store, "exp_b")
    assert other.ok and not other.paired

    # A batch that brings only exp_b's fills does not re-pair exp_a.
    _land(store, workdirs, "b1.jsonl", _pairs("b", "v-b", "c-b", 0, 25))
    assert not _pass(store, "exp_a").paired
    b = _pass(store, "exp_b")
    assert b.paired and b.samples.new_samples == 25 and b.evaluated

    # New exp_a fills: paired and evaluated once more, at the new count.
    _land(store, workdirs, "a2.jsonl", _pairs("a", "v-a", "c-a", 30, 10))
    grown = _pass(store, "exp_a")
    assert grown.samples.new_samples == 10 and grown.evaluated and grown.verdict.verdict["samples"] == 40
    assert _verdict_count(store, "exp_a") == 2


def test_paused_and_unknown_experiments(store, workdirs):
    _declare(store, workdirs, ("exp_a", "v-a", "c-a"))
    _land(store, workdirs, "a1.jsonl", _pairs("a", "v-a", "c-a", 0, 30))
    set_experiment_status(store, "exp_a", "paused")
    paused = _pass(store, "exp_a")
    assert paused.ok and not paused.paired and not paused.evaluated and paused.notes
    assert store.scalar("SELECT COUNT(*) FROM experiment_samples") == 0

    unknown = _pass(store, "exp_typo_sports")
    assert not unknown.ok and NO_SUCH_EXPERIMENT in unknown.error and unknown.failed_stage == "experiment_samples"


def test_a_broken_chain_stops_that_experiment_only(store, workdirs, db_url):
    _declare(store, workdirs, ("exp_a", "v-a", "c-a"), ("exp_b", "v-b", "c-b"))
    _land(store, workdirs, "1.jsonl", _pairs("a", "v-a", "c-a", 0, 30) + _pairs("b", "v-b", "c-b", 0, 30))
    assert _pass(store, "exp_a").evaluated and _pass(store, "exp_b").evaluated

    # Someone with write access past the append-only guard rewrites one of exp_a's samples without re-hashing.
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))  # skips the guard triggers
            conn.execute(sa.text("UPDATE experiment_samples SET edge_delta_bps = edge_delta_bps + 50 "
                                 "WHERE experiment_id = 'exp_a' AND sample_n = 7"))
        else:
            triggers = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                            "AND tbl_name = 'experiment_samples'")).all()
            for name, _ in triggers:
                conn.execute(sa.text(f'DROP TRIGGER "{name}"'))
            conn.execute(sa.text("UPDATE experiment_samples SET edge_delta_bps = edge_delta_bps + 50 "
                                 "WHERE experiment_id = 'exp_a' AND sample_n = 7"))
            for _, sql in triggers:
                conn.execute(sa.text(sql))

    _land(store, workdirs, "2.jsonl", _pairs("a", "v-a", "c-a", 30, 5) + _pairs("b", "v-b", "c-b", 30, 5))
    a, b = _pass(store, "exp_a"), _pass(store, "exp_b")
    assert not a.ok and a.failed_stage == "experiment_samples" and a.chain_break.sample_n == 7
    assert not a.evaluated and _verdict_count(store, "exp_a") == 1
    assert b.ok and b.evaluated and _verdict_count(store, "exp_b") == 2


def test_two_passes_racing_on_one_experiment_do_its_work_once(store, workdirs, db_url):
    """Two processes' passes (two `run`s, or the CLI and the daemon) on one experiment: the per-experiment lock and
    the watermarks re-read under it make the second find nothing to do."""
    _declare(store, workdirs, ("exp_a", "v-a", "c-a"))
    _land(store, workdirs, "a1.jsonl", _pairs("a", "v-a", "c-a", 0, 200))
    newest = newest_batch_by_slug(store)
    outcomes, barrier = [], threading.Barrier(4)

    def one_pass() -> None:
        own = Store(db_url)  # its own engine and connections, as another process would have
        try:
            barrier.wait()
            outcomes.append(process_experiment(own, registry_for(None), "exp_a", GROWTH, newest))
        finally:
            own.dispose()

    threads = [threading.Thread(target=one_pass) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert sorted(o.samples.new_samples for o in outcomes if o.paired) in ([200], [0, 200], [0, 0, 200], [0, 0, 0, 200])
    assert sum(o.evaluated for o in outcomes) == 1
    assert store.scalar("SELECT COUNT(*) FROM experiment_samples WHERE experiment_id = 'exp_a'") == 200
    assert _verdict_count(store, "exp_a") == 1
