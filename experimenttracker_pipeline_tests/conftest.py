"""Shared fixtures. PostgreSQL tests use the server at EXPERIMENTTRACKER_TEST_PG_URL (default: the machine's
local server) and FAIL, never skip, when it is unreachable: CI must exercise the production database."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from experimenttracker_pipeline.defs.resources import forget_stores
from experimenttracker_pipeline.store import Store

PG_ADMIN_URL = os.environ.get("EXPERIMENTTRACKER_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


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
    forget_stores()
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


# ---- report and declaration builders ---------------------------------------------------------------
BASE_MS = 1_778_000_000_000


def fill(report_id: str, slug: str, mode: str, pair_key: str, *, edge: float = 1.0, notional: float = 100.0,
         t: int = 0, market: str = "mkt_1", **extra) -> dict:
    return {"report_id": report_id, "report_kind": "OperationsReport", "event_type": "FILL",
            "topic": "polytraders.reports.operations", "bot_id": f"strat.{slug}", "strategy_slug": slug,
            "mode": mode, "pair_key": pair_key, "market_id": market, "size_pusd": notional * 2,
            "notional_pusd": notional, "edge_pusd": edge, "slippage_bps": 2.5, "recorded_at_ms": BASE_MS + t, **extra}


def write_jsonl(path: Path, records: list, *, append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


def declaration(exp_id: str = "exp_a", **overrides) -> str:
    fields = {"experiment_id": exp_id, "principal": "desk:sports", "variant_slug": "v-slug",
              "control_slug": "c-slug", "mode": "shadow_only", "traffic_split_pct": 10,
              "min_samples_for_decision": 100, "started_at": "2026-05-01T00:00:00Z", **overrides}
    lines = []
    for key, value in fields.items():
        if value is None:
            continue
        lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def workdirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {"experiments": tmp_path / "experiments", "landing": tmp_path / "landing"}
    for d in dirs.values():
        d.mkdir()
    return dirs
