"""outbox: a partial index of unsent rows, so a claim never walks the delivered ones

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 07:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UNSENT = "status IN ('pending', 'claimed')"


def upgrade() -> None:
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["id"],
        postgresql_where=sa.text(UNSENT),
        sqlite_where=sa.text(UNSENT),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unsent", table_name="outbox")
