"""The application shell: errors are OperationOutcome, request ids are honoured and echoed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.api.app import create_app
from gateway.bootstrap import Services


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_unknown_path_is_an_operation_outcome_with_the_request_id_echoed(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/no/such/thing", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.headers["x-request-id"] == "abc-123"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-found"


async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/thing", headers={"X-Request-ID": "x" * 200})
    assert response.headers["x-request-id"] != "x" * 200
    assert len(response.headers["x-request-id"]) == 32
