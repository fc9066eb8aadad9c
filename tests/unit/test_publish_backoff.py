"""When a failed delivery is tried again: backoff with jitter, and the HIE's Retry-After in both forms."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from gateway.publish.backoff import parse_retry_after, retry_delay

NOW = datetime(2026, 11, 24, 17, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("8", 8.0),
        ("0", 0.0),
        ("Tue, 24 Nov 2026 17:00:08 GMT", 8.0),  # the HTTP-date form (RFC 9110 10.2.3)
        ("Tue, 24 Nov 2026 16:59:00 GMT", 0.0),  # already past: now
        ("soon, please", 1.0),
        (None, None),
        ("", None),
    ],
)
def test_retry_after_in_either_form(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_backoff_grows_to_the_cap_with_jitter_and_a_longer_retry_after_wins() -> None:
    rng = random.Random(1)
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 8.0)):
        delay = retry_delay(attempts, base=1.0, cap=8.0, rng=rng)
        assert ceiling / 2 <= delay <= ceiling
    assert retry_delay(1, base=1.0, cap=8.0, retry_after=6.0, rng=rng) == 6.0
    assert retry_delay(1, base=1.0, cap=8.0, retry_after=60.0, rng=rng) == 8.0  # never past the cap
