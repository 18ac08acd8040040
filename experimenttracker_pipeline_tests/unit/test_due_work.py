"""What is due, from the store's watermarks: pairing and evaluation decisions, batching into runs with retries,
partitions to add and remove, declaration files to register, and the stop flag."""

import os
import signal
import threading

import pytest

from experimenttracker_pipeline.orchestration import due_work as dw
from experimenttracker_pipeline.orchestration import stopping


def _row(experiment_id="e", samples=0, min_samples=100, evaluated=None, through=None, v="v", c="c"):
    return {"experiment_id": experiment_id, "samples": samples, "min_samples_for_decision": min_samples,
            "evaluated_samples": evaluated, "paired_through_batch": through, "variant_slug": v, "control_slug": c}


def test_growth_rule_evaluates_any_change_and_never_twice_for_one_count():
    rule = dw.EvaluationRule("growth")
    assert rule.due(0, 100, None)  # never evaluated: evaluate, even below min_samples (insufficient_samples)
    assert not rule.due(40, 100, 40)
    assert rule.due(41, 100, 40)
    assert not rule.due(0, 100, 3000)  # a sandbox experiment: 0 pairs, its verdict counted 3000 logs


def test_step_rule_crosses_the_threshold_then_steps():
    rule = dw.EvaluationRule("step", step_pct=0.1, step_n=1)
    assert not rule.due(99, 100, None)
    assert rule.due(100, 100, None)
    assert not rule.due(100, 100, 100)
    assert not rule.due(109, 100, 100)
    assert rule.due(110, 100, 100)
    # A CLI evaluation below the threshold does not stop the daemon's first evaluation at the threshold.
    assert rule.due(100, 100, 40)
    assert dw.next_evaluation_count(1000, step_pct=0.0, step_n=250) == 1250
    with pytest.raises(ValueError):
        dw.EvaluationRule("sometimes")


def test_pairing_is_due_only_for_batches_newer_than_the_watermark():
    newest = {"v": 7, "c": 5, "other": 99}
    assert dw.pairing_due(_row(through=None), newest)
    assert dw.pairing_due(_row(through=6), newest)
    assert not dw.pairing_due(_row(through=7), newest)
    assert not dw.pairing_due(_row(through=0, v="x", c="y"), newest)  # no fills of its slugs at all


def test_due_experiments_from_watermarks():
    snapshot = [_row("paired_and_evaluated", samples=150, evaluated=150, through=9),
                _row("new_fills", samples=150, evaluated=150, through=8),
                _row("crossed", samples=100, evaluated=None, through=9),
                _row("below", samples=99, evaluated=None, through=9)]
    newest = {"v": 9, "c": 9}
    due = dw.due_experiments(snapshot, newest, dw.EvaluationRule("step"))
    assert [(d.experiment_id, d.pair, d.evaluate) for d in due] == [("new_fills", True, False), ("crossed", False, True)]
    assert due[0].key == "new_fills:b9:n150"
    assert [d.experiment_id for d in dw.due_experiments(snapshot, newest, dw.EvaluationRule("growth"))] == [
        "new_fills", "crossed", "below"]
    assert [d.experiment_id for d in dw.due_experiments(snapshot, newest, dw.EvaluationRule("growth"), only=["below"])] == ["below"]


