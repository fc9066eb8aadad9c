"""A serving process deletes idempotency keys past their lifetime, and keeps the rest."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select

from gateway.api import app as app_module
from gateway.api.app import create_app
from gateway.bootstrap import Services
from gateway.store.idempotency import KEEP
from gateway.store.schema import idempotency_keys


async def test_expired_idempotency_keys_are_purged_while_serving(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    async with services.engine.begin() as conn:
        for key, created in (("old", now - KEEP - timedelta(minutes=1)), ("fresh", now)):
            await conn.execute(
                insert(idempotency_keys).values(
                    client_id="council", key=key, request_hash="0" * 64, status=200, created_at=created
                )
            )
    monkeypatch.setattr(app_module, "PURGE_SECONDS", 0.01)
    app = create_app(services=services)
    async with app.router.lifespan_context(app):
        for _ in range(500):
            async with services.engine.connect() as conn:
                keys = set((await conn.execute(select(idempotency_keys.c.key))).scalars())
            if keys == {"fresh"}:
                break
            await asyncio.sleep(0.01)
    assert keys == {"fresh"}
