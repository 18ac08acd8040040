"""Shared fixtures. PostgreSQL tests use the server at EXPERIMENTTRACKER_TEST_PG_URL (default: the machine's
local server) and FAIL, never skip, when it is unreachable: CI must exercise the production database."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.ingestion.bus import BusConfig
from experimenttracker_pipeline_tests.support.nats import NATS_SERVER, NatsServer
from experimenttracker_pipeline_tests.support.postgres import PG_ADMIN_URL
from experimenttracker_pipeline_tests.support.registry_server import RegistryServer

TESTS_ROOT = Path(__file__).resolve().parent
# The chain-anchor key of every test (and of the commands the e2e tests start, which inherit it): without it each
# process would create ./data/anchor.key in the working folder.
os.environ.setdefault("EXPERIMENTTRACKER_ANCHOR_KEY", "test-anchor-key-0123456789abcdef")
LAYERS = ("unit", "store", "definitions", "e2e")  # one folder and one marker each: `pytest -m store`


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its layer (its folder) and with `postgres` when it talks to the PostgreSQL server,
    so that layers can be selected with `-m` as well as by path."""
    for item in items:
        parts = item.path.resolve().relative_to(TESTS_ROOT).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(parts[0])
        callspec = getattr(item, "callspec", None)
        if "pg_database" in item.fixturenames or (callspec and callspec.params.get("db_url") == "postgres"):
            item.add_marker("postgres")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session; dropped at the end."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"et_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - the point is to fail loudly
        pytest.fail(f"PostgreSQL is required for the test suite and is not reachable at {PG_ADMIN_URL}: {exc}")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name)
    yield url.render_as_string(hide_password=False)
    # Dagster resources cache their stores; close them before the drop. Looked up rather than imported so that the
    # unit and store layers never pay for importing Dagster.
    resources = sys.modules.get("experimenttracker_pipeline.defs.resources")
    if resources is not None:
        resources.forget_stores()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _pg_schema_url(pg_database: str) -> str:
    """A fresh schema in the session database, selected through search_path, so each test starts empty."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = sa.engine.make_url(pg_database).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path: Path) -> str:
    """The store URL for each backend: every store-level test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return _pg_schema_url(request.getfixturevalue("pg_database"))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return _pg_schema_url(pg_database)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def workdirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {"experiments": tmp_path / "experiments", "landing": tmp_path / "landing"}
    for d in dirs.values():
        d.mkdir()
    return dirs


@pytest.fixture
def registry_server() -> Iterator[RegistryServer]:
    """A real HTTP strategy registry on a free local port; stopped after the test."""
    server = RegistryServer()
    yield server
    server.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private `nats-server -js` on a free port with its own storage; tests may stop() and start() it."""
    assert Path(NATS_SERVER).exists(), "nats-server is required (apt-get install -y nats-server)"
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bus_config(nats_server: NatsServer) -> BusConfig:
    """The report bus settings for the private server: small batches, 1 s ack wait, quick outage detection."""
    return BusConfig(url=nats_server.url, batch_size=50, ack_wait_seconds=1.0, connect_timeout_seconds=1.0)
