"""Real ``concord`` processes for the end-to-end tests and ``bench/scale.py``.

Small helpers to run the command line (``concord``), start long-running commands
(``serve``, ``publish``, ``hie-stub``) as child processes and stop them with SIGTERM,
and ``region``: a region's topology on the PostgreSQL and Redis services (its own
schema and Redis prefix, removed afterwards), with N API processes, M publishers
and the HIE stub. ``end_state`` audits what the HIE stub holds against the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from consent.decide import decide
from consent.model import Authority, Facts, OptOut, OptOutKind, Purpose, Requester, RequesterKind
from consent.resource import consent_resource
from gateway.api.assertion import ASSERTION_TYPE
from gateway.audit.keys import write_private_key
from gateway.hie_stub.store import content_digest
from gateway.publish.oauth import client_assertion, key_id_for
from gateway.settings import Settings
from gateway.store.consents import people_with_opt_outs
from gateway.store.database import create_engine
from gateway.store.schema import dead_letters, outbox, resources

NHS = "https://fhir.nhs.uk/Id/nhs-number"
ID_KEY = "0123456789abcdef0123456789abcdef"
TOKEN_SECRET = "region-token-secret-0123456789abcdef0123456789"
#: Resource types the publisher sends (a person's shared view).
PUBLISHED = ("Patient", "CarePlan", "Provenance")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any CONCORD_* / PROMETHEUS_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCORD_", "PROMETHEUS_"))}
    env.update(settings)
    return env


def concord(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one ``concord`` command to its end."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start a long-running ``concord`` command; its stdout and stderr go to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop(process: subprocess.Popen[bytes], seconds: float = 60, signalled: bool = False) -> int:
    """SIGTERM (once: a second one cuts a graceful shutdown short), then wait (SIGKILL after
    ``seconds``); the exit code."""
    if not signalled and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post(url: str, body: Any, timeout: float = 10) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(
    url: str, seconds: float = 60, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Until ``url`` answers 2xx; fails at once if ``process`` exits, with the tail of its ``log``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"the process behind {url} exited {process.returncode}:\n{tail}")
        try:
            get(url, timeout=2)
            return
        except (OSError, urllib.error.HTTPError, ValueError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def opt_out(nhs_number: str) -> dict[str, Any]:
    """A local shared-care-record opt-out as a FHIR Consent, in the form the gateway itself renders one.

    The server keeps only what docs/api-write.md lists (who, which kind, the authority); the id,
    dates, organisation and policy it sets itself.
    """
    now = datetime.now(UTC)
    recorded = OptOut("client-side", nhs_number, OptOutKind.LOCAL, Authority.PORTAL, "epr", "RAT", now, "api")
    return consent_resource(recorded, "unknown", "https://example.org/dsa", 1, now.isoformat())


@dataclass
class Client:
    """A registered API client and its private key (for client assertions at /token)."""

    name: str
    client_id: str
    key_pem: bytes
    scopes: str


@dataclass
class Region:
    """The processes of one region and the settings they share."""

    root: Path
    settings: Settings
    env: dict[str, str]
    stub: str
    apis: list[str]
    public_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def hie(self) -> str:
        return f"{self.stub}/fhir"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return concord(self.env, *args, timeout=timeout)

    def add_client(self, name: str, ods: str, role: str, scopes: str, source: str | None = None) -> Client:
        """``concord clients add`` with a generated key."""
        key = self.root / f"{name}.key"
        args = ["clients", "add", "--name", name, "--ods-code", ods, "--role", role, "--scopes", scopes]
        args += ["--source", source] if source else []
        done = self.cli(*args, "--generate-key", str(key))
        assert done.returncode == 0, done.stderr
        return Client(name, done.stdout.strip(), key.read_bytes(), scopes)

    def token(self, client: Client, api: str | None = None) -> str:
        """An access token from ``POST /token`` with a signed client assertion (SMART Backend Services)."""
        key_id = key_id_for(client.key_pem)
        signed = client_assertion(
            client.client_id, f"{self.public_url}/token", client.key_pem, key_id, "ES384"
        )
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
        form |= {"client_assertion": signed, "scope": client.scopes}
        answer = httpx.post(f"{api or self.apis[0]}/token", data=form, timeout=30)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.root / "logs" / f"{name}.log").read_text()[-3000:]
                raise AssertionError(f"{name} exited {process.returncode}:\n{tail}")

    def engine(self) -> AsyncEngine:
        return create_engine(self.settings)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM to every process at once, then wait for each; their exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return {name: stop(process, signalled=True) for name, process in self.processes.items()}


@asynccontextmanager
async def region(
    root: Path,
    *,
    postgres_url: str,
    redis_url: str,
    apis: int = 2,
    publishers: int = 2,
    stub_options: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    api_workers: int = 1,
) -> AsyncIterator[Region]:
    """A fresh PostgreSQL schema and Redis prefix; the HIE stub, ``apis`` x ``concord serve``, then
    ``publishers`` x ``concord publish``. Everything is stopped, and the schema and keys removed, after."""
    tag = uuid.uuid4().hex[:12]
    schema = f"region_{tag}"
    prefix = f"concord-region-{tag}:"
    root.mkdir(parents=True, exist_ok=True)
    admin = create_async_engine(postgres_url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    key = root / "audit-signing.key"
    write_private_key(key, Ed25519PrivateKey.generate())
    # The store as the processes see it (for the checks that read it directly).
    settings = Settings(
        data_dir=root / "data", database_url=postgres_url, database_schema=schema, id_key=ID_KEY
    )
    ports = [free_port() for _ in range(apis)]
    public_url = f"http://127.0.0.1:{ports[0]}"  # as behind a load balancer: one URL for every worker
    shared = {
        "DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": postgres_url,
        "DATABASE_SCHEMA": schema,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "AUDIT_SIGNING_KEY_FILE": str(key),
        "ID_KEY": ID_KEY,
        "TOKEN_SECRET": TOKEN_SECRET,  # every API process must share it (and the id key)
        "PUBLIC_URL": public_url,
        "RATE_LIMIT_PER_SECOND": "0",  # the load is the point here, not the limiter
    }
    env = environment(**{f"CONCORD_{k}": v for k, v in shared.items()}, **(extra_env or {}))
    stub_port = free_port()
    stub = f"http://127.0.0.1:{stub_port}"
    topology = Region(root, settings, env, stub, [f"http://127.0.0.1:{p}" for p in ports], public_url)
    logs = root / "logs"
    try:
        topology.processes["hie-stub"] = spawn(
            env, logs / "hie-stub.log", "hie-stub", "--port", str(stub_port), *stub_options
        )
        migrated = topology.cli("publish", "status", "--json")  # migrations once, before anyone starts
        assert migrated.returncode == 0, migrated.stderr
        for n, port in enumerate(ports):
            topology.processes[f"api-{n}"] = spawn(
                env,
                logs / f"api-{n}.log",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(api_workers),
                "--log-level",
                "warning",
            )
        publisher_env = {**env, "CONCORD_HIE_URL": topology.hie}
        for n in range(publishers):
            topology.processes[f"publisher-{n}"] = spawn(
                publisher_env, logs / f"publisher-{n}.log", "publish"
            )
        wait_for(f"{stub}/_stub/state", process=topology.processes["hie-stub"], log=logs / "hie-stub.log")
        for n, base in enumerate(topology.apis):
            wait_for(f"{base}/readyz", process=topology.processes[f"api-{n}"], log=logs / f"api-{n}.log")
        yield topology
    finally:
        topology.stop_all()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await admin.dispose()
        await _forget_redis(redis_url, prefix)


async def _forget_redis(redis_url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


async def outbox_open(engine: AsyncEngine) -> int:
    """Outbox rows still to deliver (pending, waiting to retry, or claimed)."""
    async with engine.connect() as conn:
        query = select(func.count()).select_from(outbox).where(outbox.c.status.in_(("pending", "claimed")))
        return int((await conn.execute(query)).scalar_one())


async def wait_drained(region: Region, engine: AsyncEngine, seconds: float) -> float:
    """Until the publishers' outbox is empty; the seconds it took."""
    started = time.monotonic()
    while True:
        region.check_running()
        if await outbox_open(engine) == 0:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"the outbox still holds {await outbox_open(engine)} rows after {seconds} s")
        await asyncio.sleep(0.25)


