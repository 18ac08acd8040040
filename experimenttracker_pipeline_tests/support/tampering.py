"""What a database superuser can do that the pipeline's own connections cannot: write with no trigger firing."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

from experimenttracker_pipeline.store import Store


@contextmanager
def superuser(store: Store) -> Iterator[sa.engine.Connection]:
    """A transaction in which no trigger fires, as a database superuser can arrange: PostgreSQL's replica role
    (which skips foreign keys too); on SQLite the triggers are dropped and recreated afterwards."""
    with store.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            yield conn
            return
        triggers = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all()
        for name, _ in triggers:
            conn.exec_driver_sql(f"DROP TRIGGER {name}")
        conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
        yield conn
        for _, sql in triggers:
            conn.exec_driver_sql(sql)
