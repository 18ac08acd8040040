"""Writes shared by every stage: the dialect's INSERT (for ON CONFLICT clauses) and the one bulk load."""

from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def upsert(conn: Connection, table: sa.Table):
    """An INSERT for ``table`` in the connection's dialect, so callers can add ON CONFLICT clauses."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def bulk_load(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Append rows (tuples in ``columns`` order) in one round trip: PostgreSQL ``COPY``, SQLite ``executemany``.

    CSV's NULL is an unquoted empty field (what csv writes for None), so callers never pass empty strings as
    values (validation rejects them). Floats are written with repr, which round-trips exactly.
    """
    names = ", ".join(table.c[c].name for c in columns)  # only known column names reach the statement
    cursor = conn.connection.driver_connection.cursor()
    if conn.dialect.name == "postgresql":
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        buffer.seek(0)
        cursor.copy_expert(f"COPY {table.name} ({names}) FROM STDIN WITH (FORMAT csv)", buffer)
    else:
        cursor.executemany(f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' for _ in columns)})", rows)
