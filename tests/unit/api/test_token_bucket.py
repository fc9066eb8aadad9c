"""The token bucket's arithmetic and the in-process limiter, on an injected clock."""

from __future__ import annotations

import pytest
from bucket_cases import CASES, T0, Case, FakeClock

from gateway.api.metrics import Metrics
from gateway.api.outcome import Throttled
from gateway.api.principal import Principal, Role
from gateway.api.ratelimit import Bucket, LocalBuckets, RateLimiter, retry_after, take, take_many

CLIENT_A = Principal("epr-a", "Community EPR", "RAT", Role.PROVIDER, frozenset({"system/*.read"}))
CLIENT_B = Principal("gp-feed", "GP feed", "Y90001", Role.SOURCE, frozenset({"system/*.write"}), "gp")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_take(case: Case) -> None:
    assert take(case.held, case.now, case.rate, case.burst) == case.expected


@pytest.mark.parametrize(
    ("tokens", "rate", "seconds"),
    [
        (0.0, 2.0, 1),  # half a second: rounded up
        (0.0, 0.25, 4),
        (0.5, 0.25, 2),
        (0.0, 0.3, 4),  # 3.33 s
        (0.999, 50.0, 1),  # 20 microseconds: at least one second
        (0.0, 1.0, 1),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    tokens: float, rate: float, seconds: int
) -> None:
    assert retry_after(tokens, rate) == seconds


def test_waiting_retry_after_seconds_always_earns_a_token() -> None:
    for tokens in (0.0, 0.1, 0.5, 0.99):
        for rate in (0.1, 0.3, 1.0, 7.0, 50.0):
            held = Bucket(tokens, T0)
            assert take(held, T0, rate, 10).allowed is False
            assert take(held, T0 + retry_after(tokens, rate), rate, 10).allowed is True


def limiter(clock: FakeClock, rate: float = 1.0, burst: int = 3) -> tuple[RateLimiter, Metrics]:
    metrics = Metrics()
    return RateLimiter(LocalBuckets(rate, burst), rate, metrics, clock), metrics


def throttled(metrics: Metrics, role: str) -> float:
    return metrics.registry.get_sample_value("concord_rate_limited_requests_total", {"role": role}) or 0.0


async def test_a_burst_then_429_until_the_bucket_refills() -> None:
    clock = FakeClock()
    limits, metrics = limiter(clock, rate=2.0, burst=3)
    for _ in range(3):
        await limits.admit(CLIENT_A)
    with pytest.raises(Throttled) as refused:
        await limits.admit(CLIENT_A)
    assert refused.value.status == 429 and refused.value.code == "throttled"
    assert refused.value.headers == {"Retry-After": "1"}
    assert throttled(metrics, "provider") == 1
    clock.advance(0.25)  # half a token
    with pytest.raises(Throttled):
        await limits.admit(CLIENT_A)
    clock.advance(0.25)
    await limits.admit(CLIENT_A)
    assert throttled(metrics, "provider") == 2


async def test_one_client_spending_its_budget_leaves_others_alone() -> None:
    clock = FakeClock()
    limits, metrics = limiter(clock, burst=2)
    for _ in range(2):
        await limits.admit(CLIENT_A)
    with pytest.raises(Throttled):
        await limits.admit(CLIENT_A)
    for _ in range(2):
        await limits.admit(CLIENT_B)
    assert throttled(metrics, "source") == 0


async def test_a_quiet_client_gets_its_burst_back_and_no_more() -> None:
    clock = FakeClock()
    limits, _ = limiter(clock, rate=10.0, burst=5)
    for _ in range(5):
        await limits.admit(CLIENT_A)
    clock.advance(3600)
    for _ in range(5):
        await limits.admit(CLIENT_A)
    with pytest.raises(Throttled):
        await limits.admit(CLIENT_A)


async def test_retry_after_counts_the_wait_for_a_slow_rate() -> None:
    clock = FakeClock()
    limits, _ = limiter(clock, rate=0.2, burst=1)
    await limits.admit(CLIENT_A)
    with pytest.raises(Throttled) as refused:
        await limits.admit(CLIENT_A)
    assert refused.value.headers["Retry-After"] == "5"
    clock.advance(4.9)
    with pytest.raises(Throttled) as refused:
        await limits.admit(CLIENT_A)
    assert refused.value.headers["Retry-After"] == "1"
    clock.advance(0.1)
    await limits.admit(CLIENT_A)


def test_take_many_grants_what_whole_tokens_there_are() -> None:
    assert take_many(None, T0, 2.0, 5, 3) == (3, Bucket(2.0, T0))
    assert take_many(Bucket(2.5, T0), T0, 2.0, 5, 10) == (2, Bucket(0.5, T0))
    assert take_many(Bucket(0.5, T0), T0, 2.0, 5, 10) == (0, Bucket(0.5, T0))
    # Within a rounding error of a whole token counts as one, as for ``take``.
    assert take_many(Bucket(1.9999999999, T0), T0, 2.0, 5, 10)[0] == 2
