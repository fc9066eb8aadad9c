"""Registered API clients (SMART Backend Services): add, look up, list, replace keys, disable.

ClientError
 ├── ClientExists     a client of that name is already registered
 └── UnknownClient    no client of that name

A client's row is read on every ``POST /token`` (rare: once per token), so a
disabled client is refused, and a replaced key set used, from the moment the
change commits. ``jwks`` holds the client's keys as ``gateway.api.client_keys``
reads them: a JWK Set, or a JWK Set URL. Nothing here validates either: callers
pass what ``gateway.api.assertion.parse_jwks`` or
``gateway.api.client_keys.url_registration`` accepted.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import RowMapping, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.api.principal import Principal, Role
from gateway.store.schema import api_clients


class ClientError(Exception):
    """A registration change that cannot be made."""


class ClientExists(ClientError):
    pass


class UnknownClient(ClientError):
    pass


@dataclass(frozen=True, slots=True)
class ApiClient:
    client_id: str
    name: str
    ods_code: str
    role: Role
    scopes: frozenset[str]
    source: str | None
    #: A JWK Set, or a JWK Set URL as ``{"jwks_uri": ...}`` (``gateway.api.client_keys``).
    jwks: str
    created_at: datetime
    disabled_at: datetime | None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    def principal(self, scopes: Iterable[str] | None = None) -> Principal:
        """The principal its tokens stand for, with ``scopes`` (default: every registered scope)."""
        granted = frozenset(scopes) if scopes is not None else self.scopes
        return Principal(self.client_id, self.name, self.ods_code, self.role, granted, self.source)


def new_client_id() -> str:
    """A random, URL-safe client id (32 characters, 192 bits)."""
    return secrets.token_urlsafe(24)


async def add(
    conn: AsyncConnection,
    *,
    name: str,
    ods_code: str,
    role: Role,
    scopes: Iterable[str],
    source: str | None,
    jwks: str,
    when: datetime,
) -> ApiClient:
    """Register a client; ``ClientExists`` if the name is taken (the transaction is then unusable)."""
    client = ApiClient(
        new_client_id(), name, ods_code, role, frozenset(scopes), source, jwks, when, disabled_at=None
    )
    try:
        await conn.execute(
            api_clients.insert().values(
                client_id=client.client_id,
                name=name,
                ods_code=ods_code,
                role=role.value,
                scopes=" ".join(sorted(client.scopes)),
                source=source,
                jwks=jwks,
                created_at=when,
            )
        )
    except IntegrityError:
        raise ClientExists(f"a client named {name!r} is already registered") from None
    return client


async def get(conn: AsyncConnection, client_id: str) -> ApiClient | None:
    row = (await conn.execute(select(api_clients).where(api_clients.c.client_id == client_id))).first()
    return _client(row._mapping) if row else None


async def by_name(conn: AsyncConnection, name: str) -> ApiClient | None:
    row = (await conn.execute(select(api_clients).where(api_clients.c.name == name))).first()
    return _client(row._mapping) if row else None


async def listing(conn: AsyncConnection) -> list[ApiClient]:
    rows = await conn.execute(select(api_clients).order_by(api_clients.c.name))
    return [_client(r._mapping) for r in rows]


async def disable(conn: AsyncConnection, name: str, when: datetime) -> bool:
    """Disable a client by name: True if it was enabled, False if already disabled; else ``UnknownClient``."""
    result = await conn.execute(
        update(api_clients)
        .where(api_clients.c.name == name, api_clients.c.disabled_at.is_(None))
        .values(disabled_at=when)
    )
    if result.rowcount:
        return True
    if await by_name(conn, name) is None:
        raise UnknownClient(f"no client named {name!r}")
    return False


async def set_keys(conn: AsyncConnection, name: str, jwks: str) -> ApiClient:
    """Replace the keys of the client ``name`` (its client_id, scopes and state stay); ``UnknownClient``
    if there is none. ``/token`` uses the new keys from the moment the transaction commits."""
    result = await conn.execute(update(api_clients).where(api_clients.c.name == name).values(jwks=jwks))
    client = await by_name(conn, name) if result.rowcount else None
    if client is None:
        raise UnknownClient(f"no client named {name!r}")
    return client


def _client(m: RowMapping) -> ApiClient:
    return ApiClient(
        client_id=m["client_id"],
        name=m["name"],
        ods_code=m["ods_code"],
        role=Role(m["role"]),
        scopes=frozenset(m["scopes"].split()),
        source=m["source"],
        jwks=m["jwks"],
        created_at=_aware(m["created_at"]),
        disabled_at=_aware(m["disabled_at"]) if m["disabled_at"] is not None else None,
    )


def _aware(when: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time written here is UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