@dataclass
class EndState:
    """What the HIE holds against what the store says it should."""

    people: int = 0
    shareable: int = 0
    opted_out: int = 0
    at_hie: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)


async def end_state(region: Region, engine: AsyncEngine, hie_ods: str = "HIE") -> EndState:
    """Every shareable person at the HIE exactly once at the latest content; nobody opted out there.

    Shareable is decided by the consent rules themselves (``consent.decide``: direct care, the HIE
    as recipient) over the register as stored. Content is compared by digest
    (``hie_stub.store.content_digest``): the HIE's come in one request per type, the store's are
    computed person by person from a streamed read, so a million people fit in memory. Problems
    name resources by type and id only (never an NHS number).
    """
    held: dict[str, dict[str, str]] = {}
    patients_at_hie: dict[str, list[str]] = {}
    async with httpx.AsyncClient(timeout=600) as client:
        for rtype in PUBLISHED:
            answer = await client.get(f"{region.stub}/_stub/digests/{rtype}")
            answer.raise_for_status()
            held[rtype] = {}
            for rid, digest, identifiers in orjson.loads(answer.content):
                held[rtype][rid] = digest
                for token in identifiers if rtype == "Patient" else ():
                    system, _, value = token.partition("|")
                    if system == NHS:
                        patients_at_hie.setdefault(value, []).append(rid)
    state = EndState(at_hie={rtype: len(found) for rtype, found in held.items()})
    hie = Requester(RequesterKind.HIE, hie_ods, "publisher")
    expected: set[tuple[str, str]] = set()

    def check(number: str, entries: list[tuple[str, str, str]], facts: Facts) -> None:
        state.people += 1
        found = patients_at_hie.get(number, [])
        if not decide(facts, number, Purpose.DIRECT_CARE.value, hie).permitted:
            state.opted_out += 1
            if found:
                state.problems.append(f"an opted-out person's Patient is at the HIE ({found[0]})")
            for rtype, rid, _ in entries:
                if rid in held[rtype]:
                    state.problems.append(f"an opted-out person's {rtype}/{rid} is at the HIE")
            return
        state.shareable += 1
        expected.update((rtype, rid) for rtype, rid, _ in entries)
        expected.update(("Patient", rid) for rid in found)
        if len(found) != 1:
            state.problems.append(f"a shareable person's Patient is at the HIE {len(found)} times")
            return
        for rtype, rid, digest in entries:
            at_hie = held[rtype].get(found[0] if rtype == "Patient" else rid)
            if at_hie is None:
                state.problems.append(f"{rtype}/{rid} is not at the HIE")
            elif at_hie != digest:
                state.problems.append(f"{rtype}/{rid} at the HIE is not the latest version")

    async with engine.connect() as conn:
        facts = await people_with_opt_outs(conn)
        letters = (
            await conn.execute(
                select(func.count()).select_from(dead_letters).where(dead_letters.c.resolved_at.is_(None))
            )
        ).scalar_one()
        state.dead_letters = int(letters)
        rows = await conn.stream(
            select(resources.c.nhs_number, resources.c.resource_type, resources.c.id, resources.c.content)
            .where(resources.c.resource_type.in_(PUBLISHED), resources.c.nhs_number.is_not(None))
            .order_by(resources.c.nhs_number)
            .execution_options(yield_per=5000)
        )
        person: str | None = None
        entries: list[tuple[str, str, str]] = []
        async for number, rtype, rid, content in rows:
            if number != person:
                if person is not None:
                    check(person, entries, facts.get(person, Facts(person)))
                person, entries = number, []
            entries.append((rtype, rid, content_digest(orjson.loads(content))))
        if person is not None:
            check(person, entries, facts.get(person, Facts(person)))
    extra = [(rtype, rid) for rtype, found in held.items() for rid in found if (rtype, rid) not in expected]
    state.problems.extend(f"{rtype}/{rid} is at the HIE but in no shareable view" for rtype, rid in extra)
    if state.dead_letters:
        state.problems.append(f"{state.dead_letters} open dead letters")
    return state
