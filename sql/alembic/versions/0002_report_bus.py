"""The report bus: the stream messages already stored, reports published to the bus, stage timings.

Brings a store at the baseline to the shape `experimenttracker_pipeline.store.schema` defines for these tables
(the hand-written migration 0006 made the same change). A store the baseline has just created has them already:
every step here skips what exists.

Revision ID: 0002_report_bus
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateColumn

from experimenttracker_pipeline.store.schema import bus_messages, ingestion_batches, report_publications, stage_durations

revision = "0002_report_bus"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for table in (bus_messages, report_publications, stage_durations):
        table.create(bind, checkfirst=True)
    if "ignored" not in {c["name"] for c in sa.inspect(bind).get_columns("ingestion_batches")}:
        # ALTER TABLE ... ADD COLUMN with its check inline: the one form both dialects accept.
        column = CreateColumn(ingestion_batches.c.ignored).compile(dialect=bind.dialect)
        op.execute(f"ALTER TABLE ingestion_batches ADD COLUMN {column} "
                   "CONSTRAINT ingestion_batches_ignored_check CHECK (ignored >= 0)")


def downgrade() -> None:
    raise NotImplementedError("not reversible: restore a backup instead")
