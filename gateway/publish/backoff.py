"""When to try a failed delivery again. Pure.

Exponential backoff with "equal jitter" (AWS architecture blog, "Exponential
Backoff and Jitter": half the ceiling fixed, half random): many people failing
at once (the HIE down) spread their retries instead of returning together. A
``Retry-After`` from the HIE wins when it asks for longer.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_delay(
    attempts: int, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt ``attempts + 1`` (``attempts`` ≥ 1 failures so far)."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After in seconds, from either form RFC 9110 (10.2.3) allows: delay-seconds, or an
    HTTP-date (seconds from ``now`` until then). A value that is neither is read as 'soon': 1 s."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return 1.0
    if when.tzinfo is None:  # "-0000" in RFC 5322; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
