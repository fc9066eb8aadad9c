"""When to try a failed delivery again. Pure.

Exponential backoff with full jitter (AWS architecture blog, "Exponential
Backoff and Jitter"): many people failing at once (the HIE down) spread their
retries instead of returning together. A ``Retry-After`` from the HIE wins when
it asks for longer.
"""

from __future__ import annotations

import random


def retry_delay(
    attempts: int, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt ``attempts + 1`` (``attempts`` ≥ 1 failures so far)."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is read as 'soon': 1 s)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0
