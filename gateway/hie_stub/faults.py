"""The stub HIE's fault plan: which transaction POSTs fail, and how.

``Faults`` is the plan as configured (CLI options or ``POST /_stub/faults``); ``FaultInjector``
holds the plan's run-time state (the seeded random source, the "down" deadline and budget) and
decides, once per request, which fault if any it gets. With a seed, the same sequence of requests
gets the same sequence of faults.

Kinds, in the order they are drawn (one uniform draw per transaction POST, so the rates are
shares of those requests and must add up to at most 1):

    reset       close the connection without responding (the client sees a connection error)
    error       500 with an OperationOutcome; nothing stored
    throttle    429 with ``Retry-After: retry_after``; nothing stored
    fail-entry  400 with an OperationOutcome naming one entry; nothing stored
    hang        apply the transaction, send the headers, stall the body for ``delay_seconds``
    delay       sleep ``delay_seconds``, then apply the transaction and answer normally

``down`` is checked before the draw and applies to every FHIR request (reads too): 503 for the
next ``down_requests`` requests and/or until ``down_seconds`` after the plan was installed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

FaultKind = Literal["down", "reset", "error", "throttle", "fail-entry", "hang", "delay"]
KINDS: Final[tuple[FaultKind, ...]] = ("down", "reset", "error", "throttle", "fail-entry", "hang", "delay")
_RATES: Final[tuple[tuple[str, FaultKind], ...]] = (
    ("reset_rate", "reset"),
    ("error_rate", "error"),
    ("throttle_rate", "throttle"),
    ("fail_entry_rate", "fail-entry"),
    ("hang_rate", "hang"),
    ("delay_rate", "delay"),
)


class FaultPlanError(ValueError):
    """A plan that cannot be used (unknown field, wrong type, rates out of range); safe to show."""


@dataclass(frozen=True)
class Faults:
    """A fault plan. All rates are shares (0..1) of transaction POSTs; the default injects nothing."""

    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: int = 1
    delay_rate: float = 0.0
    hang_rate: float = 0.0
    delay_seconds: float = 1.0
    reset_rate: float = 0.0
    fail_entry_rate: float = 0.0
    down_requests: int = 0
    down_seconds: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        rates = [getattr(self, name) for name, _ in _RATES]
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise FaultPlanError("every rate must be between 0 and 1")
        if math.fsum(rates) > 1.0 + 1e-9:
            raise FaultPlanError("the rates must add up to at most 1 (one fault per request)")
        if self.retry_after < 0 or self.delay_seconds < 0 or self.down_seconds < 0 or self.down_requests < 0:
            raise FaultPlanError("retry_after, delay_seconds, down_seconds and down_requests must be >= 0")

    @classmethod
    def from_json(cls, value: Any) -> Faults:
        """A plan from a JSON object of field names; missing fields take the defaults."""
        if not isinstance(value, Mapping):
            raise FaultPlanError("the fault plan must be a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise FaultPlanError(f"unknown fault plan fields: {', '.join(unknown)}")
        args: dict[str, Any] = {}
        for name, raw in value.items():
            args[name] = _coerce(name, raw)
        return cls(**args)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_INTS: Final = frozenset({"retry_after", "down_requests"})


def _coerce(name: str, raw: Any) -> Any:
    if name == "seed":
        if raw is None or (isinstance(raw, int) and not isinstance(raw, bool)):
            return raw
        raise FaultPlanError("seed must be an integer or null")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise FaultPlanError(f"{name} must be a number")
    if name in _INTS:
        if raw != int(raw):
            raise FaultPlanError(f"{name} must be a whole number")
        return int(raw)
    return float(raw)


class FaultInjector:
    """Run-time state of a plan. Not thread-safe; call from the event loop only."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.injected: dict[FaultKind, int] = dict.fromkeys(KINDS, 0)
        self.install(faults or Faults())

    def install(self, faults: Faults) -> None:
        """Use ``faults`` from now on: re-seed, restart the down window and budget (counts carry on)."""
        self.faults = faults
        # Not for security: a seeded, reproducible schedule of injected faults.
        self._random = random.Random(faults.seed)  # noqa: S311
        self._down_until = time.monotonic() + faults.down_seconds
        self._down_left = faults.down_requests

    def down(self) -> int | None:
        """Whether this request is refused as down: None if not, else the Retry-After seconds (0: none)."""
        remaining = self._down_until - time.monotonic()
        if remaining > 0:
            self.injected["down"] += 1
            return math.ceil(remaining)
        if self._down_left > 0:
            self._down_left -= 1
            self.injected["down"] += 1
            return 0
        return None

    def draw(self) -> FaultKind | None:
        """The fault for one transaction POST, or None. Consumes one draw from the seeded source."""
        u = self._random.random()
        edge = 0.0
        for name, kind in _RATES:
            edge += getattr(self.faults, name)
            if u < edge:
                self.injected[kind] += 1
                return kind
        return None

    def pick_entry(self, entries: int) -> int:
        """Which entry a fail-entry fault names (0 for an empty bundle)."""
        return self._random.randrange(entries) if entries else 0

    def state(self) -> dict[str, Any]:
        return {
            "plan": self.faults.as_json(),
            "injected": dict(self.injected),
            "down_seconds_left": max(0.0, round(self._down_until - time.monotonic(), 3)),
            "down_requests_left": self._down_left,
        }
