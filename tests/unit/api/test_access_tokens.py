"""Access tokens: a verified token is remembered until it expires, and never a moment longer."""

from __future__ import annotations

import time

import pytest

from gateway.api.outcome import Unauthorized
from gateway.api.principal import Principal, Role
from gateway.api.tokens import REMEMBERED, AccessTokens

SECRET = b"unit-test-token-secret-0123456789abcdef"
ISSUER = "http://concord.test"
PROVIDER = Principal("client-1", "Community EPR", "RAT", Role.PROVIDER, frozenset({"system/Patient.read"}))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    # PyJWT checks exp against the real time; this clock only ever runs ahead of it.
    return Clock(time.time())


def test_a_remembered_token_is_refused_once_it_expires(clock: Clock) -> None:
    tokens = AccessTokens(SECRET, ISSUER, lifetime=300, clock=clock)
    token, _ = tokens.issue(PROVIDER)
    assert tokens.verify(token) == PROVIDER
    clock.now += 299
    assert tokens.verify(token) == PROVIDER
    clock.now += 1
    with pytest.raises(Unauthorized) as refused:
        tokens.verify(token)
    assert refused.value.code == "expired"
    challenge = refused.value.headers["WWW-Authenticate"]
    assert challenge == 'Bearer error="invalid_token", error_description="the access token expired"'


def test_a_token_expired_by_the_clock_is_refused_on_first_sight(clock: Clock) -> None:
    issuer = AccessTokens(SECRET, ISSUER, lifetime=300, clock=clock)
    token, _ = issuer.issue(PROVIDER)
    clock.now += 300
    with pytest.raises(Unauthorized) as refused:
        AccessTokens(SECRET, ISSUER, lifetime=300, clock=clock).verify(token)
    assert refused.value.code == "expired"


def test_remembering_a_token_does_not_let_an_altered_one_through(clock: Clock) -> None:
    tokens = AccessTokens(SECRET, ISSUER, clock=clock)
    token, _ = tokens.issue(PROVIDER)
    tokens.verify(token)
    head, payload, signature = token.split(".")
    for altered in (f"{head}.{payload}.{signature[:-2]}AA", f"{head}.{payload}x.{signature}", token + " "):
        with pytest.raises(Unauthorized):
            tokens.verify(altered)


def test_the_memory_is_bounded(clock: Clock) -> None:
    tokens = AccessTokens(SECRET, ISSUER, clock=clock)
    for _ in range(REMEMBERED + 5):
        tokens.verify(tokens.issue(PROVIDER)[0])
    assert len(tokens._verified) <= REMEMBERED
