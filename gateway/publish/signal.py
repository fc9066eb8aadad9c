"""Waking publishers the moment the outbox gets a row, through Redis pub/sub (when configured).

Only a hint: a lost message costs at most one poll interval
(``CONCORD_PUBLISH_POLL_SECONDS``), because publishers also look on a timer.
Without Redis, publishers poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from gateway.decisions import REDIS_ERRORS

log = logging.getLogger(__name__)


class OutboxSignal:
    def __init__(self, redis: Redis | None, channel: str) -> None:
        self.redis = redis
        self.channel = channel

    async def changed(self) -> None:
        """Tell every publisher there is work (never raises)."""
        if self.redis is None:
            return
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.publish(self.channel, b"1")

    async def listen(self, wake: asyncio.Event) -> None:
        """Set ``wake`` on every message until cancelled; reconnects after Redis errors."""
        if self.redis is None:
            return
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            wake.set()
            except REDIS_ERRORS:
                log.warning("outbox wake-ups unavailable (redis); polling meanwhile")
                await asyncio.sleep(1.0)
