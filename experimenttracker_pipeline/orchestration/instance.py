"""The Dagster instance settings (`$DAGSTER_HOME/dagster.yaml`) for this project.

SQLite instance storage by default; with EXPERIMENTTRACKER_DAGSTER_PG_URL set (one variable, e.g.
``postgresql://postgres@127.0.0.1:5432/dagster``) runs, events and schedules go to PostgreSQL through
dagster-postgres. The run queue bounds concurrent runs (spec section 21: 20 in flight), and a per-partition
tag limit makes sure two runs never work on the same experiment partition at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from experimenttracker_pipeline.settings import Settings

MAX_CONCURRENT_RUNS = 20
MARKER = "# Written by experimenttracker from the environment"


def instance_settings(pg_url: str | None = None, pg_password_set: bool = False) -> dict[str, Any]:
    """The dagster.yaml content as a mapping."""
    config: dict[str, Any] = {
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": MAX_CONCURRENT_RUNS,
                "tag_concurrency_limits": [
                    # One run at a time per experiment partition: pairing and evaluation of one experiment never
                    # overlap (the samples step also holds a PostgreSQL advisory lock per experiment).
                    {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
                    # Analysts' backfills cannot starve the sensors' runs.
                    {"key": "dagster/backfill", "limit": 8},
                ],
            },
        },
        # Transient failures (a store restart, a registry blip) are retried by the daemon.
        "run_retries": {"enabled": True, "max_retries": 2},
        "sensors": {"use_threads": True, "num_workers": 4},
        "telemetry": {"enabled": False},
    }
    if pg_url:
        url = sa.engine.make_url(pg_url)
        db: dict[str, Any] = {
            "hostname": url.host or "127.0.0.1",
            "port": url.port or 5432,
            "username": url.username or "postgres",
            "db_name": url.database or "dagster",
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
            "scheme": "postgresql+psycopg2",
        }
        if url.password:
            # Prefer a reference to the password variable over writing the secret into dagster.yaml.
            db["password"] = {"env": "EXPERIMENTTRACKER_DAGSTER_PG_PASSWORD"} if pg_password_set else url.password
        config["storage"] = {"postgres": {"postgres_db": db}}
    return config


def write_instance_yaml(home: Path, pg_url: str | None = None, pg_password_set: bool = False) -> Path:
    """Write dagster.yaml into ``home`` (created if needed). A dagster.yaml the user wrote themselves (without
    our marker line) is left alone."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    text = (f"{MARKER} (EXPERIMENTTRACKER_DAGSTER_PG_URL for PostgreSQL); edit freely after removing this line.\n"
            + yaml.safe_dump(instance_settings(pg_url, pg_password_set), sort_keys=False))
    if path.exists() and not path.read_text().startswith(MARKER):
        return path
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def ensure_instance_home(settings: Settings, home: Path | None = None) -> Path:
    """The Dagster home (``home``, else DAGSTER_HOME, else the data folder's) with a dagster.yaml matching the
    settings; exported as DAGSTER_HOME so the Dagster instance this process opens is that one."""
    home = home or settings.dagster_home_or_default
    os.environ["DAGSTER_HOME"] = str(home)
    write_instance_yaml(home, settings.dagster_pg_url, settings.dagster_pg_password is not None)
    return home
