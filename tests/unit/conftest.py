"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
from support import make_mapper

from mappings.mapper import Mapper


@pytest.fixture(scope="session")
def mapper() -> Mapper:
    """The specs and maps as shipped, under a fixed id key."""
    return make_mapper()
