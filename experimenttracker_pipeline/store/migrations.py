"""Schema migrations: the Alembic revisions in the top-level ``sql/alembic`` folder, applied by `upgrade`.

* Serialised: on PostgreSQL the whole upgrade runs in one transaction holding an advisory lock; on SQLite in one
  ``BEGIN IMMEDIATE`` transaction (the database's write lock). Two processes starting together therefore apply
  each revision once; the second finds nothing to do.
* A store created before Alembic (by the hand-written ``sql/<dialect>/*.sql`` files, recorded in
  ``schema_migrations``) has exactly the schema of one revision (files 0001-0005: the baseline; 0006: the report
  bus): it is stamped at that revision, its ``schema_migrations`` table is dropped, and newer revisions are applied
  on top. No row is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from experimenttracker_pipeline.store.engine import Store, StoreUnavailable, is_connection_error, sqlite_on_connect
from experimenttracker_pipeline.store.locks import advisory_lock
from experimenttracker_pipeline.store.schema import metadata

BASELINE = "0001_baseline"
# The numbered files the hand-written migrations recorded in schema_migrations (0001 to 0005 together equal the
# baseline), and the revision whose schema a store has once the file of that number has run.
LEGACY_MIGRATIONS = ("0001", "0002", "0003", "0004", "0005", "0006")
LEGACY_EQUIVALENT = {"0005": BASELINE, "0006": "0002_report_bus"}
MIGRATION_LOCK = 7423001  # pg_advisory_xact_lock key


class MigrationError(RuntimeError):
    """The database cannot be brought to the current schema (the message says why)."""


def migrations_dir() -> Path:
    """``sql/alembic``: inside the installed package (in a checkout, a link to the top-level ``sql/``), or at the
    top of a checkout where links are not supported."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "sql" / "alembic", package.parent / "sql" / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(f"the Alembic migrations (sql/alembic) are missing next to {package}")


def alembic_config(connection: sa.engine.Connection | None = None) -> Config:
    """An Alembic configuration for our revisions; ``connection`` is the one env.py migrates on."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    config.attributes["applied"] = []
    return config


def revisions() -> list[str]:
    """Every revision id, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current_revision(store: Store) -> str | None:
    with store.begin() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store: Store) -> list[str]:
    """Apply every revision the store lacks; returns them in order (empty when up to date)."""
    if store.dialect == "sqlite":
        # Processes opening a new SQLite store together also race on its first connection (the WAL journal-mode
        # switch, before any transaction can serialise them): a file lock next to the database orders them first.
        with advisory_lock(store, MIGRATION_LOCK, "schema"):
            return _upgrade(store)
    return _upgrade(store)


def _upgrade(store: Store) -> list[str]:
    engine = _migration_engine(store)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            config = alembic_config(conn)
            _adopt_legacy_store(conn, config)
            command.upgrade(config, "head")
            return list(config.attributes["applied"])
    except sa.exc.OperationalError as exc:
        if is_connection_error(exc):
            raise StoreUnavailable(f"experiment store unreachable: {str(exc.orig).strip().splitlines()[0]}") from exc
        raise
    finally:
        if engine is not store.engine:
            engine.dispose()


def _migration_engine(store: Store) -> sa.engine.Engine:
    if store.dialect != "sqlite":
        return store.engine
    # pysqlite starts transactions lazily and not before DDL; take the write lock up front instead, so the
    # whole upgrade is one atomic transaction and a second process waits for it.
    engine = sa.create_engine(store.url, connect_args={"timeout": 60, "isolation_level": None}, poolclass=sa.pool.NullPool)
    sa.event.listen(engine, "connect", sqlite_on_connect)
    sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _adopt_legacy_store(conn: sa.engine.Connection, config: Config) -> None:
    tables = set(sa.inspect(conn).get_table_names())
    if "schema_migrations" not in tables or "alembic_version" in tables:
        return
    done = {row[0].split("_", 1)[0] for row in conn.execute(sa.text("SELECT version FROM schema_migrations"))}
    applied = [number for number in LEGACY_MIGRATIONS if number in done]
    if applied != list(LEGACY_MIGRATIONS[:len(applied)]) or len(applied) < LEGACY_MIGRATIONS.index("0005") + 1:
        missing = [number for number in LEGACY_MIGRATIONS[:5] if number not in done]
        raise MigrationError(f"this store lacks the hand-written migrations {', '.join(missing)}: upgrade it with "
                             "the release that shipped them first")
    command.stamp(config, LEGACY_EQUIVALENT[applied[-1]])
    conn.execute(sa.text("DROP TABLE schema_migrations"))


def schema_differences(conn: sa.engine.Connection) -> list[Any]:
    """What Alembic's autogenerate finds between the database and `schema.metadata` (empty when they agree)."""
    from alembic.autogenerate import compare_metadata

    context = MigrationContext.configure(conn, opts={"include_object": objects_of(conn.dialect.name)})
    return compare_metadata(context, metadata)


def objects_of(dialect: str) -> Callable[..., bool]:
    """Autogenerate filter: an object created for another dialect only (``ddl_if``) is not missing here."""
    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        condition = None if reflected else getattr(obj, "_ddl_if", None)
        return condition is None or condition.dialect in (None, dialect)

    return include


def record_step(config: Config, step: Any) -> None:
    """Alembic's on_version_apply hook (see env.py): remember what this run applied or stamped."""
    if step.is_upgrade:
        config.attributes["applied"].append(
            f"{step.up_revision_id} (existing schema adopted)" if step.is_stamp else step.up_revision_id)
