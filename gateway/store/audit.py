"""The log's tables: extend the chain under the head lock, keep checkpoints, read entries back.

Appenders in any number of processes serialise on the one ``audit_head`` row:
an append takes that row's lock before the head is read (an UPDATE of it, or
``SELECT ... FOR UPDATE`` in PostgreSQL's ``audit_append``; on SQLite, the
write lock), so two appenders can never extend the chain from the same entry.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Row, Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.chain import (
    CANONICAL_HEAD,
    ENTRY_FIELDS,
    Checkpoint,
    Entry,
    StoredEntry,
    canonical_tail,
    chained_rows,
)
from gateway.store.schema import audit_checkpoints, audit_head, audit_log
from gateway.store.sqlite_lock import begin_immediate

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Head:
    seq: int
    entry_hash: str
    checkpoint_seq: int


# Built once (building a statement per append cost more than running it).
_TAKE_HEAD = update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq)
_READ_HEAD = select(audit_head.c.seq, audit_head.c.entry_hash, audit_head.c.checkpoint_seq).where(
    audit_head.c.id == 1
)
_MOVE_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("new_seq"), entry_hash=bindparam("new_hash"))
)


async def lock_head(conn: AsyncConnection) -> Head:
    """Take the append lock (held until the transaction ends) and read the chain's head."""
    await conn.execute(_TAKE_HEAD)
    seq, entry_hash, checkpoint_seq = (await conn.execute(_READ_HEAD)).one()
    return Head(seq, entry_hash, checkpoint_seq)


async def head_matches_log(conn: AsyncConnection, head: Head) -> bool:
    """Whether ``head`` names the log's last entry, by number and hash (an empty log: the genesis)."""
    newest = select(audit_log.c.seq, audit_log.c.entry_hash).order_by(audit_log.c.seq.desc()).limit(1)
    last = (await conn.execute(newest)).first()
    if last is None:
        return head.seq == 0
    return (last.seq, last.entry_hash) == (head.seq, head.entry_hash)


async def append_entries(conn: AsyncConnection, head: Head, entries: Sequence[Entry]) -> Head:
    """Extend the chain from ``head`` (which the caller locked) and move the head."""
    if not entries:
        return head
    rows, last = chained_rows(bytes.fromhex(head.entry_hash), head.seq, entries)
    if conn.dialect.name == "postgresql":
        # COPY through the driver, inside the append's transaction: PostgreSQL's fastest bulk insert.
        driver = (await conn.get_raw_connection()).driver_connection
        await driver.copy_records_to_table("audit_log", records=rows, columns=_COLUMNS)  # type: ignore[union-attr]
    else:
        # Positional rows straight to the driver: SQLAlchemy's per-row parameter processing cost more
        # than the hashing (bench/RESULTS.md). The statement is fixed text, the values bound parameters.
        await conn.exec_driver_sql(_insert_sql(conn.dialect.paramstyle), rows)
    head = Head(head.seq + len(rows), last.hex(), head.checkpoint_seq)
    await conn.execute(_MOVE_HEAD, {"new_seq": head.seq, "new_hash": head.entry_hash})
    return head


_COLUMNS = ("seq", *ENTRY_FIELDS, "entry_hash")


def _insert_sql(paramstyle: str) -> str:
    if paramstyle == "qmark":
        marks = ", ".join("?" for _ in _COLUMNS)
    elif paramstyle == "numeric_dollar":
        marks = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
    else:
        marks = ", ".join("%s" for _ in _COLUMNS)
    return f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) VALUES ({marks})"  # noqa: S608 - fixed names


