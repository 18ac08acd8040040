"""The end-to-end tests' progress-based wait: it fails on no progress, not on a slow but advancing pipeline."""

import itertools
import time

import pytest

from experimenttracker_pipeline_tests.support.waiting import wait_until


def test_returns_once_the_condition_holds():
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3, lambda: 0, idle_timeout=5, poll_seconds=0.01) < 5


def test_a_slow_pipeline_that_keeps_advancing_outlives_the_idle_timeout():
    start = time.monotonic()
    ticks = itertools.count()
    # Progress changes on every poll; the condition needs 3 idle timeouts' worth of time.
    wait_until(lambda: time.monotonic() - start > 0.6, lambda: next(ticks), idle_timeout=0.2, poll_seconds=0.01)


def test_fails_with_what_was_last_seen_when_nothing_advances():
    with pytest.raises(pytest.fail.Exception, match=r"waiting for the samples: nothing advanced .*last seen: \{'rows': 7\}; runs: none"):
        wait_until(lambda: False, lambda: {"rows": 7}, idle_timeout=0.2, poll_seconds=0.01, what="the samples",
                   describe=lambda: "runs: none")


def test_the_overall_cap_stops_a_pipeline_that_never_gets_there():
    ticks = itertools.count()
    with pytest.raises(pytest.fail.Exception, match="overall cap of 0.3 s"):
        wait_until(lambda: False, lambda: next(ticks), idle_timeout=10, overall_cap=0.3, poll_seconds=0.01)
