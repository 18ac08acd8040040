"""Tamper evidence: anchored chain heads, immutable declarations, TRUNCATE and REPLACE refused everywhere.

* ``sample_chain_anchors``: the chain head (sample_n, sample_hash) each evaluation used, with an HMAC over it
  whose key the store does not hold; append-only like the other audit tables.
* ``signoffs.anchor_hmac``: the same key's HMAC over each new sign-off (NULL on older ones).
* Every append-only table refuses UPDATE and DELETE (the baseline's triggers, created here for the anchors), and
  on PostgreSQL also TRUNCATE (the baseline guarded only some tables). On SQLite a REPLACE deletes the old row:
  the DELETE triggers refuse it because every connection of the pipeline enables ``recursive_triggers``
  (`experimenttracker_pipeline.store.engine.sqlite_on_connect`).
* ``experiments``: the declaration columns cannot change (only ``status`` does) and a registered experiment is
  never deleted (nor truncated), so a REPLACE cannot swap its declaration either.
* ``experiment_pairing_state``: its sample count never decreases and its rows are never deleted.

A store the baseline has just created has the anchors table and the append-only row triggers already: every step
here skips what exists.

Revision ID: 0005_tamper_evidence
Revises: 0003_pairing_watermark
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateColumn

from experimenttracker_pipeline.store.schema import APPEND_ONLY, sample_chain_anchors, signoffs

revision = "0005_tamper_evidence"
down_revision = "0004_landing_identity"
branch_labels = None
depends_on = None

SAMPLES = "experiment_samples"
IMMUTABLE_DECLARATION = "experiments: the declaration columns are immutable (only status changes)"
NEVER_DELETED = "experiments: a registered experiment is never deleted"
COUNT_NEVER_DECREASES = "experiment_pairing_state: the sample count never decreases and no row is deleted"
# The declaration columns as of this revision (later revisions extend the list and recreate the guard).
DECLARATION_COLUMNS = ("experiment_id", "principal", "subject", "variant_slug", "control_slug", "mode",
                       "traffic_split_pct", "min_samples_for_decision", "auto_promote_on_winning",
                       "require_human_signoff", "started_at_ms", "caliper_seconds", "declaration_sha256",
                       "declaration_json", "source_file", "created_at", "registered_at_ms")


def _pg_functions() -> list[str]:
    columns = ", ".join(c for c in DECLARATION_COLUMNS)
    old = ", ".join(f"OLD.{c}" for c in DECLARATION_COLUMNS)
    new = ", ".join(f"NEW.{c}" for c in DECLARATION_COLUMNS)
    return [
        # The generic append-only function exists since the baseline; OR REPLACE keeps this revision re-runnable.
        "CREATE OR REPLACE FUNCTION experimenttracker_append_only() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        "    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';\n"
        "END\n$$",
        "CREATE OR REPLACE FUNCTION experimenttracker_declaration_immutable() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        f"    IF TG_OP <> 'UPDATE' THEN\n"
        f"        RAISE EXCEPTION '{NEVER_DELETED}: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';\n"
        f"    END IF;\n"
        f"    -- ({columns})\n"
        f"    IF ROW({new}) IS DISTINCT FROM ROW({old}) THEN\n"
        f"        RAISE EXCEPTION '{IMMUTABLE_DECLARATION}: UPDATE rejected' USING ERRCODE = 'insufficient_privilege';\n"
        f"    END IF;\n"
        "    RETURN NEW;\nEND\n$$",
        "CREATE OR REPLACE FUNCTION experimenttracker_pairing_count() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        "    IF TG_OP <> 'UPDATE' THEN\n"
        f"        RAISE EXCEPTION '{COUNT_NEVER_DECREASES}: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';\n"
        "    END IF;\n"
        "    IF NEW.samples < OLD.samples THEN\n"
        f"        RAISE EXCEPTION '{COUNT_NEVER_DECREASES}: UPDATE rejected' USING ERRCODE = 'insufficient_privilege';\n"
        "    END IF;\n"
        "    RETURN NEW;\nEND\n$$",
    ]


def _pg_triggers(existing: set[tuple[str, str]]) -> list[str]:
    wanted: list[tuple[str, str, str]] = []
    for table in APPEND_ONLY:
        function = "experiment_samples_append_only" if table == SAMPLES else "experimenttracker_append_only"
        row_trigger = f"{table}_no_update" if table == SAMPLES else f"{table}_append_only"
        wanted.append((table, row_trigger, f"BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()"))
        wanted.append((table, f"{table}_no_truncate",
                       f"BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"))
    wanted += [
        ("experiments", "experiments_declaration_immutable",
         "BEFORE UPDATE OR DELETE ON experiments FOR EACH ROW EXECUTE FUNCTION experimenttracker_declaration_immutable()"),
        ("experiments", "experiments_no_truncate",
         "BEFORE TRUNCATE ON experiments FOR EACH STATEMENT EXECUTE FUNCTION experimenttracker_declaration_immutable()"),
        ("experiment_pairing_state", "experiment_pairing_state_count",
         "BEFORE UPDATE OR DELETE ON experiment_pairing_state FOR EACH ROW EXECUTE FUNCTION experimenttracker_pairing_count()"),
        ("experiment_pairing_state", "experiment_pairing_state_no_truncate",
         "BEFORE TRUNCATE ON experiment_pairing_state FOR EACH STATEMENT EXECUTE FUNCTION experimenttracker_pairing_count()"),
    ]
    return [f"CREATE TRIGGER {name} {body}" for table, name, body in wanted if (table, name) not in existing]


def _sqlite_statements() -> list[str]:
    statements = [f"CREATE TRIGGER IF NOT EXISTS {table}_no_{operation.lower()} BEFORE {operation} ON {table}\nBEGIN\n"
                  f"    SELECT RAISE(ABORT, '{table} is append-only: {operation} rejected');\nEND"
                  for table in APPEND_ONLY for operation in ("UPDATE", "DELETE")]
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in DECLARATION_COLUMNS)
    statements += [
        f"CREATE TRIGGER IF NOT EXISTS experiments_declaration_immutable BEFORE UPDATE ON experiments\n"
        f"WHEN {changed}\nBEGIN\n    SELECT RAISE(ABORT, '{IMMUTABLE_DECLARATION}: UPDATE rejected');\nEND",
        f"CREATE TRIGGER IF NOT EXISTS experiments_no_delete BEFORE DELETE ON experiments\nBEGIN\n"
        f"    SELECT RAISE(ABORT, '{NEVER_DELETED}: DELETE rejected');\nEND",
        f"CREATE TRIGGER IF NOT EXISTS experiment_pairing_state_count BEFORE UPDATE ON experiment_pairing_state\n"
        f"WHEN NEW.samples < OLD.samples\nBEGIN\n    SELECT RAISE(ABORT, '{COUNT_NEVER_DECREASES}: UPDATE rejected');\nEND",
        f"CREATE TRIGGER IF NOT EXISTS experiment_pairing_state_no_delete BEFORE DELETE ON experiment_pairing_state\n"
        f"BEGIN\n    SELECT RAISE(ABORT, '{COUNT_NEVER_DECREASES}: DELETE rejected');\nEND",
    ]
    return statements


def upgrade() -> None:
    bind = op.get_bind()
    if "anchor_hmac" not in {c["name"] for c in sa.inspect(bind).get_columns("signoffs")}:
        column = CreateColumn(signoffs.c.anchor_hmac).compile(dialect=bind.dialect)
        op.execute(f"ALTER TABLE signoffs ADD COLUMN {column}")
    sample_chain_anchors.create(bind, checkfirst=True)
    for index in sample_chain_anchors.indexes:
        index.create(bind, checkfirst=True)
    if bind.dialect.name == "postgresql":
        existing = {(r[0], r[1]) for r in bind.execute(sa.text(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND pg_table_is_visible(c.oid)"))}
        statements = _pg_functions() + _pg_triggers(existing)
    else:
        statements = _sqlite_statements()
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("not reversible: restore a backup instead")
