"""Off-policy logs: ``raw_reports.behavior_propensity`` and ``raw_reports.candidate_propensities_json``.

Both nullable: a fill without the optional wire fields ``behavior_propensity`` / ``candidate_propensities`` stores
NULL, and every report stored before this revision keeps its row (and its content digest) as it was.

A store the baseline has just created has the columns already: every step here skips what exists.

Revision ID: 0007_off_policy_fields
Revises: 0006_treatment_comparisons
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateColumn

from experimenttracker_pipeline.store.schema import raw_reports

revision = "0007_off_policy_fields"
down_revision = "0006_treatment_comparisons"
branch_labels = None
depends_on = None

COLUMNS = ("behavior_propensity", "candidate_propensities_json")


def upgrade() -> None:
    bind = op.get_bind()
    present = {c["name"] for c in sa.inspect(bind).get_columns("raw_reports")}
    for name in COLUMNS:
        if name not in present:
            column = CreateColumn(raw_reports.c[name]).compile(dialect=bind.dialect)
            op.execute(f"ALTER TABLE raw_reports ADD COLUMN {column}")


def downgrade() -> None:
    raise NotImplementedError("not reversible: restore a backup instead")
