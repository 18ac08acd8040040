"""The pairing watermark: the newest ingestion batch an experiment's last pairing could see, and an index to find
the newest batch per strategy slug.

The CLI and the sensors both read the watermark, so the daemon never repeats pairing the CLI already did. A store
the baseline has just created has both already: every step here skips what exists.

Revision ID: 0003_pairing_watermark
Revises: 0002_report_bus
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateColumn

from experimenttracker_pipeline.store.schema import experiment_pairing_state, ingestion_batch_slugs

revision = "0003_pairing_watermark"
down_revision = "0002_report_bus"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "paired_through_batch" not in {c["name"] for c in inspector.get_columns("experiment_pairing_state")}:
        column = CreateColumn(experiment_pairing_state.c.paired_through_batch).compile(dialect=bind.dialect)
        op.execute(f"ALTER TABLE experiment_pairing_state ADD COLUMN {column}")
    index = next(i for i in ingestion_batch_slugs.indexes if i.name == "ingestion_batch_slugs_slug")
    index.create(bind, checkfirst=True)


def downgrade() -> None:
    raise NotImplementedError("not reversible: restore a backup instead")