def append_sqlite(
    conn: sqlite3.Connection,
    entries: Sequence[Entry],
    checkpoint_every: int,
    sign: Callable[[int, str], Checkpoint],
) -> Head:
    """``lock_head``, ``append_entries`` and, when ``checkpoint_every`` entries are unsigned, a
    checkpoint from ``sign(seq, entry_hash)``: one SQLite transaction on a driver connection, made
    in one call (``AuditLog`` runs it on its writer thread: one handoff for the whole append).

    ``BEGIN IMMEDIATE`` (``sqlite_lock.begin_immediate``) takes SQLite's write lock before the head
    is read, as ``lock_head``'s UPDATE does, so appenders on any connection or process still extend
    the chain one at a time.
    """
    begin_immediate(conn)
    try:
        seq, entry_hash, checkpoint_seq = conn.execute(_HEAD_SQL).fetchone()
        rows, last = chained_rows(bytes.fromhex(entry_hash), seq, entries)
        conn.executemany(_insert_sql("qmark"), rows)
        seq, entry_hash = seq + len(rows), last.hex()
        if seq - checkpoint_seq >= checkpoint_every:
            cp = sign(seq, entry_hash)
            conn.execute(_CHECKPOINT_SQL, (cp.seq, cp.entry_hash, cp.signed_at, cp.key_id, cp.signature))
            checkpoint_seq = cp.seq
        conn.execute(_MOVE_HEAD_SQL, (seq, entry_hash, checkpoint_seq))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return Head(seq, entry_hash, checkpoint_seq)


async def append_postgres(
    conn: Any,
    entries: Sequence[Entry],
    checkpoint_every: int,
    sign: Callable[[int, str], Checkpoint],
) -> Head:
    """Append ``entries`` on an asyncpg connection outside a transaction; returns the new head once
    the entries are on disk.

    One statement, committing on its own: the server's ``audit_append`` (migration 0008) locks the
    head row, numbers and hashes the entries from the head it finds (the client sends each entry's
    stored columns and the canonical bytes around its sequence number), inserts them and moves the
    head. Appenders in other processes wait for the lock and chain on from there, so an append is
    never refused and tried again because another went first.

    That statement commits asynchronously: PostgreSQL keeps a row lock until the commit is on
    disk, so otherwise every appender in every process would wait out the flushes of all those
    before it, one at a time. The commit is made durable by the next statement instead, a
    synchronous commit (migration 0009): WAL is flushed in order, so when it returns the append is
    on disk too. Until then the entries are visible to readers but not yet durable; a server crash
    in that moment loses them, and the requests they log are answered with neither.

    When ``checkpoint_every`` entries are unsigned, that next statement saves the new head's
    checkpoint (``sign(seq, entry_hash)``), a synchronous commit as well. Any failure there leaves
    the appended entries committed and the checkpoint to the next append or the periodic signer: it
    is logged, not raised (failing the requests would log disclosures that were never answered),
    and the flush is made on its own.
    """
    if not entries:
        return await current_head(conn)
    tails = [canonical_tail(entry) for entry in entries]
    columns = list(zip(*(entry.row(0)[1:] for entry in entries), strict=True))
    seq, entry_hash, checkpoint_seq, _ = await conn.fetchrow(_APPEND_SQL, CANONICAL_HEAD, tails, *columns)
    head = Head(seq, entry_hash, checkpoint_seq)
    if head.seq - head.checkpoint_seq >= checkpoint_every:
        try:
            cp = sign(head.seq, head.entry_hash)
            await conn.execute(_SIGN_SQL, cp.seq, cp.entry_hash, cp.signed_at, cp.key_id, cp.signature)
            return Head(head.seq, head.entry_hash, cp.seq)  # its commit flushed the append's
        except Exception:
            if conn.is_closed():
                raise  # nothing can flush the append on this connection: in doubt, as a lost commit
            log.warning("an audit checkpoint could not be saved after an append; the next one will sign")
    await conn.execute(_FLUSH_SQL)
    return head


async def current_head(conn: Any) -> Head:
    """The chain's head as committed now, read on an asyncpg connection."""
    seq, entry_hash, checkpoint_seq = await conn.fetchrow(_HEAD_SQL)
    return Head(seq, entry_hash, checkpoint_seq)


