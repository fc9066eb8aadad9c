"""Run a job every so often inside a serving process, until cancelled.

A failed attempt is logged (its type only: an error may carry a statement's text) and
retried at the next tick. Cancellation lands between attempts, never inside one: an
attempt cancelled mid-transaction would leave its connection holding locks (SQLite's
write lock, a row lock on PostgreSQL), and whatever runs at shutdown after it (the
log's final checkpoint) would wait on them until the store's busy timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def run_periodically(every_seconds: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    """Await ``job()`` every ``every_seconds``; ``what`` names it in the log."""
    while True:
        await asyncio.sleep(every_seconds)
        attempt = asyncio.ensure_future(_attempt(job, what))
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            await attempt
            raise


async def _attempt(job: Callable[[], Awaitable[object]], what: str) -> None:
    try:
        await job()
    except Exception as exc:  # noqa: BLE001 - a store hiccup must not end the loop; the next tick retries
        logger.warning("%s failed (%s); retrying at the next interval", what, type(exc).__name__)
