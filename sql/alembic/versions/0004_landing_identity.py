"""Landing-file identity: the device and inode of the file an offset belongs to, and a fingerprint of its first
bytes, so that a renamed, replaced or rewritten landing file is recognised rather than tracked by name alone.

A store the baseline has just created has the columns already: every step here skips what exists. Rows from before
this revision have no identity; they keep their offsets and get one the next time their file is read.

Revision ID: 0004_landing_identity
Revises: 0003_pairing_watermark
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateColumn

from experimenttracker_pipeline.store.schema import landing_files

revision = "0004_landing_identity"
down_revision = "0003_pairing_watermark"
branch_labels = None
depends_on = None

COLUMNS = ("file_identity", "fingerprint", "fingerprint_bytes")


def upgrade() -> None:
    bind = op.get_bind()
    present = {c["name"] for c in sa.inspect(bind).get_columns("landing_files")}
    for name in COLUMNS:
        if name not in present:
            column = CreateColumn(landing_files.c[name]).compile(dialect=bind.dialect)
            op.execute(f"ALTER TABLE landing_files ADD COLUMN {column}")


def downgrade() -> None:
    raise NotImplementedError("not reversible: restore a backup instead")
