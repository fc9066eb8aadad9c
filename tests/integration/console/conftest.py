"""The console under test: the seeded app on the test's services (both stores), and a browser-like client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from console_client import Console
from console_seed import seed

from gateway.api.app import create_app
from gateway.bootstrap import Services


@pytest.fixture
async def console(services: Services) -> AsyncIterator[Console]:
    await seed(services)
    app = create_app(services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Console(app, client, services)
