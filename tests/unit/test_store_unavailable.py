"""Which store errors are an outage (answered 503, worth a retry) and which are faults (500)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import exc

from gateway.store.database import is_unavailable


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__("from the server")
        self.sqlstate = sqlstate


def wrapped(error: Exception, kind: type[exc.DBAPIError] = exc.DBAPIError) -> exc.DBAPIError:
    return kind("SELECT 1", {}, error)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        exc.TimeoutError("QueuePool limit reached"),
        wrapped(PgError("53300")),  # too many clients
        wrapped(PgError("57P03")),  # the server is starting up or shutting down
        wrapped(PgError("08006")),  # connection failure
        wrapped(sqlite3.OperationalError("database is locked"), exc.OperationalError),
    ],
    ids=repr,
)
def test_outages(error: Exception) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad input"),
        wrapped(PgError("23505"), exc.IntegrityError),  # unique violation: a fault
        wrapped(PgError("42P01"), exc.ProgrammingError),  # no such table
        wrapped(sqlite3.OperationalError("no such table: resources"), exc.OperationalError),
    ],
    ids=repr,
)
def test_faults(error: Exception) -> None:
    assert not is_unavailable(error)
