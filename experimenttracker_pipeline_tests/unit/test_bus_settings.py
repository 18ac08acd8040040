"""The report bus and serve settings: defaults, parsing, and a clear error naming the variable for bad values."""

from __future__ import annotations

import pytest

from experimenttracker_pipeline.settings import Settings, SettingsError
from experimenttracker_pipeline.stages.ingestion.bus import BusConfig


def test_no_bus_by_default():
    settings = Settings.from_env({})
    assert settings.bus_url is None and BusConfig.from_settings(settings) is None
    assert (settings.bus_stream, settings.bus_subjects, settings.bus_consumer) == ("REPORTS", ("polytraders.reports.>",), "experimenttracker")
    assert (settings.serve_host, settings.serve_port, settings.bus_batch_size) == ("127.0.0.1", 9496, 1000)


def test_bus_settings_are_read_and_handed_to_the_consumer(tmp_path):
    creds = tmp_path / "bot.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    settings = Settings.from_env({
        "EXPERIMENTTRACKER_BUS_URL": "nats://a:4222,nats://b:4222", "EXPERIMENTTRACKER_BUS_STREAM": "OPS",
        "EXPERIMENTTRACKER_BUS_SUBJECTS": "polytraders.reports.fills, polytraders.reports.replay",
        "EXPERIMENTTRACKER_BUS_CONSUMER": "et-2", "EXPERIMENTTRACKER_BUS_BATCH_SIZE": "250",
        "EXPERIMENTTRACKER_BUS_MAX_PER_RUN": "9000", "EXPERIMENTTRACKER_BUS_ACK_WAIT_SECONDS": "30",
        "EXPERIMENTTRACKER_BUS_CREDS_FILE": str(creds), "EXPERIMENTTRACKER_SERVE_PORT": "9100"})
    config = BusConfig.from_settings(settings)
    assert config.url == "nats://a:4222,nats://b:4222" and config.stream == "OPS" and config.consumer == "et-2"
    assert config.subjects == ("polytraders.reports.fills", "polytraders.reports.replay")
    assert (config.batch_size, config.max_per_run, config.ack_wait_seconds) == (250, 9000, 30.0)
    assert config.creds_file == creds and settings.serve_port == 9100


@pytest.mark.parametrize("name, value", [
    ("EXPERIMENTTRACKER_BUS_URL", "http://127.0.0.1:4222"),
    ("EXPERIMENTTRACKER_BUS_URL", "127.0.0.1:4222"),
    ("EXPERIMENTTRACKER_BUS_STREAM", "REPORTS.X"),
    ("EXPERIMENTTRACKER_BUS_SUBJECTS", "polytraders.>.reports"),
    ("EXPERIMENTTRACKER_BUS_SUBJECTS", "polytraders..reports"),
    ("EXPERIMENTTRACKER_BUS_CONSUMER", "has space"),
    ("EXPERIMENTTRACKER_BUS_BATCH_SIZE", "0"),
    ("EXPERIMENTTRACKER_BUS_BATCH_SIZE", "20000"),
    ("EXPERIMENTTRACKER_BUS_ACK_WAIT_SECONDS", "-1"),
    ("EXPERIMENTTRACKER_BUS_CREDS_FILE", "/nonexistent/bot.creds"),
    ("EXPERIMENTTRACKER_SERVE_PORT", "70000"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
