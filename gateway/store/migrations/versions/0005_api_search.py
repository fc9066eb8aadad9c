"""API search: indexes for the searches the API serves

The API's searches name one person and one resource type and page by id
(``WHERE nhs_number = ? AND resource_type = ? ORDER BY id``). An index on
``nhs_number`` alone left SQLite, which keeps no statistics, planning those on
the primary key ``(resource_type, id)`` to skip a sort: a CarePlan search read
every CarePlan. ``(nhs_number, resource_type, id)`` answers them from the index
in order on both stores, and its prefix serves everything the old index did
(a person's view, the refs of what was withheld), so the old one goes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 06:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.create_index("ix_resources_person", ["nhs_number", "resource_type", "id"], unique=False)
        batch.drop_index("ix_resources_nhs_number")


def downgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.create_index("ix_resources_nhs_number", ["nhs_number"], unique=False)
        batch.drop_index("ix_resources_person")
