"""The console's pages count against the signed-in client's rate limit, the budget its API calls use."""

from __future__ import annotations

import pytest
from bucket_cases import FakeClock
from console_client import CLINICIAN, IG, Console

from gateway.settings import Settings

PAGE = "/console/consent"


@pytest.fixture
def store_settings(sqlite_settings: Settings) -> Settings:
    return sqlite_settings.model_copy(update={"rate_limit_per_second": 1.0, "rate_limit_burst": 3})


async def test_a_session_spending_its_clients_budget_gets_a_429_page(console: Console) -> None:
    clock = FakeClock()
    console.app.state.limiter.clock = clock
    await console.sign_in(IG)  # signing in is free; the start page after it takes a token
    assert (await console.get(PAGE)).status_code == 200
    api = await console.client.get(
        "/fhir/Patient/unknown", headers={"Authorization": f"Bearer {console.token(IG)}"}
    )
    assert api.status_code == 403  # admitted (and refused for want of a scope): the third token
    refused = await console.get(PAGE)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Cache-Control"] == "no-store"  # a console page, hardened as every other
    assert "Too many requests" in refused.text
    other = Console(console.app, console.client, console.services)
    await other.sign_in(CLINICIAN)  # another organisation: its own budget
    assert (await other.get("/console/record")).status_code == 200
    await console.sign_in(IG)
    assert (await console.get(PAGE)).status_code == 429
    clock.advance(1.0)
    assert (await console.get(PAGE)).status_code == 200
