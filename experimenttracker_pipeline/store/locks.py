"""Locks held across transactions and processes."""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from experimenttracker_pipeline.store.engine import Store


@contextmanager
def advisory_lock(store: Store, namespace: int, key: str) -> Iterator[None]:
    """Hold a lock named (namespace, key) across transactions and processes until the block ends.

    PostgreSQL: a session advisory lock on a connection held for the block. SQLite: an exclusive ``flock`` on a
    file next to the database (processes sharing a SQLite store share its host)."""
    if store.engine.dialect.name == "postgresql":
        params = {"n": namespace, "k": key}
        with store.engine.connect() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_lock(sa.bindparam("n"), sa.func.hashtext(sa.bindparam("k")))), params)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(sa.bindparam("n"), sa.func.hashtext(sa.bindparam("k")))), params)
                conn.commit()
        return
    database = store.engine.url.database
    folder = (Path(f"{database}.locks") if database and database != ":memory:"
              else Path(tempfile.gettempdir()) / "experimenttracker-locks")
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(f"{namespace}:{key}".encode()).hexdigest()[:32]
    with open(folder / name, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
