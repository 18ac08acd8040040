"""The experiment store: what every stage shares.

* `Store`: the SQLAlchemy engine and its pool for SQLite (embedded default) or PostgreSQL (production),
  `begin()`, `ping()`, `StoreUnavailable`, `migrate()` (Alembic, ``sql/alembic``), one bulk load (`bulk_load`:
  PostgreSQL ``COPY``, SQLite ``executemany``) and the operations-report outbox (`emit_report`).
* `advisory_lock`: a named lock held across transactions and processes (PostgreSQL session advisory lock, a file
  lock next to a SQLite database).
* `schema`: every table, defined once (SQLAlchemy Core).

Each stage's own queries live next to it, in ``stages/<stage>/queries.py``.
"""

from experimenttracker_pipeline.store.bulk import bulk_load, upsert
from experimenttracker_pipeline.store.engine import Store, StoreUnavailable
from experimenttracker_pipeline.store.ids import new_ulid
from experimenttracker_pipeline.store.locks import advisory_lock

__all__ = ["Store", "StoreUnavailable", "advisory_lock", "bulk_load", "new_ulid", "upsert"]
