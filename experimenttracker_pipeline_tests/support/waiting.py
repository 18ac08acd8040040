"""Progress-based waiting for end-to-end tests.

A loaded machine makes the daemon, its code server and its run workers slower, not wrong; a fixed wall-clock deadline
turns that slowness into a failure. `wait_until` instead fails only when nothing the test can observe (rows, runs,
events, sensor evaluations) has changed for `idle_timeout` seconds, with a generous `overall_cap` as a last resort
against a pipeline that keeps moving without ever getting there.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest


def wait_until(condition: Callable[[], bool], progress: Callable[[], Any], *, idle_timeout: float = 120.0,
               overall_cap: float = 1200.0, poll_seconds: float = 1.0, what: str = "the condition",
               describe: Callable[[], str] | None = None) -> float:
    """Poll until `condition()` is true and return the seconds waited.

    `progress()` returns what the test can see of the work (e.g. a tuple of row, run and event counts); any change
    between two polls counts as progress and restarts the idle clock. Fails the test with what was last seen when
    nothing changed for `idle_timeout` seconds or when `overall_cap` seconds passed in all. `condition` and
    `progress` may raise (e.g. an assertion that a process is still alive) to fail at once.
    """
    started = time.monotonic()
    last_seen = progress()
    last_change = started
    while True:
        if condition():
            return time.monotonic() - started
        time.sleep(poll_seconds)
        now = time.monotonic()
        seen = progress()
        if seen != last_seen:
            last_seen, last_change = seen, now
        reason = None
        if now - last_change >= idle_timeout:
            reason = f"nothing advanced for {now - last_change:.0f} s"
        elif now - started >= overall_cap:
            reason = f"still not done after the overall cap of {overall_cap:g} s"
        if reason:
            detail = f"; {describe()}" if describe else ""
            pytest.fail(f"waiting for {what}: {reason} (waited {now - started:.0f} s in all); "
                        f"last seen: {last_seen!r}{detail}", pytrace=False)
