"""resources: when the source recorded the current version, so an older message never overwrites it

A source's CarePlan was written from whichever message came last, whatever its own time: an
HL7 A03 (discharge) re-read after the A13 that cancelled it, or an older extract replayed after
a newer one, put a plan back to what it was. A person's demographics were already guarded by
each contribution's ``recorded``; a CarePlan now keeps the source's time of its current version
here (as sent, ``MappedRecord.recorded``), and a version from an older record is not written.

Nullable: rows written before this revision, and writers with no source time (the shared
Patient), hold none, and a row with none is never guarded.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("resources", sa.Column("recorded", sa.String(40), nullable=True))


def downgrade() -> None:
    op.drop_column("resources", "recorded")
