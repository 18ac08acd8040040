"""Dagster resources: thin handles on the store and the settings, built from the same environment variables
as the CLI (see `experimenttracker_pipeline.settings`)."""


import threading
from pathlib import Path

import dagster as dg

from experimenttracker_pipeline.settings import Settings
from experimenttracker_pipeline.store import Store

_STORES: dict[str, Store] = {}
_LOCK = threading.Lock()


def shared_store(db_url: str) -> Store:
    """One migrated `Store` (one connection pool) per database URL per process."""
    with _LOCK:
        store = _STORES.get(db_url)
        if store is None:
            store = Store(db_url)
            store.migrate()
            _STORES[db_url] = store
        return store


def forget_stores() -> None:
    """Drop cached stores (tests use fresh databases)."""
    with _LOCK:
        for store in _STORES.values():
            store.dispose()
        _STORES.clear()


class ExperimentStoreResource(dg.ConfigurableResource):
    """The experiment store (SQLite by default, PostgreSQL in production): EXPERIMENTTRACKER_DB_URL."""

    db_url: str
    reports_dir: str | None = None  # where the HTML experiment reports are written (None: not written)

    def get_store(self) -> Store:
        return shared_store(self.db_url)


class PipelineSettingsResource(dg.ConfigurableResource):
    """Where declarations and the report bus archive live, and the pairing caliper."""

    landing_dir: str
    experiments_dir: str
    caliper_seconds: float = 60.0
    stall_window_seconds: float = 3600.0

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_dir)

    @property
    def experiments_path(self) -> Path:
        return Path(self.experiments_dir)


class StrategyRegistryResource(dg.ConfigurableResource):
    """Where drift signals go: the `strategy_registry_signals` table (default), or an HTTP endpoint that
    receives a JSON POST with an Idempotency-Key (EXPERIMENTTRACKER_REGISTRY_URL)."""

    url: str | None = None
    timeout_ms: int = 5000
    max_attempts: int = 3
    backoff_seconds: float = 0.5

    def get_registry(self):
        from experimenttracker_pipeline.stages.drift.registry import registry_for

        return registry_for(self.url, timeout_ms=self.timeout_ms, max_attempts=self.max_attempts,
                            backoff_seconds=self.backoff_seconds)


class ReportBusResource(dg.ConfigurableResource):
    """The report bus (NATS JetStream): EXPERIMENTTRACKER_BUS_URL and friends. ``url`` None: no bus configured."""

    url: str | None = None
    stream: str = "REPORTS"
    subjects: list[str] = ["polytraders.reports.>"]
    consumer: str = "experimenttracker"
    batch_size: int = 1000
    max_per_run: int = 50_000
    ack_wait_seconds: float = 60.0
    creds_file: str | None = None
    tls_ca_file: str | None = None
    connect_timeout_seconds: float = 2.0

    def config(self):
        """The bus configuration, or None when no bus is configured."""
        from experimenttracker_pipeline.stages.ingestion.bus import BusConfig

        if not self.url:
            return None
        return BusConfig(url=self.url, stream=self.stream, subjects=tuple(self.subjects), consumer=self.consumer,
                         batch_size=self.batch_size, max_per_run=self.max_per_run, ack_wait_seconds=self.ack_wait_seconds,
                         creds_file=Path(self.creds_file) if self.creds_file else None,
                         tls_ca_file=Path(self.tls_ca_file) if self.tls_ca_file else None,
                         connect_timeout_seconds=self.connect_timeout_seconds)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources, every value taken from `Settings` (so the UI, the daemon and the CLI agree)."""
    return {
        "store": ExperimentStoreResource(db_url=settings.db_url, reports_dir=str(settings.data_dir / "reports")),
        "settings": PipelineSettingsResource(
            landing_dir=str(settings.landing_dir), experiments_dir=str(settings.experiments_dir),
            caliper_seconds=settings.caliper_seconds, stall_window_seconds=settings.stall_window_seconds),
        "registry": StrategyRegistryResource(url=settings.registry_url, timeout_ms=settings.registry_timeout_ms),
        "report_bus": ReportBusResource(
            url=settings.bus_url, stream=settings.bus_stream, subjects=list(settings.bus_subjects),
            consumer=settings.bus_consumer, batch_size=settings.bus_batch_size, max_per_run=settings.bus_max_per_run,
            ack_wait_seconds=settings.bus_ack_wait_seconds,
            creds_file=str(settings.bus_creds_file) if settings.bus_creds_file else None,
            tls_ca_file=str(settings.bus_tls_ca_file) if settings.bus_tls_ca_file else None,
            connect_timeout_seconds=settings.bus_connect_timeout_seconds),
    }
