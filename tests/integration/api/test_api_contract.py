"""What the API promises beyond its routes' bodies: 405 names the allowed methods, the served OpenAPI
documents what routes read by hand, and no dependency costs a thread handoff per request."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute


async def test_a_wrong_method_is_405_with_an_allow_header(client: httpx.AsyncClient) -> None:
    response = await client.delete("/fhir/Patient")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"  # HEAD is answered wherever GET is
    assert response.json()["issue"][0]["code"] == "not-supported"


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = spec["paths"][path][method]
    return operation


async def test_openapi_documents_search_parameters_bodies_answers_and_the_bearer_scheme(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token from POST /token",
    }
    patients = _operation(spec, "get", "/fhir/Patient")
    assert {p["name"] for p in patients["parameters"]} >= {"identifier", "_count", "_page", "_format"}
    assert patients["security"] == [{"HTTPBearer": []}]
    careplans = _operation(spec, "get", "/fhir/CarePlan")
    assert {p["name"] for p in careplans["parameters"]} >= {
        "patient",
        "subject:identifier",
        "status",
        "_include",
    }
    for method, path in (("post", "/fhir"), ("post", "/fhir/Consent"), ("put", "/fhir/Consent/{consent_id}")):
        assert "application/fhir+json" in _operation(spec, method, path)["requestBody"]["content"]
    assert "application/json" in _operation(spec, "post", "/ingest/social-care")["requestBody"]["content"]
    read = _operation(spec, "get", "/fhir/Patient/{rid}")["responses"]
    assert {"200", "400", "401", "403", "404"} <= set(read)
    assert "422" not in read  # an invalid request is answered 400, never FastAPI's 422
    assert read["404"]["content"]["application/fhir+json"]["schema"] == {
        "$ref": "#/components/schemas/OperationOutcome"
    }
    assert "422" in _operation(spec, "post", "/fhir/Consent")["responses"]  # the consent routes' own
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_openapi_documents_the_answers_of_pushes_the_token_endpoint_and_operations(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/fhir", "/ingest/social-care"):
        assert {"200", "400", "401", "403", "409", "413", "415"} <= set(
            _operation(spec, "post", path)["responses"]
        )
    push = _operation(spec, "post", "/fhir")["responses"]
    assert "_format" in push["406"]["description"]  # a push negotiates content as the read API does
    assert "bdl-7" in push["400"]["description"] and "Bundle.type" in push["400"]["description"]
    assert {"413", "415"} <= set(_operation(spec, "post", "/fhir/Consent")["responses"])
    token = _operation(spec, "post", "/token")
    assert {"200", "400", "503"} <= set(token["responses"])
    refused = token["responses"]["400"]["content"]["application/json"]["schema"]
    assert refused["required"] == ["error"]  # RFC 6749's error answer, not an OperationOutcome
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]
    assert "503" in _operation(spec, "get", "/readyz")["responses"]
    assert {"/healthz", "/metrics"} <= set(spec["paths"])


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependencies(sub)


def _api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)  # FastAPI keeps an included router whole
        if included is not None:
            yield from _api_routes(included.routes)


def test_no_route_dependency_runs_in_a_worker_thread(app: FastAPI) -> None:
    # FastAPI runs a plain ``def`` dependency in AnyIO's thread pool: a handoff per request each.
    checked = 0
    for route in _api_routes(app.routes):
        for dep in _dependencies(route.dependant):
            assert dep.call is not None
            call = dep.call if inspect.isroutine(dep.call) else type(dep.call).__call__
            assert inspect.iscoroutinefunction(call), f"{route.path}: {dep.call!r} is not async"
            checked += 1
    assert checked > 20
