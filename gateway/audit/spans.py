"""Reading the log straight through the database driver, and checking it a span at a time.

Verifying reads every entry. Going through SQLAlchemy's result machinery cost more than the
hashing (bench/RESULTS.md), so this talks to the driver under the engine (aiosqlite or
asyncpg) with fixed SQL over the hashed columns only, and fetches the next page while the
caller hashes the current one. A span (the entries after ``lo`` up to ``hi``) is checked
apart from the rest of the log (``consent.chain.SpanChecker``), here or in a worker process
(``gateway.audit.verify_worker``); this module imports neither SQLAlchemy nor the rest of
the gateway, so that a worker starts quickly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Container, Sequence
from contextlib import aclosing, suppress
from typing import Any, Final

from consent.chain import ENTRY_FIELDS, GENESIS, Span, SpanChecker

#: Rows a page: large enough that a round trip is cheap beside it, small enough that a serving
#: process's event loop is never held for long while a page is hashed.
PAGE: Final = 5000

_COLUMNS: Final = ", ".join(("seq", *ENTRY_FIELDS, "entry_hash"))


class RawLog:
    """``audit_log`` through a driver connection: ``aiosqlite.Connection`` or ``asyncpg.Connection``.

    Rows come back as the driver gives them (tuples or asyncpg records), indexed like
    ``(seq, *ENTRY_FIELDS, entry_hash)``: what ``Verifier.feed_rows`` hashes.
    """

    def __init__(self, driver: Any, postgres: bool) -> None:
        self.driver = driver
        self.postgres = postgres

    def _sql(self, text: str) -> str:
        if not self.postgres:
            return text
        parts = text.split("?")
        return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]

    async def _rows(self, sql: str, *params: int) -> Sequence[Sequence[Any]]:
        if self.postgres:
            return await self.driver.fetch(sql, *params)  # type: ignore[no-any-return]
        return await self.driver.execute_fetchall(sql, params)  # type: ignore[no-any-return]

    async def _value(self, sql: str, *params: int) -> Any:
        rows = await self._rows(self._sql(sql), *params)
        return rows[0][0] if rows else None

    async def last_seq(self) -> int:
        """The highest entry stored (0 for an empty log)."""
        return int(await self._value("SELECT max(seq) FROM audit_log") or 0)

    async def stored_hash(self, seq: int) -> str | None:
        return await self._value("SELECT entry_hash FROM audit_log WHERE seq = ?", seq)  # type: ignore[no-any-return]

    async def first_after(self, seq: int) -> int | None:
        return await self._value("SELECT min(seq) FROM audit_log WHERE seq > ?", seq)  # type: ignore[no-any-return]

    async def pages(
        self, lo: int, hi: int | None, page: int = PAGE
    ) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
        """Entries after ``lo`` up to ``hi`` (``None``: to the end) in ``seq`` order, a page at a time
        (keyset paging on the primary key); the next page is on its way while this one is used."""
        upper = "" if hi is None else " AND seq <= ?"
        sql = self._sql(
            f"SELECT {_COLUMNS} FROM audit_log WHERE seq > ?{upper} ORDER BY seq LIMIT ?"  # noqa: S608 - fixed
        )

        def fetch(after: int) -> asyncio.Future[Sequence[Sequence[Any]]]:
            params = (after, page) if hi is None else (after, hi, page)
            return asyncio.ensure_future(self._rows(sql, *params))

        pending: asyncio.Future[Sequence[Sequence[Any]]] | None = fetch(lo)
        try:
            while pending is not None:
                rows = await pending
                pending = fetch(rows[-1][0]) if len(rows) == page else None
                if rows:
                    yield rows
        finally:
            # Stopped early (a bad entry): let the fetch in flight finish, so the connection is idle.
            if pending is not None:
                with suppress(Exception):
                    await pending


async def check_span(log: RawLog, lo: int, hi: int | None, watched: Container[int], page: int = PAGE) -> Span:
    """Check the entries after ``lo`` up to ``hi`` from the stored hash of entry ``lo``."""
    seed = GENESIS.hex() if lo == 0 else await log.stored_hash(lo)
    if seed is None:
        return Span(lo, None, lo, "")
    checker = SpanChecker(lo, seed, watched)
    async with aclosing(log.pages(lo, hi, page)) as pages:
        async for rows in pages:
            if not checker.feed_rows(rows):
                break
    span = checker.span
    gap = span.problem is None and hi is not None and span.last_seq < hi
    return checker.finish(hi, await log.first_after(hi) if gap and hi is not None else None)