def test_chunks():
    assert dw.chunks(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert dw.chunks([], 3) == []


def test_split_over_steps_is_even_ordered_and_drops_repeats():
    assert dw.split_over_steps(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert dw.split_over_steps(["a", "b", "a"], 4) == [["a"], ["b"], [], []]
    assert dw.split_over_steps([], 2) == [[], []]


def _due(experiment_id, samples=100, batch=1):
    return dw.DueExperiment(experiment_id, pair=False, evaluate=True, samples=samples, newest_batch=batch)


def test_pass_requests_batch_every_due_experiment_and_never_repeat_work():
    cursor: dict = {}
    states: dict = {}
    due = [_due(f"e{i}") for i in range(5)]
    first = dw.plan_pass_requests(due, cursor, 0, run_state=lambda k: states.get(k, dw.RUN_UNKNOWN),
                                  retry_after_ms=1000, run_size=2)
    assert [r.experiment_ids for r in first] == [["e0", "e1"], ["e2", "e3"], ["e4"]]
    assert len({r.run_key for r in first}) == 3
    # While those runs are in flight nothing is requested again, even for new work of the same experiments.
    for r in first:
        states[r.run_key] = dw.RUN_IN_FLIGHT
    assert dw.plan_pass_requests([_due("e0", samples=130), *due[1:]], cursor, 10,
                                 run_state=lambda k: states.get(k, dw.RUN_UNKNOWN), retry_after_ms=1000, run_size=2) == []
    # The runs finished; e1 was done, e3 failed inside its run (still due with the same key), e0 has new work.
    for r in first:
        states[r.run_key] = dw.RUN_SUCCEEDED
    still_due = [_due("e0", samples=130), _due("e3")]
    second = dw.plan_pass_requests(still_due, cursor, 20, run_state=lambda k: states.get(k, dw.RUN_UNKNOWN),
                                   retry_after_ms=1000, run_size=10)
    assert [r.experiment_ids for r in second] == [["e0"]]  # new work at once; e3 waits for the retry delay
    assert set(cursor["requested"]) == {"e0", "e3"}  # e1, e2, e4 were done: forgotten
    states[second[0].run_key] = dw.RUN_SUCCEEDED
    third = dw.plan_pass_requests([_due("e3")], cursor, 1500, run_state=lambda k: states.get(k, dw.RUN_UNKNOWN),
                                  retry_after_ms=1000, run_size=10)
    assert [(r.experiment_ids, r.retried) for r in third] == [(["e3"], ["e3"])]
    assert third[0].run_key not in {r.run_key for r in first + second}


def test_pass_requests_after_a_cursor_reset_repeat_nothing_done():
    """A fresh cursor (new daemon, lost cursor) only sees what the store says is due: done work is not due."""
    cursor: dict = {}
    assert dw.plan_pass_requests([], cursor, 0, run_state=lambda k: dw.RUN_UNKNOWN, retry_after_ms=1, run_size=5) == []
    assert cursor == {"requested": {}}


def test_partition_changes_add_stored_and_remove_unbacked():
    assert dw.partition_changes(["a", "exp_typo_sports"], ["a", "b"]) == (["b"], ["exp_typo_sports"])
    assert dw.partition_changes([], []) == ([], [])


def test_declarations_due():
    files = {"/d/a.yaml": (10, 1_000), "/d/b.yaml": (10, 5_000), "/d/new.yaml": (3, 1)}
    registered = {"/d/a.yaml": 2_000, "/d/b.yaml": 2_000}
    assert dw.declarations_due(files, registered) == {"/d/b.yaml": (10, 5_000), "/d/new.yaml": (3, 1)}
    assert dw.declarations_due({"/d/old.yaml": (1, 9)}, {"/d/old.yaml": None}) == {}


def test_folder_stats(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\n")
    (tmp_path / "notes.txt").write_text("ignored")
    stats = dw.folder_stats(tmp_path, (".yaml",))
    assert list(stats) == [str((tmp_path / "a.yaml").resolve())]
    size, mtime_ms = stats[str((tmp_path / "a.yaml").resolve())]
    assert size == 5 and abs(mtime_ms / 1000 - (tmp_path / "a.yaml").stat().st_mtime) < 1
    with pytest.raises(OSError):
        dw.folder_stats(tmp_path / "missing", (".yaml",))


def test_deferred_signals_turn_a_signal_into_the_stop_flag_and_restore_handlers():
    stopping.STOP.clear()
    before = signal.getsignal(signal.SIGTERM)
    try:
        with stopping.deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stopping.requested()
            assert stopping.STOP.signum == signal.SIGTERM and stopping.STOP.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        stopping.STOP.clear()


def test_deferred_signals_leave_other_threads_alone():
    seen = []
    thread = threading.Thread(target=lambda: seen.append(stopping.deferred_signals().__enter__() is None))
    thread.start()
    thread.join()
    assert seen == [True] and not stopping.requested()


def test_handling_signals_sets_the_flag_announces_once_and_restores():
    before = signal.getsignal(signal.SIGINT)
    announced = []
    with stopping.handling_signals(announced.append):
        os.kill(os.getpid(), signal.SIGINT)
        assert stopping.requested() and stopping.STOP.exit_code == 130
        assert announced == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before and not stopping.requested()
