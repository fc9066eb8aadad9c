"""outbox: a partial index of unsent rows, and vacuum settings for the queue tables

Every outbox row is updated two or three times (claimed, sent) and its person's hie_people row on
every delivery: on PostgreSQL both are queue tables whose dead row versions must be vacuumed away
within seconds, not when a fifth of the table is dead (the default), or claims read through every
dead index entry. The thresholds below make autovacuum visit them after ~1,000 dead rows.

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
QUEUE_TABLES = ("outbox", "hie_people")
VACUUM_OFTEN = (
    "autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 1000, "
    "autovacuum_vacuum_cost_delay = 0"
)


def upgrade() -> None:
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["id"],
        postgresql_where=sa.text(UNSENT),
        sqlite_where=sa.text(UNSENT),
    )
    if op.get_bind().dialect.name == "postgresql":
        for table in QUEUE_TABLES:
            op.execute(f"ALTER TABLE {table} SET ({VACUUM_OFTEN})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in QUEUE_TABLES:
            op.execute(
                f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
                "autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay)"
            )
    op.drop_index("ix_outbox_unsent", table_name="outbox")
