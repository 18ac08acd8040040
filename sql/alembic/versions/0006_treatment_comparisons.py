"""A/B/n experiments: one treatment comparison per non-control variant.

* ``experiments.parent_experiment_id`` and ``experiments.variant_id``: an experiment with several treatments is
  recorded once as itself and once per treatment as a *comparison* (``<experiment_id>/<variant_id>``: that
  treatment against the shared control), which has its own samples, intervals, verdict, drift signal and
  promotion. Both columns are NULL on every experiment recorded before, so their samples and verdicts are
  unchanged.
* The declaration guard of ``experiments`` covers the two new columns too (a comparison cannot be re-parented).

Revision ID: 0006_treatment_comparisons
Revises: 0005_tamper_evidence
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateColumn

from experimenttracker_pipeline.store.schema import DECLARATION_COLUMNS, experiments

revision = "0006_treatment_comparisons"
down_revision = "0005_tamper_evidence"
branch_labels = None
depends_on = None

IMMUTABLE_DECLARATION = "experiments: the declaration columns are immutable (only status changes)"
NEVER_DELETED = "experiments: a registered experiment is never deleted"


def _pg_guard() -> str:
    columns = ", ".join(DECLARATION_COLUMNS)
    old = ", ".join(f"OLD.{c}" for c in DECLARATION_COLUMNS)
    new = ", ".join(f"NEW.{c}" for c in DECLARATION_COLUMNS)
    return ("CREATE OR REPLACE FUNCTION experimenttracker_declaration_immutable() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            "    IF TG_OP <> 'UPDATE' THEN\n"
            f"        RAISE EXCEPTION '{NEVER_DELETED}: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';\n"
            "    END IF;\n"
            f"    -- ({columns})\n"
            f"    IF ROW({new}) IS DISTINCT FROM ROW({old}) THEN\n"
            f"        RAISE EXCEPTION '{IMMUTABLE_DECLARATION}: UPDATE rejected' USING ERRCODE = 'insufficient_privilege';\n"
            "    END IF;\n"
            "    RETURN NEW;\nEND\n$$")


def _sqlite_guard() -> list[str]:
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in DECLARATION_COLUMNS)
    return ["DROP TRIGGER IF EXISTS experiments_declaration_immutable",
            f"CREATE TRIGGER experiments_declaration_immutable BEFORE UPDATE ON experiments\n"
            f"WHEN {changed}\nBEGIN\n    SELECT RAISE(ABORT, '{IMMUTABLE_DECLARATION}: UPDATE rejected');\nEND"]


def upgrade() -> None:
    bind = op.get_bind()
    present = {c["name"] for c in sa.inspect(bind).get_columns("experiments")}
    for name in ("parent_experiment_id", "variant_id"):
        if name not in present:
            op.execute(f"ALTER TABLE experiments ADD COLUMN {CreateColumn(experiments.c[name]).compile(dialect=bind.dialect)}")
    for index in experiments.indexes:
        index.create(bind, checkfirst=True)
    for statement in ([_pg_guard()] if bind.dialect.name == "postgresql" else _sqlite_guard()):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("not reversible: restore a backup instead")
