"""The one typed settings object. Nothing else in concord reads the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings from ``CONCORD_*`` environment variables.

    ``data_dir`` is where the embedded default keeps its files (SQLite store,
    the id key, later the log's signing key). ``database_url`` is any SQLAlchemy
    async URL; unset, it is a SQLite file in ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="CONCORD_", extra="ignore")

    data_dir: Path = Path(".concord")
    database_url: str | None = None
    #: PostgreSQL schema to use (search_path); unset: the server's default (public).
    database_schema: str | None = None
    #: Connections each process keeps open to the store, and how many more it may open in a burst
    #: (PostgreSQL's max_connections must cover every process's sum).
    database_pool_size: int = Field(default=16, ge=1)
    database_max_overflow: int = Field(default=4, ge=0)
    #: PostgreSQL: connections a serving process keeps for the API's searches, beside its pool
    #: (``store.hot_reads``: prepared statements on asyncpg, no SQLAlchemy per request).
    search_pool_size: int = Field(default=4, ge=1)
    redis_url: str | None = None
    #: Prefix of every Redis key concord writes: deployments (or test runs) sharing a Redis keep apart.
    redis_prefix: str = "concord:"
    #: The regional HIE's FHIR base URL. Unset: publishing is off.
    hie_url: str | None = None
    #: The HIE's ODS code (the recipient named in the log for every publication).
    hie_ods: str = "HIE"
    #: How concord authenticates to the HIE: none (a local stub), oauth2 (client credentials with a
    #: signed JWT assertion, as SMART Backend Services) or mtls (a client certificate).
    hie_auth: Literal["none", "oauth2", "mtls"] = "none"
    hie_token_url: str | None = None
    hie_client_id: str | None = None
    #: oauth2: the private key (PEM) that signs assertions; mtls: the client certificate's key.
    hie_key_file: Path | None = None
    hie_key_id: str | None = None
    hie_cert_file: Path | None = None
    hie_ca_file: Path | None = None
    #: Requests to the HIE in flight at once per publisher process (a claim holds up to 16 times as
    #: many people).
    publish_concurrency: int = Field(default=8, ge=1, le=256)
    #: How long a publisher holds a claimed person; a crashed publisher's people come back after it.
    publish_lease_seconds: float = Field(default=30.0, gt=0)
    #: How often an idle publisher looks for work (Redis, when configured, wakes it sooner).
    publish_poll_seconds: float = Field(default=1.0, gt=0)
    #: Backoff between retries: first delay and cap, in seconds (exponential with full jitter).
    publish_backoff_seconds: float = Field(default=0.5, gt=0)
    publish_backoff_cap_seconds: float = Field(default=300.0, gt=0)
    #: HIE timeouts: connect, and each socket read (a read that hangs after the headers).
    hie_connect_timeout: float = Field(default=5.0, gt=0)
    hie_read_timeout: float = Field(default=30.0, gt=0)
    #: Secret that keys resource ids (HMAC), so an id in a URL does not reveal an NHS number.
    #: Unset: generated once in ``data_dir`` (embedded default only). Every process must share one
    #: value, and it never changes (ids are derived from it).
    id_key: str | None = Field(default=None, repr=False)
    #: A file holding the id key instead (a mounted secret such as ``/run/secrets/...``).
    id_key_file: Path | None = None
    #: Records per store transaction during ingest.
    ingest_batch_size: int = 500
    #: Worker processes that validate the next batches while the current one is written, used by
    #: `concord ingest` for inputs over 1 MiB. Unset: one per core, at most 4. 0: one process.
    ingest_workers: int | None = Field(default=None, ge=0)
    #: The ODS code of the organisation running this gateway: operators' command-line actions are its.
    organisation_ods: str = "CONCORD"
    #: The data-sharing agreement every opt-out is recorded against (Consent.policy.uri).
    sharing_policy_uri: str = "https://fhir.concord.health/policy/borough-data-sharing-agreement"
    #: Longest life of a cached consent decision, in seconds. A consent change is honoured at once
    #: regardless (docs/consent.md); this bounds the wait when Redis cannot be told of a change.
    consent_cache_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: The log's Ed25519 private key (PEM). Unset: generated in ``data_dir`` (embedded default only).
    audit_signing_key_file: Path | None = None
    #: Sign a checkpoint after this many unsigned entries (also on an interval and at shutdown).
    audit_checkpoint_entries: int = Field(default=1000, ge=1)
    #: Sign a checkpoint this often while serving, in seconds, if any entry is unsigned.
    audit_checkpoint_seconds: float = Field(default=60.0, gt=0)
    #: The API's public base URL, as clients reach it (the token URL, the ``aud`` of client
    #: assertions, is this plus ``/token``; FHIR base is this plus ``/fhir``).
    public_url: str = "http://127.0.0.1:8080"
    #: Secret that signs this gateway's own access tokens (HMAC-SHA256). Unset: generated in
    #: ``data_dir`` (embedded default only). Every API process must share one value.
    token_secret: str | None = Field(default=None, repr=False)
    #: A file holding the token secret instead (a mounted secret).
    token_secret_file: Path | None = None
    #: Life of an access token, in seconds (SMART Backend Services: at most 300).
    token_seconds: int = Field(default=300, gt=0, le=300)
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: Largest page a search returns (``_count`` above it is capped); and the default page.
    max_page_size: int = Field(default=100, gt=0)
    default_page_size: int = Field(default=20, gt=0)
    #: Requests a second each client may make, refilling a bucket of ``rate_limit_burst`` (shared
    #: through Redis when configured, else per process). 0: no rate limit.
    rate_limit_per_second: float = Field(default=50.0, ge=0)
    #: Requests a client may make at once after a quiet spell (the bucket's size).
    rate_limit_burst: int = Field(default=100, ge=1)

    def resolved_ingest_workers(self) -> int:
        if self.ingest_workers is not None:
            return self.ingest_workers
        return min(4, os.cpu_count() or 1)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'concord.db').resolve()}"

    def is_sqlite(self) -> bool:
        return self.resolved_database_url().startswith("sqlite")

    def sqlite_path(self) -> Path | None:
        url = self.resolved_database_url()
        if not url.startswith("sqlite") or ":memory:" in url:
            return None
        return Path(url.split(":///", 1)[1])

    def resolved_id_key(self) -> bytes:
        given = _given_secret(self.id_key, self.id_key_file, "CONCORD_ID_KEY")
        if given is not None:
            return given
        if not self.is_sqlite():
            # A key generated per data dir would differ between processes (containers), and so
            # would every resource id they derive from the same NHS number.
            raise ValueError("CONCORD_ID_KEY or CONCORD_ID_KEY_FILE must be set outside the embedded default")
        return self._generated_secret("id.key")

    def resolved_token_secret(self) -> bytes:
        given = _given_secret(self.token_secret, self.token_secret_file, "CONCORD_TOKEN_SECRET")
        if given is not None:
            return given
        if not self.is_sqlite():
            raise ValueError(
                "CONCORD_TOKEN_SECRET or CONCORD_TOKEN_SECRET_FILE must be set outside the embedded default"
            )
        return self._generated_secret("token.key")

    def _generated_secret(self, name: str) -> bytes:
        """A random secret made once in ``data_dir`` (the embedded default's convenience)."""
        path = self.data_dir / name
        if not path.exists():
            import secrets

            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()


def _given_secret(value: str | None, file: Path | None, name: str) -> bytes | None:
    """A secret set as a value (``NAME``) or as a file (``NAME_FILE``, surrounding whitespace dropped).

    The file is read on each call (it is small), so nothing but the path is kept in the settings.
    """
    if file is None:
        return value.encode() if value else None
    if value:
        raise ValueError(f"set {name} or {name}_FILE, not both")
    try:
        text = file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise ValueError(f"cannot read {name}_FILE ({file})") from None
    if not text:
        raise ValueError(f"{name}_FILE ({file}) is empty")
    return text.encode()


def normalise_database_url(url: str) -> str:
    """Accept the URLs people paste (postgresql://, sqlite:///) and pick the async drivers."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    return url
