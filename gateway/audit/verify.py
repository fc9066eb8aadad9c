"""Verifying the whole log from the store, a chunk at a time (memory stays flat for any log size)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncEngine

from consent.chain import Verification, Verifier
from gateway.store.audit import checkpoints, stream_rows


@dataclass(frozen=True, slots=True)
class Verified:
    result: Verification
    seconds: float


async def verify_store(
    engine: AsyncEngine,
    public_keys: Mapping[str, Ed25519PublicKey],
    expect: Iterable[tuple[int, str]] = (),
) -> Verified:
    """Check every entry and checkpoint the store holds against ``public_keys``."""
    started = time.perf_counter()
    async with engine.connect() as conn:
        verifier = Verifier(await checkpoints(conn), public_keys, expect)
        async for rows in stream_rows(conn):
            if not verifier.feed_rows(rows):
                break
    return Verified(verifier.finish(), time.perf_counter() - started)
