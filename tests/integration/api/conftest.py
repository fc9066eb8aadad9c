"""The API under test: the app on the test's services (lifespan run), and an HTTP client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from gateway.api.app import create_app
from gateway.bootstrap import Services


@pytest.fixture
async def app(services: Services) -> AsyncIterator[FastAPI]:
    application = create_app(services=services)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
