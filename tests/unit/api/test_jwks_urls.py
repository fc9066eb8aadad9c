"""A client's registered keys: JWK Set URLs as registered, and how long a fetched set is kept."""

from __future__ import annotations

import pytest

from gateway.api import client_keys
from gateway.api.assertion import JwksError
from gateway.api.client_keys import MAX_KEEP, MIN_KEEP, check_jwks_url, jwks_url, keep_seconds


@pytest.mark.parametrize(
    "url",
    [
        "https://keys.example.nhs.uk/.well-known/jwks.json",
        "https://keys.example:8443/jwks",
        "http://127.0.0.1:8099/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:8099/jwks.json",
        "http://127.1.2.3/jwks.json",
    ],
)
def test_https_urls_and_loopback_http_urls_register(url: str) -> None:
    assert check_jwks_url(url) == url
    assert jwks_url(client_keys.url_registration(url)) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://keys.example/jwks.json",
        "http://10.0.0.1/jwks.json",
        "http://localhost.attacker.example/jwks.json",
        "ftp://keys.example/jwks.json",
        "file:///etc/passwd",
        "https://user:pass@keys.example/jwks.json",
        "https://keys.example/jwks.json#k1",
        "https:///jwks.json",
        "https://keys.example:99999/jwks.json",
        "jwks.json",
        "https://keys.example/" + "a" * 2048,
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(JwksError):
        check_jwks_url(url)


def test_a_registered_set_is_not_a_url() -> None:
    assert jwks_url('{"keys": [{"kid": "k"}]}') is None
    assert jwks_url("not json") is None
    assert jwks_url('{"jwks_uri": 5}') is None
    # A set that also holds jwks_uri is read as a set (and parse_jwks refuses it): never a URL.
    assert jwks_url('{"keys": [{"kid": "k"}], "jwks_uri": "https://keys.example/j"}') is None


@pytest.mark.parametrize(
    ("cache_control", "seconds"),
    [
        (None, client_keys.DEFAULT_KEEP),
        ("", client_keys.DEFAULT_KEEP),
        ("max-age=600", 600.0),
        ("public, max-age=120, must-revalidate", 120.0),
        ('max-age="900"', 900.0),
        ("MAX-AGE=1800", 1800.0),
        ("max-age=5", MIN_KEEP),
        ("max-age=0", MIN_KEEP),
        ("max-age=86400", MAX_KEEP),
        ("max-age=99999999999999", MAX_KEEP),
        ("no-store", MIN_KEEP),
        ("no-cache, max-age=900", MIN_KEEP),
        ("s-maxage=900", client_keys.DEFAULT_KEEP),
        ("max-age=abc", client_keys.DEFAULT_KEEP),
    ],
)
def test_a_fetched_set_is_kept_for_its_max_age_within_bounds(
    cache_control: str | None, seconds: float
) -> None:
    assert keep_seconds(cache_control) == seconds
