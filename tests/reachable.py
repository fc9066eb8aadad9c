"""The real services the integration tests use, and the rule for when one is down.

Outside CI a test that needs PostgreSQL or Redis skips when it is unreachable; in
CI (``CI=true``) it fails, so a missing service can never turn the suite green.
(Kept out of conftest.py so tests can import it by a name no other module shares.)
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get(
    "CONCORD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CONCORD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (in CI) unless ``host:port`` accepts connections."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError:
        message = f"{name} at {host}:{port} is not reachable"
        if IN_CI:
            pytest.fail(message + " (CI=true: services are required)")
        pytest.skip(message)
