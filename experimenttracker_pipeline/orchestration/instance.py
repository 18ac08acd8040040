"""The Dagster instance settings (`$DAGSTER_HOME/dagster.yaml`) for this project.

SQLite instance storage by default; with EXPERIMENTTRACKER_DAGSTER_PG_URL set (one variable, e.g.
``postgresql://postgres@127.0.0.1:5432/dagster``) runs, events and schedules go to PostgreSQL through
dagster-postgres. The run queue bounds concurrent runs (spec section 21: 20 in flight), and a per-partition
tag limit makes sure two runs never work on the same experiment partition at once.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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
        # Dagster writes its event log one event per transaction; waiting for each WAL flush doubled the cost of a
        # run over many experiments. A server crash can lose the last fraction of a second of run events (never
        # the experiment store's data, which keeps synchronous commits). Delete this line to opt out.
        db["params"] = {"options": "-c synchronous_commit=off"}
        config["storage"] = {"postgres": {"postgres_db": db}}
    return config


def write_instance_yaml(home: Path, pg_url: str | None = None, pg_password_set: bool = False) -> Path:
    """Write dagster.yaml into ``home`` (created if needed). A dagster.yaml the user wrote themselves (without
    our marker line) is left alone. The file is replaced atomically: a process reading it meanwhile sees the old
    or the new text, never half of it."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    text = (f"{MARKER} (EXPERIMENTTRACKER_DAGSTER_PG_URL for PostgreSQL); edit freely after removing this line.\n"
            + yaml.safe_dump(instance_settings(pg_url, pg_password_set), sort_keys=False))
    if path.exists() and not path.read_text().startswith(MARKER):
        return path
    if not path.exists() or path.read_text() != text:
        partial = path.with_name(f".dagster.yaml.{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)
    return path


@contextmanager
def instance_lock(home: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``home`` (a file lock, for the processes of one host): the first process to open
    a fresh instance creates Dagster's tables while the others wait, instead of racing them ("table runs already
    exists")."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".experimenttracker-instance.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_celery_yaml(home: Path, settings: Settings) -> Path:
    """``celery.yaml`` for `dagster-celery worker start -y`: the same broker and result backend the runs use."""
    path = home / "celery.yaml"
    text = (f"{MARKER} (EXPERIMENTTRACKER_CELERY_BROKER / _BACKEND).\n"
            + yaml.safe_dump({"execution": {"config": {"broker": settings.celery_broker,
                                                       "backend": settings.celery_backend}}}, sort_keys=False))
    if path.exists() and not path.read_text().startswith(MARKER):
        return path
    partial = path.with_name(f".celery.yaml.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def ensure_instance_home(settings: Settings, home: Path | None = None) -> Path:
    """The Dagster home (``home``, else DAGSTER_HOME, else the data folder's) with a dagster.yaml matching the
    settings; exported as DAGSTER_HOME so the Dagster instance this process opens is that one."""
    home = home or settings.dagster_home_or_default
    os.environ["DAGSTER_HOME"] = str(home)
    with instance_lock(home):
        write_instance_yaml(home, settings.dagster_pg_url, settings.dagster_pg_password is not None)
        if settings.executor == "celery":
            write_celery_yaml(home, settings)
    return home


def pool_storage_connections(instance: Any) -> None:
    """Keep pooled connections to Dagster's PostgreSQL storage in this process.

    dagster-postgres opens a new connection for every stored event (it pools only in the webserver); a run that
    records thousands of materializations spends most of its time connecting. The webserver's switch to a small
    pool is applied once per instance; SQLite storage is left as it is."""
    if getattr(instance, "_experimenttracker_pooled", False):
        return
    if type(instance.event_log_storage).__module__.startswith("dagster_postgres"):
        instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=10)
    instance._experimenttracker_pooled = True
