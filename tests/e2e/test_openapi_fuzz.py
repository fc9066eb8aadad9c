"""Schemathesis against the OpenAPI description the server serves: no request may get a 5xx.

The app runs under real uvicorn on a free port with a SQLite store in a temporary data dir,
seeded with a small synthetic population (GP and community extracts, through the ingestor) and one
local opt-out. The schema is loaded from ``/openapi.json`` as a client would, and every operation it
describes is called with generated data, bounded examples per operation, three ways: as an admin
holding every scope, as a FHIR source system holding every write scope (the push endpoints let only
a source in), and with no token at all. The one check is schemathesis's ``not_a_server_error``.

Schemathesis generates what the description declares (path and header parameters, request bodies,
undeclared methods); search parameters and bodies that routes read by hand are reached only once the
description declares them. A 5xx here is a product bug: the failure names the request (a curl line)
and the server's traceback is in the captured log. Each run is deterministic (``derandomize``).
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.schemas import BaseSchema

from adapters.community import CommunityAdapter
from adapters.gp import GpAdapter
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.api.app import create_app
from gateway.api.principal import Principal, Role
from gateway.bootstrap import bootstrap
from gateway.settings import Settings
from gateway.synth.community import write_community
from gateway.synth.defects import DefectPlan
from gateway.synth.gp import write_gp
from gateway.synth.population import population

pytestmark = pytest.mark.slow

ID_KEY = "0123456789abcdef0123456789abcdef"
TOKEN_SECRET = "fuzz-token-secret-0123456789abcdef0123456789"
PEOPLE = 12
MAX_EXAMPLES = 25
EVERY_SCOPE = frozenset({"system/*.read", "system/*.write"})
CALLERS: dict[str, Principal | None] = {
    "admin": Principal("fuzz-admin", "Fuzz admin", "RAT", Role.ADMIN, EVERY_SCOPE),
    "fhir-source": Principal(
        "fuzz-source", "Fuzz FHIR source", "RAT", Role.SOURCE, frozenset({"system/*.write"}), source="fhir"
    ),
    "anonymous": None,
}


class Served:
    def __init__(self, base: str, app: FastAPI) -> None:
        self.base = base
        self.app = app

    def headers(self, caller: str) -> dict[str, str]:
        principal = CALLERS[caller]
        if principal is None:
            return {}
        token, _ = self.app.state.tokens.issue(principal)
        return {"Authorization": f"Bearer {token}"}


async def seed(settings: Settings, extracts: Path) -> None:
    """A few people from the GP and community extracts, and one person with a local opt-out."""
    people = list(population(PEOPLE, 7))
    gp, community = extracts / "gp.csv", extracts / "community.jsonl"
    with gp.open("w", encoding="utf-8", newline="") as out:
        write_gp(people, out, random.Random(1), DefectPlan(0.0, 7))
    with community.open("w", encoding="utf-8", newline="") as out:
        write_community(people, out, random.Random(2), DefectPlan(0.0, 7))
    services = await bootstrap(settings)
    try:
        with gp.open("rb") as fh:
            await services.ingestor.run("gp", GpAdapter().read(fh), gp.name)
        with community.open("rb") as fh:
            await services.ingestor.run("community", CommunityAdapter().read(fh), community.name)
        operator = Requester(RequesterKind.OPERATOR, settings.organisation_ods, "fuzz-seed")
        await services.register.opt_out(
            people[-1].nhs_number, OptOutKind.LOCAL, Authority.LETTER, operator, "fuzz-seed"
        )
    finally:
        await services.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("openapi-fuzz")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(
        data_dir=root / "data",
        database_url=None,  # the embedded SQLite store, whatever the shell's CONCORD_* say
        redis_url=None,
        id_key=ID_KEY,
        token_secret=TOKEN_SECRET,
        public_url=f"http://127.0.0.1:{port}",
        ingest_workers=0,
        # Not rate limited: a 429 would stop a request before the code it is meant to reach.
        rate_limit_per_second=0,
    )
    asyncio.run(seed(settings, root))
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", http="h11", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def api_schema(served: Served) -> BaseSchema:
    loaded: BaseSchema = schemathesis.openapi.from_url(f"{served.base}/openapi.json", timeout=10)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


def test_the_openapi_description_is_served_and_every_operation_in_it_loads(api_schema: BaseSchema) -> None:
    loaded = list(api_schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in loaded), [r for r in loaded if not isinstance(r, Ok)]
    operations = {f"{r.ok().method.upper()} {r.ok().path}" for r in loaded if isinstance(r, Ok)}
    assert {
        "POST /token",
        "GET /fhir/metadata",
        "GET /fhir/Patient",
        "GET /fhir/CarePlan",
        "GET /fhir/Patient/{rid}",
        "GET /fhir/Patient/{rid}/$everything",
        "POST /fhir",
        "POST /fhir/Consent",
        "GET /fhir/AuditEvent",
    } <= operations


FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def call(case: Any, served: Served, caller: str) -> None:
    case.call_and_validate(
        base_url=served.base, headers=served.headers(caller), checks=[not_a_server_error], timeout=30
    )


@schema.parametrize()
@FUZZ
def test_no_server_error_as_an_admin_with_every_scope(case: Any, served: Served) -> None:
    call(case, served, "admin")


@schema.parametrize()
@FUZZ
def test_no_server_error_as_a_fhir_source(case: Any, served: Served) -> None:
    call(case, served, "fhir-source")


@schema.parametrize()
@FUZZ
def test_no_server_error_without_a_token(case: Any, served: Served) -> None:
    call(case, served, "anonymous")
