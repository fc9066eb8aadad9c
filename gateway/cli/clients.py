"""``concord clients add|list|set-keys|disable`` and ``concord token``: API client organisations and
their tokens.

A client registers its public JWK Set (``--jwks FILE``), the URL it publishes the set at
(``--jwks-url URL``, fetched by ``POST /token`` when needed: ``gateway.api.client_keys``) or, for
development, has concord make it a key (``--generate-key PATH``: EC P-384, private key written to
PATH, 0600). ``set-keys`` replaces a client's keys the same three ways, keeping its client_id: a
key roll-over. ``concord token`` mints an access token directly, without a client assertion: on the
embedded default only (anyone who can read its data dir holds the token secret anyway); everywhere
else clients use ``POST /token``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.records import SOURCES
from gateway.api import assertion, client_keys
from gateway.api.principal import Role
from gateway.api.scopes import MAX_SCOPE_CHARS, covers, parse
from gateway.api.tokens import AccessTokens
from gateway.bootstrap import Services
from gateway.cli.common import err, run, write_json
from gateway.settings import Settings
from gateway.store import clients as registry
from gateway.store.clients import ApiClient, ClientError

ODS = re.compile(r"[A-Z0-9]{3,20}")
KEY_SOURCES = "give exactly one of --jwks FILE, --jwks-url URL and --generate-key PATH"
F = TypeVar("F", bound=Callable[..., None])


@click.group()
def clients() -> None:
    """Client organisations allowed to call the API (SMART Backend Services).

    Each registers public keys (a JWK Set file or a JWK Set URL) and gets tokens at POST /token
    with assertions signed by its private key (docs/api-auth.md).
    """


def _scopes(value: str) -> list[str]:
    scopes = list(dict.fromkeys(value.split()))
    bad = [s for s in scopes if len(s) > MAX_SCOPE_CHARS or parse(s) is None]
    if not scopes or bad:
        raise click.BadParameter(
            f"not a SMART system scope: {bad[0]!r}" if bad else "give at least one scope",
            param_hint="--scopes",
        )
    return scopes


def key_options(command: F) -> F:
    """The three ways to give a client's keys (exactly one), shared by ``add`` and ``set-keys``."""
    options = (
        click.option(
            "--jwks",
            "jwks_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="The client's public JWK Set (a JSON file).",
        ),
        click.option(
            "--jwks-url",
            metavar="URL",
            help="The https URL the client publishes its JWK Set at (POST /token fetches it when needed).",
        ),
        click.option(
            "--generate-key",
            "key_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Development: make an EC P-384 key, write its private key here (PEM, 0600), register it.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True, slots=True)
class KeyRegistration:
    #: What the registry keeps: a JWK Set, or a JWK Set URL (``client_keys.url_registration``).
    jwks: str
    #: The registered keys' ids (none for a URL: its keys are fetched when needed).
    kids: tuple[str, ...]
    #: The private key written, with ``--generate-key``: removed if the registration fails.
    key_file: Path | None


def key_registration(jwks_file: Path | None, jwks_url: str | None, key_file: Path | None) -> KeyRegistration:
    """The keys given by exactly one option, checked as ``POST /token`` will check them."""
    _one_key_source(jwks_file, jwks_url, key_file)
    if jwks_url is not None:
        try:
            return KeyRegistration(client_keys.url_registration(jwks_url), (), None)
        except assertion.JwksError as exc:
            raise click.BadParameter(str(exc), param_hint="--jwks-url") from None
    if key_file is not None:
        jwks = generate_key(key_file)
    else:
        assert jwks_file is not None
        jwks = jwks_file.read_text()
    try:
        keys = assertion.parse_jwks(jwks)
    except assertion.JwksError as exc:
        raise click.ClickException(f"{jwks_file or 'the generated key'}: {exc}") from None
    for key in keys.values():
        if not any(key.signs(alg) for alg in assertion.ALGORITHMS):
            click.echo(f"warning: key {key.kid!r} cannot sign RS384, ES384 or RS512 assertions", err=True)
    return KeyRegistration(jwks, tuple(keys), key_file)


def _one_key_source(*options: object) -> None:
    if sum(option is not None for option in options) != 1:
        raise click.UsageError(KEY_SOURCES)


def _registered(keys: KeyRegistration, change: Callable[[Services], Awaitable[ApiClient]]) -> ApiClient:
    """Run ``change`` (a registry write); a generated private key goes if it fails."""
    try:
        client = run(change)
    except ClientError as exc:
        if keys.key_file is not None:
            keys.key_file.unlink(missing_ok=True)
        raise click.ClickException(str(exc)) from None
    if keys.key_file is not None:
        click.echo(f"private key written to {keys.key_file} (kid {keys.kids[0]})", err=True)
    return client


def generate_key(path: Path) -> str:
    """Write a new EC P-384 private key to ``path`` (refusing to overwrite); its public JWK Set."""
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{path} exists: give a new path for the private key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return orjson.dumps({"keys": [assertion.public_jwk(key.public_key(), "ES384")]}).decode()


@clients.command()
@click.option(
    "--name", required=True, help="A unique name for the client (used by list, set-keys, disable, token)."
)
@click.option("--ods-code", required=True, help="ODS code of the organisation the client acts for.")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option(
    "--scopes", "scopes_text", required=True, help='e.g. "system/Patient.read system/CarePlan.read"'
)
@click.option("--source", type=click.Choice(SOURCES), help="Role source only: whose records it may write.")
@key_options
def add(
    name: str,
    ods_code: str,
    role: str,
    scopes_text: str,
    source: str | None,
    jwks_file: Path | None,
    jwks_url: str | None,
    key_file: Path | None,
) -> None:
    """Register a client with its public keys; prints the new client_id (the assertions' iss/sub)."""
    _one_key_source(jwks_file, jwks_url, key_file)
    if not 0 < len(name) <= 128:
        raise click.BadParameter("1 to 128 characters", param_hint="--name")
    ods = ods_code.strip().upper()
    if not ODS.fullmatch(ods):
        raise click.BadParameter("letters and digits, 3 to 20 of them", param_hint="--ods-code")
    if (role == Role.SOURCE.value) != (source is not None):
        raise click.UsageError("--source is required for role source, and only for it")
    scopes = _scopes(scopes_text)
    keys = key_registration(jwks_file, jwks_url, key_file)

    async def body(services: Services) -> ApiClient:
        async with services.engine.begin() as conn:
            return await registry.add(
                conn,
                name=name,
                ods_code=ods,
                role=Role(role),
                scopes=scopes,
                source=source,
                jwks=keys.jwks,
                when=datetime.now(UTC),
            )

    click.echo(_registered(keys, body).client_id)


@clients.command("set-keys")
@click.option("--name", required=True, help="The client's name (concord clients list).")
@key_options
def set_keys(name: str, jwks_file: Path | None, jwks_url: str | None, key_file: Path | None) -> None:
    """Replace a client's keys, keeping its client_id, scopes and state: a key roll-over.

    The new keys replace the old at once (POST /token reads them on every call). To roll a key
    without a refused assertion: register a set holding the old and the new key, let the client
    switch to signing with the new one, then register the set holding the new key alone
    (docs/api-auth.md, "Rolling a client's keys"). --generate-key replaces them with one new
    key at once (development); a client registered by --jwks-url rolls its keys by publishing.
    """
    keys = key_registration(jwks_file, jwks_url, key_file)

    async def body(services: Services) -> ApiClient:
        async with services.engine.begin() as conn:
            return await registry.set_keys(conn, name, keys.jwks)

    client = _registered(keys, body)
    registered = f"JWK Set URL {jwks_url}" if jwks_url is not None else f"key ids {', '.join(keys.kids)}"
    state = " (the client is disabled)" if client.disabled else ""
    click.echo(f"client {name!r}: keys replaced, now {registered}{state}")


@clients.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """Registered clients: name, client_id, organisation, role, scopes, state (never their keys)."""

    async def body(services: Services) -> list[ApiClient]:
        async with services.engine.connect() as conn:
            return await registry.listing(conn)

    rows = run(body)
    if as_json:
        write_json([_summary(c) for c in rows])
        return
    if not rows:
        err.print("no clients registered")
    for c in rows:
        state = "disabled" if c.disabled else "enabled"
        click.echo(
            f"{c.name:<24} {c.client_id:<34} {c.ods_code:<10} {c.role.value:<10} {c.source or '-':<11} "
            f"{state:<8} {' '.join(sorted(c.scopes))}"
        )


def _summary(c: ApiClient) -> dict[str, object]:
    kids: list[str] = []
    url = client_keys.jwks_url(c.jwks)
    if url is None:
        with contextlib.suppress(assertion.JwksError):
            kids = list(assertion.parse_jwks(c.jwks))
    return {
        "name": c.name,
        "client_id": c.client_id,
        "ods_code": c.ods_code,
        "role": c.role.value,
        "source": c.source,
        "scopes": sorted(c.scopes),
        "key_ids": kids,
        "jwks_url": url,
        "created_at": c.created_at.isoformat(),
        "disabled_at": c.disabled_at.isoformat() if c.disabled_at else None,
    }


@clients.command()
@click.argument("name")
def disable(name: str) -> None:
    """Refuse NAME any new token from now on (tokens already issued run out within minutes)."""

    async def body(services: Services) -> bool:
        async with services.engine.begin() as conn:
            return await registry.disable(conn, name, datetime.now(UTC))

    try:
        changed = run(body)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"client {name!r} " + ("disabled" if changed else "was already disabled"))


@click.command()
@click.option("--client", "name", required=True, help="The client's name (concord clients list).")
@click.option(
    "--scopes", "scopes_text", help="Scopes to put in the token (default: all it is registered for)."
)
def token(name: str, scopes_text: str | None) -> None:
    """Print an access token for a registered client (embedded default only; a development aid).

    For example: curl -H "Authorization: Bearer $(concord token --client demo)" .../fhir/Patient
    """
    settings = Settings()
    if not settings.is_sqlite():
        raise click.ClickException(
            "concord token works on the embedded default (SQLite) only; with CONCORD_DATABASE_URL set, "
            "clients get tokens from POST /token with a signed client assertion (docs/api-auth.md)"
        )

    async def body(services: Services) -> ApiClient | None:
        async with services.engine.connect() as conn:
            return await registry.by_name(conn, name)

    client = run(body)
    if client is None or client.disabled:
        raise click.ClickException(f"no enabled client named {name!r} (concord clients list)")
    scopes = client.scopes
    if scopes_text is not None:
        scopes = frozenset(_scopes(scopes_text))
        refused = sorted(s for s in scopes if not any(covers(g, s) for g in client.scopes))
        if refused:
            raise click.ClickException(f"client {name!r} is not registered for {refused[0]}")
    tokens = AccessTokens(
        settings.resolved_token_secret(), settings.public_url.rstrip("/"), settings.token_seconds
    )
    access_token, _ = tokens.issue(client.principal(scopes), scopes)
    sys.stdout.write(access_token + "\n")
