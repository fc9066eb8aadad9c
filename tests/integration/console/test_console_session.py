"""Signing in and out, the session cookie, CSRF, roles and scopes, and the headers on every page."""

from __future__ import annotations

import time

import httpx
import jwt
from console_client import CLINICIAN, IG, IG_LOG_ONLY, SOURCE, Console
from starlette.responses import Response

from gateway.api.principal import Principal, Role
from gateway.console.seal import Sealer
from gateway.console.session import COOKIE, SECURE_COOKIE, Sessions

SECRET = b"s" * 32


def cookie_header(response: httpx.Response | Response) -> str:
    if isinstance(response, Response):
        return "; ".join(v for k, v in response.headers.items() if k == "set-cookie")
    return "; ".join(response.headers.get_list("set-cookie"))


async def test_sign_in_sets_a_strict_http_only_session_cookie_bound_to_the_token(console: Console) -> None:
    page = await console.get("/console/sign-in")
    assert page.status_code == 200 and "Sign in to the concord console" in page.text
    anonymous = cookie_header(page)
    assert anonymous.startswith(f"{COOKIE}=") and "HttpOnly" in anonymous and "SameSite=strict" in anonymous
    assert "Path=/console" in anonymous and "Secure" not in anonymous

    response = await console.post("/console/sign-in", {"access_token": console.token(IG)})
    assert response.status_code == 303 and response.headers["location"] == "/console/"
    cookie = cookie_header(response)
    max_age = int(cookie.split("Max-Age=")[1].split(";")[0])
    assert 290 <= max_age <= 300  # the token's own expiry
    assert console.token(IG) not in cookie  # the claims, never the token
    home = await console.client.get("/console/")
    assert home.headers["location"] == "/console/consent"
    assert (await console.get("/console/consent")).status_code == 200


def test_https_deployments_get_secure_cookies() -> None:
    sessions = Sessions(SECRET, secure=True)
    response = Response()
    sessions.set_cookie(response, sessions.anonymous())
    header = cookie_header(response)
    assert header.startswith(f"{SECURE_COOKIE}=") and "Secure" in header and "HttpOnly" in header


def test_a_session_cookie_cannot_be_forged_edited_or_kept_past_its_expiry() -> None:
    now = [1_000_000.0]
    sessions = Sessions(SECRET, secure=False, clock=lambda: now[0])
    principal = Principal("c", "n", "RAT", Role.PROVIDER, frozenset({"system/*.read"}))
    value = sessions.encode(sessions.signed_in(principal, int(now[0]) + 300))
    read = sessions.decode(value)
    assert read is not None and read.principal == principal
    body, _, mac = value.partition(".")
    assert sessions.decode(body[:-2] + "xx." + mac) is None
    assert Sessions(b"t" * 32, secure=False, clock=lambda: now[0]).decode(value) is None
    assert (
        sessions.decode(value + "x") is None
        and sessions.decode("") is None
        and sessions.decode("a.b") is None
    )
    now[0] += 301
    assert sessions.decode(value) is None


def test_sealed_references_open_only_for_their_client_page_and_lifetime() -> None:
    now = [1_000_000.0]
    sealer = Sealer(SECRET, clock=lambda: now[0])
    token = sealer.seal("record", "epr-a", {"n": "9990000018"})
    assert "9990000018" not in token
    assert sealer.open("record", "epr-a", token) == {"n": "9990000018"}
    assert sealer.open("record", "epr-b", token) is None
    assert sealer.open("access", "epr-a", token) is None
    assert sealer.open("record", "epr-a", token[:-3] + "AAA") is None
    assert sealer.open("record", "epr-a", "not base64!") is None
    assert Sealer(b"t" * 32, clock=lambda: now[0]).open("record", "epr-a", token) is None
    now[0] += 13 * 3600
    assert sealer.open("record", "epr-a", token) is None


async def test_sign_in_needs_the_form_s_csrf_token(console: Console) -> None:
    await console.get("/console/sign-in")
    refused = await console.post("/console/sign-in", {"access_token": console.token(IG)}, csrf="forged")
    assert refused.status_code == 400 and "The form has expired" in refused.text
    assert "set-cookie" not in refused.headers
    console.client.cookies.clear()  # no anonymous session at all
    again = await console.post("/console/sign-in", {"access_token": console.token(IG)}, csrf="anything")
    assert again.status_code == 400 and "Enter your access token again" in again.text


