"""publisher: outbox indexes and pruning

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 06:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_nhs_number", "outbox", ["nhs_number"])


def downgrade() -> None:
    op.drop_index("ix_outbox_nhs_number", table_name="outbox")
