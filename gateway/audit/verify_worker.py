"""A verify worker process: checks spans of the log that ``gateway.audit.verify`` hands it.

Started as ``python -m gateway.audit.verify_worker`` (never by hand). Speaks JSON lines: the
first line on stdin says where the log is (``{"sqlite": path}`` or ``{"postgres": dsn,
"search_path": ...}``, on stdin so that no password shows in a process listing) and which
entries are watched; then each line ``{"lo": ..., "hi": ...}`` is a span to check, answered
by one line on stdout (``consent.chain.Span.to_json``). It exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import orjson

from gateway.audit.spans import PAGE, RawLog, check_span

#: How the worker's one line about a failure starts (the parent quotes that line).
FAILED: Final = "verify worker failed:"


async def connect(source: dict[str, Any]) -> tuple[RawLog, Callable[[], Awaitable[None]]]:
    """A read-only connection to the log ``source`` describes, and how to close it."""
    if "sqlite" in source:
        import aiosqlite

        path = Path(source["sqlite"]).resolve()
        db = await aiosqlite.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        return RawLog(db, postgres=False), db.close
    import asyncpg

    conn = await asyncpg.connect(source["postgres"], server_settings={"search_path": source["search_path"]})
    return RawLog(conn, postgres=True), conn.close


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = orjson.loads(await reader.readline())
    watched = frozenset(job["watched"])
    page = int(job.get("page", PAGE))
    log, close = await connect(job["source"])
    try:
        while line := await reader.readline():
            span = orjson.loads(line)
            found = await check_span(log, span["lo"], span["hi"], watched, page)
            sys.stdout.buffer.write(orjson.dumps(found.to_json()) + b"\n")
            sys.stdout.buffer.flush()
    finally:
        await close()


def main() -> None:
    try:
        asyncio.run(serve())
    except Exception as exc:  # noqa: BLE001 - one line for the parent's warning, then a failed exit
        sys.stderr.write(f"{FAILED} {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        sys.exit(1)


if __name__ == "__main__":
    main()