async def test_sign_in_refuses_bad_expired_and_source_tokens(console: Console) -> None:
    await console.get("/console/sign-in")
    bad = await console.post("/console/sign-in", {"access_token": "eyJ.not.a-token"})
    assert bad.status_code == 401 and "The access token is not valid" in bad.text
    assert "eyJ.not.a-token" not in bad.text

    secret = console.services.settings.resolved_token_secret()
    issuer = console.app.state.tokens.issuer
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": issuer,
        "sub": "ig",
        "iat": now - 600,
        "exp": now - 300,
        "ods": "15E",
        "role": "ig-auditor",
    }
    expired = await console.post(
        "/console/sign-in", {"access_token": jwt.encode(claims, secret, algorithm="HS256")}
    )
    assert expired.status_code == 401 and "has expired" in expired.text

    source = await console.post("/console/sign-in", {"access_token": console.token(SOURCE)})
    assert source.status_code == 403 and "no pages in the console" in source.text
    empty = await console.post("/console/sign-in", {"access_token": ""})
    assert empty.status_code == 400 and "Enter an access token" in empty.text
    assert (await console.client.get("/console/consent")).status_code == 303


async def test_pages_need_a_session_and_a_tampered_one_ends_it(console: Console) -> None:
    for path in ("/console/consent", "/console/access", "/console/record", "/console/quality"):
        response = await console.client.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/console/sign-in"
    await console.sign_in(IG)
    value = console.client.cookies.get(COOKIE)
    assert value
    console.client.cookies.clear()
    ended = await console.client.get("/console/consent", headers={"cookie": f"{COOKIE}={value[:-4]}AAAA"})
    assert ended.status_code == 303 and ended.headers["location"] == "/console/sign-in?ended=1"
    page = await console.get(ended.headers["location"])
    assert "Your session has ended" in page.text


ACCESS = [
    (CLINICIAN, "/console/consent", 403),
    (CLINICIAN, "/console/integrity", 403),
    (IG, "/console/record", 403),
    (IG_LOG_ONLY, "/console/consent", 403),
    (IG_LOG_ONLY, "/console/access", 200),
    (CLINICIAN, "/console/record", 200),
]


async def test_roles_and_scopes_open_pages(console: Console) -> None:
    for who, path, status in ACCESS:
        await console.sign_in(who)
        before = await console.log_size()
        response = await console.get(path)
        assert response.status_code == status, (who.client_id, path)
        if status == 403:
            assert "You cannot see this page" in response.text
            assert await console.log_size() == before  # refused before anything is read or logged


async def test_forms_need_the_session_s_csrf_token(console: Console) -> None:
    await console.sign_in(IG)
    before = await console.log_size()
    for path in ("/console/consent", "/console/access", "/console/integrity", "/console/access/person"):
        response = await console.post(path, {"nhs_number": "9990000018"}, csrf="not-the-token")
        assert response.status_code == 400 and "The form has expired" in response.text
    wrong_type = await console.client.post(
        "/console/access", content=b'{"csrf_token": "x"}', headers={"content-type": "application/json"}
    )
    assert wrong_type.status_code == 400
    assert await console.log_size() == before


async def test_sign_out_clears_the_session(console: Console) -> None:
    await console.sign_in(CLINICIAN)
    refused = await console.post("/console/sign-out", {}, csrf="forged")
    assert refused.status_code == 400
    response = await console.post("/console/sign-out", {})
    assert response.status_code == 303 and response.headers["location"] == "/console/sign-in?signed_out=1"
    assert "Max-Age=0" in cookie_header(response) or "expires=" in cookie_header(response).lower()
    assert (await console.client.get("/console/record")).status_code == 303


async def test_every_page_is_hardened(console: Console) -> None:
    for response in (await console.get("/console/sign-in"), await console.client.get("/console/record")):
        headers = response.headers
        assert headers["cache-control"] == "no-store"
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        policy = headers["content-security-policy"]
        assert "script-src 'self' 'nonce-" in policy and "frame-ancestors 'none'" in policy
        assert "style-src 'self'" in policy and "unsafe-inline" not in policy
    page = await console.get("/console/sign-in")
    nonce = page.headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page.text
    assert "<script>" not in page.text
