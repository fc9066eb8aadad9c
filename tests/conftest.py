"""Test-wide fixtures: a clean environment, settings on a temporary data dir, and the real services.

PostgreSQL and Redis are real servers (127.0.0.1). Outside CI a test that needs
one skips when it is down; in CI (``CI=true``) it fails, so a missing service
can never turn the suite green.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import settings as hypothesis_settings
from reachable import POSTGRES_URL, need_service
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit.keys import write_private_key
from gateway.bootstrap import Services, bootstrap
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
TEST_ID_KEY = "0123456789abcdef0123456789abcdef"
TEST_TOKEN_SECRET = "test-token-secret-0123456789abcdef0123456789"

# Property tests: in CI the examples are derived from each test (derandomize), so a run is
# reproducible and a commit is never turned red by a new random draw; `HYPOTHESIS_PROFILE=deep`
# explores far more examples, randomly, when a property is being worked on.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("deep", max_examples=5000, deadline=None, print_blob=True)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "default")
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CONCORD_* setting leaks in from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("CONCORD_") and not key.startswith("CONCORD_TEST_"):
            monkeypatch.delenv(key)
    yield


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", id_key=TEST_ID_KEY, ingest_batch_size=50)


@pytest.fixture
async def postgres_settings(tmp_path: Path) -> AsyncIterator[Settings]:
    """A fresh schema per test on the real PostgreSQL service, dropped afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    key_file = tmp_path / "audit-signing.key"
    write_private_key(key_file, Ed25519PrivateKey.generate())
    try:
        yield Settings(
            data_dir=tmp_path / "data",
            audit_signing_key_file=key_file,
            token_secret=TEST_TOKEN_SECRET,
            database_url=POSTGRES_URL,
            database_schema=schema,
            id_key=TEST_ID_KEY,
            ingest_batch_size=50,
        )
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest) -> Settings:
    """The same test on the embedded default and on PostgreSQL."""
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    return settings


@pytest.fixture
async def services(store_settings: Settings) -> AsyncIterator[Services]:
    built = await bootstrap(store_settings)
    try:
        yield built
    finally:
        await built.close()
