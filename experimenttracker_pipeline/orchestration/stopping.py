"""Stopping on SIGINT/SIGTERM between units of work, never inside one.

One process-wide flag. Long loops (`ingest_landing` between chunks, the experiment pass between experiments) ask
`requested()` and stop at the boundary, so every unit is either fully committed or not started and a re-run picks
up exactly where the stopped one ended.

Who sets the flag:
* the CLI (`run`, `backfill`) runs under `handling_signals()` in its main thread and runs Dagster in a worker
  thread, so Dagster's own interrupt handling (which raises inside user code) never sees the signal;
* a Dagster run worker (the daemon's, or one terminated from the UI) runs our ops in its main thread: the ops wrap
  their loops in `deferred_signals()`, which turns SIGINT/SIGTERM into the flag for the duration of the loop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The first stop signal received (its number), if any."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def requested(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self.signum = None
        self._event.clear()

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (what shells report)."""
        return 128 + (self.signum or signal.SIGINT)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name


STOP = StopRequest()


def requested() -> bool:
    return STOP.requested()


@contextmanager
def handling_signals(announce=None) -> Iterator[None]:
    """For the duration of a CLI command (main thread): the first SIGINT/SIGTERM sets the flag (``announce(signum)``
    is called once, e.g. to print "stopping after the current experiment"); a second one exits at once with 128 +
    its number. The previous handlers and a clear flag are restored afterwards."""

    def handler(signum, _frame):
        if STOP.requested():
            sys.stderr.write(f"\nexperimenttracker: second {signal.Signals(signum).name}: exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        STOP.request(signum)
        if announce is not None:
            announce(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}
    STOP.clear()
    for signum in _HANDLED:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        STOP.clear()


@contextmanager
def deferred_signals() -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM set the flag instead of interrupting (main thread only; elsewhere the
    process's own handlers, e.g. the CLI's, are in charge). The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}
    for signum in _HANDLED:
        signal.signal(signum, lambda s, _f: STOP.request(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
