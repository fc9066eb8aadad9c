"""Verifying the whole log from the store, a page at a time (memory stays flat for any log size).

A large log is checked in contiguous spans of ``seq`` by this process and ``workers - 1``
worker processes (``gateway.audit.verify_worker``) at once: each span's links are checked where
it is read, from the stored hash of the entry before it; this process then joins the spans in
order (each must start from the hash the one before ended on) and checks every checkpoint and
noted hash against the entry hashes the spans found, so the result, and the first bad entry
named, is exactly what reading the log in one pass gives (``consent.chain.Verifier.absorb``).
Logs under ``parallel_from`` entries are read in one pass here: starting a worker costs more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consent.chain import Problem, Span, SpanMismatch, Verification, Verifier, join_spans, plan_spans
from gateway.audit.spans import PAGE, RawLog, check_span
from gateway.audit.verify_worker import FAILED
from gateway.store.audit import checkpoints, stored_head

logger = logging.getLogger(__name__)

#: Below this many entries one pass here beats starting worker processes.
PARALLEL_FROM: Final = 50_000
#: Spans per process: handed out as processes come free, so a slow start or a busy core evens out.
SPANS_PER_WORKER: Final = 2


def default_workers() -> int:
    """One process per two CPU cores: a process reading the log already keeps about two busy, one
    hashing and one fetching (the SQLite driver's thread, or the PostgreSQL server), so on two
    cores one pass is as fast as two processes and pays no start-up (bench/RESULTS.md)."""
    return max(1, (os.cpu_count() or 1) // 2)


@dataclass(frozen=True, slots=True)
class Verified:
    result: Verification
    seconds: float
    #: Processes the log was verified with (1: one pass in this process; a failed worker's spans are
    #: checked by this process, and still counted).
    workers: int = 1


async def verify_store(
    engine: AsyncEngine,
    public_keys: Mapping[str, Ed25519PublicKey],
    expect: Iterable[tuple[int, str]] = (),
    *,
    workers: int | None = None,
    parallel_from: int = PARALLEL_FROM,
) -> Verified:
    """Check every entry and checkpoint the store holds against ``public_keys``, and that the
    chain's stored head names an entry of the log by number and hash (appends extend the chain
    from the head, and checkpoints sign it: an edited head is a problem of its own, ``head``).

    ``workers``: processes to verify with, this one included (default: ``default_workers()``).
    """
    started = time.perf_counter()
    wanted = default_workers() if workers is None else max(1, workers)
    expect = list(expect)
    async with engine.connect() as conn:
        head = await stored_head(conn)  # before the entries: every entry it names is committed
        signed = await checkpoints(conn)
        raw = (await conn.get_raw_connection()).driver_connection
        log = RawLog(raw, conn.dialect.name == "postgresql")
        last = await log.last_seq()
        source = await worker_source(conn) if wanted > 1 and last >= parallel_from else None
        if source is not None:
            verifier = Verifier(signed, public_keys, expect, head)
            try:
                spans = await check_in_parallel(
                    log, source, plan_spans(last, wanted * SPANS_PER_WORKER), verifier, wanted - 1
                )
                joined = _head_present(join_spans(verifier, [spans[lo] for lo in sorted(spans)]), head)
                return Verified(await _head_not_behind(conn, joined), time.perf_counter() - started, wanted)
            except SpanMismatch:
                logger.warning(
                    "the audit log changed while it was verified in spans; verifying it in one pass"
                )
        verifier = Verifier(signed, public_keys, expect, head)
        async with aclosing(log.pages(0, None)) as pages:
            async for rows in pages:
                if not verifier.feed_rows(rows):
                    break
        result = await _head_not_behind(conn, _head_present(verifier.finish(), head))
    return Verified(result, time.perf_counter() - started)


async def _head_not_behind(conn: AsyncConnection, result: Verification) -> Verification:
    """``result``, with a head behind the log's last entry as its problem if nothing came before it.

    The head read before the entries may lag appends made since; one read after them may not: an
    entry and the head that names it commit together, so a head now naming an earlier entry than
    the last one read was moved back (every append would then collide with a stored entry).
    """
    if result.problem is not None:
        return result
    now = await stored_head(conn)
    if now is not None and now[0] < result.last_seq:
        result.problem = Problem(
            now[0] + 1,
            "head",
            f"the log's head names entry {now[0]} but the log goes on to entry {result.last_seq}: "
            f"it was moved back (the next append would collide with entry {now[0] + 1})",
        )
    return result


def _head_present(result: Verification, head: tuple[int, str] | None) -> Verification:
    """``result``, with the head's row gone as its problem if nothing came before it."""
    if head is None and result.problem is None:
        seq = result.last_seq + 1
        result.problem = Problem(seq, "head", f"the log's head is missing: no entry {seq} can be chained")
    return result


