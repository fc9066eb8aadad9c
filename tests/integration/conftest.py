"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from gateway.hie_stub.server import make_app


@pytest.fixture
async def hie() -> AsyncIterator[TestServer]:
    """The HIE stub (``concord hie-stub``'s app) on a free port, for the publisher to deliver to."""
    server = TestServer(make_app())
    await server.start_server()
    yield server
    await server.close()
