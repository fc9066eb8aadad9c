"""A serving process connects to the store before its first request, and starts even when it cannot."""

from __future__ import annotations

import logging

import asyncpg
import pytest
from reachable import POSTGRES_URL

from gateway.api.app import create_app
from gateway.bootstrap import Services


async def named_connections() -> dict[str, int]:
    """PostgreSQL's client connections by ``application_name``."""
    conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' GROUP BY application_name"
        )
    finally:
        await conn.close()
    return {r["application_name"]: r["n"] for r in rows}


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
async def test_the_search_pool_and_the_log_connect_before_the_first_request(services: Services) -> None:
    before = await named_connections()
    app = create_app(services=services)
    async with app.router.lifespan_context(app):
        started = await named_connections()
    size = services.settings.search_pool_size
    assert started.get("concord search", 0) - before.get("concord search", 0) == size
    assert started.get("concord audit log", 0) - before.get("concord audit log", 0) == 1


@pytest.mark.parametrize("store_settings", ["postgres"], indirect=True)
async def test_every_search_connection_has_the_hot_statements_prepared(services: Services) -> None:
    await services.reads.open()
    pool = services.reads._pool  # type: ignore[attr-defined]
    held = [await pool.acquire() for _ in range(services.settings.search_pool_size)]
    try:
        for conn in held:
            prepared = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
            assert prepared >= 5, "patients, care plans, facts, owner and refs, each prepared"
    finally:
        for conn in held:
            await pool.release(conn)


@pytest.mark.parametrize("store_settings", ["sqlite", "postgres"], indirect=True)
async def test_a_store_not_reached_at_start_is_left_to_the_first_request(
    services: Services, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable() -> None:
        raise ConnectionRefusedError("connect to postgresql://concord:s3cret@db:5432 refused")

    monkeypatch.setattr(services.reads, "open", unreachable)
    app = create_app(services=services)
    with caplog.at_level(logging.WARNING, logger="gateway.bootstrap"):
        async with app.router.lifespan_context(app):
            pass  # started
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "ConnectionRefusedError" in said
    assert "s3cret" not in said and "postgresql://" not in said