async def worker_source(conn: AsyncConnection) -> dict[str, Any] | None:
    """Where a worker process finds the store (None if it cannot: an in-memory SQLite database)."""
    url = conn.engine.url
    if conn.dialect.name == "sqlite":
        database = url.database
        return {"sqlite": database} if database and database != ":memory:" else None
    search_path = (await conn.exec_driver_sql("SHOW search_path")).scalar_one()
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return {"postgres": dsn, "search_path": search_path}


async def check_in_parallel(
    log: RawLog, source: dict[str, Any], plan: list[tuple[int, int | None]], verifier: Verifier, helpers: int
) -> dict[int, Span]:
    """Check the spans of ``plan`` here and in ``helpers`` worker processes, each taking the next
    span as it comes free; spans after one with a problem are skipped (they cannot matter)."""
    queue = deque(plan)
    found: dict[int, Span] = {}
    watched = verifier.watched
    stop: list[int] = []

    def take() -> tuple[int, int | None] | None:
        while queue:
            lo, hi = queue.popleft()
            if not stop or lo < min(stop):
                return lo, hi
        return None

    def keep(span: Span) -> None:
        found[span.lo] = span
        if span.problem is not None:
            stop.append(span.lo)

    async def here() -> None:
        while (job := take()) is not None:
            keep(await check_span(log, *job, watched))

    header = orjson.dumps({"source": source, "watched": sorted(watched), "page": PAGE}) + b"\n"
    tasks = [asyncio.ensure_future(_worker(header, take, keep, queue)) for _ in range(helpers)]
    try:
        await here()
        await asyncio.gather(*tasks)
        await here()  # spans a failed worker handed back
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return found


async def start_worker() -> asyncio.subprocess.Process:
    """A verify worker process (``gateway.audit.verify_worker``), its standard streams piped."""
    pipe = asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.audit.verify_worker", stdin=pipe, stdout=pipe, stderr=pipe
    )


async def _worker(
    header: bytes,
    take: Callable[[], tuple[int, int | None] | None],
    keep: Callable[[Span], None],
    queue: deque[tuple[int, int | None]],
) -> None:
    """One worker process, fed spans until none are left; a span it fails on goes back to the queue."""
    process = await start_worker()
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    job: tuple[int, int | None] | None = None
    try:
        process.stdin.write(header)
        while (job := take()) is not None:
            process.stdin.write(orjson.dumps({"lo": job[0], "hi": job[1]}) + b"\n")
            await process.stdin.drain()
            line = await process.stdout.readline()
            if not line:
                raise ConnectionError("the verify worker exited")
            keep(Span.from_json(orjson.loads(line)))
        job = None
        process.stdin.close()
        await process.wait()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if job is not None:
            queue.appendleft(job)
        said = [line for line in (await _stderr(process)).splitlines() if line.startswith(FAILED)]
        why = said[0].removeprefix(FAILED).strip() if said else type(exc).__name__
        logger.warning("an audit verify worker failed (%s); this process takes its spans", why)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _stderr(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.kill()
        await process.wait()
    assert process.stderr is not None
    return (await process.stderr.read()).decode(errors="replace")
