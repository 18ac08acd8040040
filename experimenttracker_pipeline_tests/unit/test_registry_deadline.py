"""A registry that answers one byte at a time is cut off at the call's total deadline, not kept for as long as each
single read keeps arriving within the per-read timeout."""

import time

import pytest

from experimenttracker_pipeline.stages.drift.registry import HttpStrategyRegistry, RegistryUnavailable
from experimenttracker_pipeline_tests.support.registry_server import DrippingServer


def test_a_byte_every_two_seconds_is_cut_off_at_the_configured_timeout():
    server = DrippingServer(interval=2.0)  # its whole answer would take over 3 minutes
    try:
        registry = HttpStrategyRegistry(server.url, max_attempts=1)
        assert registry.timeout_ms == 5000  # the spec's per-call timeout
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="within 5000 ms"):
            registry.send_drift_signal({"experiment_id": "exp_slow"}, "exp_slow:drift")
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert server.requests == 1
    # Not before the deadline; and nowhere near the 3 minutes the answer would take (generous for a loaded machine).
    assert 4.9 <= elapsed < 30
