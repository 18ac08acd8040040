"""Baseline: every experiment table, and the triggers that make the audit tables append-only.

A store made by the hand-written ``sql/postgres`` and ``sql/sqlite`` files numbered 0001 to 0005 has exactly the
schema of this revision, so it is stamped here rather than rebuilt (see `experimenttracker_pipeline.store.migrations`).

On an empty database this creates every table as `experimenttracker_pipeline.store.schema` (the one definition)
defines it now; each later revision brings older stores to that same shape and skips what already exists, so on
a store created here it changes nothing. A later revision that alters or drops something must say so here too.

Revision ID: 0001_baseline
Revises:
"""

from alembic import op

from experimenttracker_pipeline.store.schema import APPEND_ONLY, metadata

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

# Trigger names as the hand-written schema had them (an adopted store keeps its own; new ones match it).
SAMPLES = "experiment_samples"
TRUNCATE_GUARDED = (SAMPLES, "experiment_contracts", "approvals", "assignments")
PG_FUNCTIONS = {
    # experiment_samples got its own function first; every later append-only table shares the generic one.
    "experiment_samples_append_only": "'experiment_samples is append-only: % rejected', TG_OP",
    "experimenttracker_append_only": "'% is append-only: % rejected', TG_TABLE_NAME, TG_OP",
}


def _postgresql_statements() -> list[str]:
    statements = [
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        f"    RAISE EXCEPTION {message} USING ERRCODE = 'insufficient_privilege';\nEND\n$$"
        for name, message in PG_FUNCTIONS.items()]
    for table in APPEND_ONLY:
        function = "experiment_samples_append_only" if table == SAMPLES else "experimenttracker_append_only"
        row_trigger = f"{table}_no_update" if table == SAMPLES else f"{table}_append_only"
        statements.append(f"CREATE TRIGGER {row_trigger} BEFORE UPDATE OR DELETE ON {table} "
                          f"FOR EACH ROW EXECUTE FUNCTION {function}()")
        if table in TRUNCATE_GUARDED:
            statements.append(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                              f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    return statements


def _sqlite_statements() -> list[str]:
    # SQLite has no TRUNCATE: a DELETE without WHERE is caught by the DELETE trigger.
    return [f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table}\nBEGIN\n"
            f"    SELECT RAISE(ABORT, '{table} is append-only: {operation} rejected');\nEND"
            for table in APPEND_ONLY for operation in ("UPDATE", "DELETE")]


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind)
    for statement in _postgresql_statements() if bind.dialect.name == "postgresql" else _sqlite_statements():
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not reversible: drop the database instead")
