"""audit log: on PostgreSQL, appends commit without waiting for the disk under the head's lock

``audit_append`` (0008) runs under the ``audit_head`` row lock, and PostgreSQL holds a row lock
until its transaction's commit is on disk. Every appender in every process then waited for the
one before it to be flushed: the log's appends went at the disk's flush rate, one at a time.

An append now commits asynchronously (the lock is released as soon as the commit is written),
and the appender then makes a synchronous commit of its own, an update of its row here. WAL is
flushed in order, so once that commit is on disk the append before it is too, and the appender
answers no one before then. Appenders' flushes no longer queue behind each other's lock: the
server flushes them together (``store.audit.append_postgres``).

One row per appending connection (its backend pid), updated in place; on SQLite the table is
created and not used (an append there is one transaction under the database's write lock).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: Updated on every append: vacuumed often, as the queue tables are (0007).
VACUUM_OFTEN = (
    "autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_vacuum_cost_delay = 0"
)


def upgrade() -> None:
    op.create_table(
        "audit_flushes",
        sa.Column("backend_pid", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("flushes", sa.BigInteger(), nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE audit_flushes SET ({VACUUM_OFTEN})")


def downgrade() -> None:
    op.drop_table("audit_flushes")