#: $1: ``CANONICAL_HEAD``; $2: each entry's ``canonical_tail``; $3 to $15: the ``ENTRY_FIELDS``
#: columns, each an array in the entries' order. The statement's own transaction commits without
#: waiting for the disk (``set_config(..., true)`` lasts until it ends), releasing the head's lock.
_APPEND_SQL = (
    "SELECT a.*, set_config('synchronous_commit', 'off', true) FROM"
    " audit_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) a"
)
#: A synchronous commit that writes (so PostgreSQL flushes WAL up to it, the append's commit
#: included), on a row no other connection updates: appenders' flushes never wait on each other.
_FLUSH_SQL = """
INSERT INTO audit_flushes (backend_pid, flushes) VALUES (pg_backend_pid(), 1)
ON CONFLICT (backend_pid) DO UPDATE SET flushes = audit_flushes.flushes + 1
"""
#: A checkpoint over (seq, hash) just appended: saved once (another process may have signed the same
#: head), and the head's checkpoint only ever moves forward.
_SIGN_SQL = """
WITH saved AS (
    INSERT INTO audit_checkpoints (seq, entry_hash, signed_at, key_id, signature)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING
)
UPDATE audit_head SET checkpoint_seq = greatest(checkpoint_seq, $1) WHERE id = 1
"""


_HEAD_SQL = "SELECT seq, entry_hash, checkpoint_seq FROM audit_head WHERE id = 1"
_MOVE_HEAD_SQL = "UPDATE audit_head SET seq = ?, entry_hash = ?, checkpoint_seq = ? WHERE id = 1"
_CHECKPOINT_SQL = (
    "INSERT INTO audit_checkpoints (seq, entry_hash, signed_at, key_id, signature) VALUES (?, ?, ?, ?, ?)"
)


async def save_checkpoint(conn: AsyncConnection, head: Head, checkpoint: Checkpoint) -> Head:
    await conn.execute(
        audit_checkpoints.insert().values(
            seq=checkpoint.seq,
            entry_hash=checkpoint.entry_hash,
            signed_at=checkpoint.signed_at,
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
    )
    await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(checkpoint_seq=checkpoint.seq))
    return Head(head.seq, head.entry_hash, checkpoint.seq)


async def stored_head(conn: AsyncConnection) -> tuple[int, str] | None:
    """The chain's head as stored, ``(seq, entry_hash)``; ``None`` if its row is gone."""
    row = (
        await conn.execute(select(audit_head.c.seq, audit_head.c.entry_hash).where(audit_head.c.id == 1))
    ).first()
    return None if row is None else (row.seq, row.entry_hash)


async def read_head(conn: AsyncConnection) -> Head:
    row = (await conn.execute(select(audit_head).where(audit_head.c.id == 1))).mappings().one()
    return Head(row["seq"], row["entry_hash"], row["checkpoint_seq"])


async def last_checkpoint(conn: AsyncConnection) -> Checkpoint | None:
    row = (
        await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1))
    ).first()
    return Checkpoint(*row) if row else None


async def checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    rows = await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq))
    return [Checkpoint(*r) for r in rows]


_ENTRY_COLUMNS = [audit_log.c[name] for name in ENTRY_FIELDS]


async def stream_entries(
    conn: AsyncConnection, query: Select[tuple[object, ...]] | None = None, chunk: int = 20_000
) -> AsyncIterator[list[StoredEntry]]:
    """Entries in ``seq`` order, a chunk at a time (keyset paging: memory stays flat)."""
    base = query if query is not None else select(audit_log.c.seq, *_ENTRY_COLUMNS, audit_log.c.entry_hash)
    after = 0
    while True:
        rows = (
            await conn.execute(base.where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(chunk))
        ).all()
        if not rows:
            return
        yield [StoredEntry(r[0], Entry(*r[1:-1]), r[-1]) for r in rows]
        after = rows[-1][0]


async def stream_rows(conn: AsyncConnection, chunk: int = 20_000) -> AsyncIterator[Sequence[Row[Any]]]:
    """Entries as raw rows ``(seq, *ENTRY_FIELDS, entry_hash)`` in ``seq`` order (what verify hashes)."""
    query = entries_query()
    after = 0
    while True:
        rows = (
            await conn.execute(query.where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(chunk))
        ).all()
        if not rows:
            return
        yield rows
        after = cast(int, rows[-1][0])


def entries_query() -> Select[tuple[object, ...]]:
    """The columns ``stream_entries`` expects; callers add filters with ``.where``."""
    return select(audit_log.c.seq, *_ENTRY_COLUMNS, audit_log.c.entry_hash)
