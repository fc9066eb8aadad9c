"""The API under test: the app on the test's services (lifespan run), and an HTTP client on it;
a registered provider client (SMART Backend Services); a data dir for the command line."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from smart_clients import Registered, register

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


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
async def provider(services: Services, ec_key: ec.EllipticCurvePrivateKey) -> Registered:
    """A provider client registered with an ES384 key."""
    return await register(services, ec_key, "ES384")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``CONCORD_DATA_DIR`` for the command line: a fresh SQLite store."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("CONCORD_DATA_DIR", str(data_dir))
    yield data_dir
