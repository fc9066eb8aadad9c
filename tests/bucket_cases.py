"""Token-bucket cases shared by the unit tests of ``take`` and the Redis tests of its Lua twin, and a clock.

(A module of its own, not conftest.py, so tests import it by a name no other module shares.)
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.api.ratelimit import Bucket, Taken

#: A wall-clock time of the right magnitude (late 2025), so the cases exercise realistic doubles.
T0 = 1_764_000_000.0


class Case(NamedTuple):
    name: str
    held: Bucket | None
    now: float
    rate: float
    burst: int
    expected: Taken


#: Values are binary fractions, so each expectation is exact.
CASES = [
    Case("a new bucket starts full", None, T0, 2.0, 5, Taken(True, Bucket(4.0, T0))),
    Case("an empty bucket refuses", Bucket(0.0, T0), T0, 2.0, 5, Taken(False, Bucket(0.0, T0))),
    Case(
        "a partial refill is not a token",
        Bucket(0.0, T0),
        T0 + 0.25,
        2.0,
        5,
        Taken(False, Bucket(0.5, T0 + 0.25)),
    ),
    Case(
        "a refill to one token admits", Bucket(0.0, T0), T0 + 0.5, 2.0, 5, Taken(True, Bucket(0.0, T0 + 0.5))
    ),
    Case(
        "refill stops at the burst", Bucket(1.0, T0), T0 + 3600, 2.0, 5, Taken(True, Bucket(4.0, T0 + 3600))
    ),
    Case(
        "a lagging clock neither refills nor moves the stamp back",
        Bucket(2.0, T0),
        T0 - 10,
        2.0,
        5,
        Taken(True, Bucket(1.0, T0)),
    ),
    Case(
        "a clock stepped back restarts counting from now",
        Bucket(0.5, T0),
        T0 - 3600,
        2.0,
        5,
        Taken(False, Bucket(0.5, T0 - 3600)),
    ),
    Case(
        "a slow rate accumulates fractions",
        Bucket(0.125, T0),
        T0 + 3,
        0.25,
        5,
        Taken(False, Bucket(0.875, T0 + 3)),
    ),
    Case("a burst of one", None, T0, 50.0, 1, Taken(True, Bucket(0.0, T0))),
]

#: Cases whose arithmetic is not exact in binary (for the Lua twin: it must round exactly alike).
AWKWARD = [
    (Bucket(0.1, T0 + 0.123456789), T0 + 0.3333333, 0.3, 7),
    (Bucket(3.7000000000000002, T0), T0 + 1e-9, 50.0, 100),
    (Bucket(0.0, T0 + 0.1), T0 + 0.1 + 0.2, 3.3, 10),
    (Bucket(99.99999999999999, T0), T0 + 0.017, 49.9, 100),
    (Bucket(0.9999999999999999, T0), T0 + 1e-6, 1e-3, 2),
]


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
