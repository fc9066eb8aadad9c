"""Several gateway processes, one register: once an opt-out returns, no process serves that person.

Each test runs two real worker processes (tests/integration/consent_worker.py)
on the same store. Worker B decides (and caches) a permit; worker A records an
opt-out; B's very next decision must be a deny, whatever happened to Redis.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from reachable import REDIS_URL, need_service

from gateway.settings import Settings

WORKER = Path(__file__).with_name("consent_worker.py")
PERSON = "9990000018"
OTHER = "9990000026"


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )

    def ask(self, timeout: float = 30.0, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(command).decode() + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"worker did not answer {command['op']} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    def verdict(self, nhs: str, purpose: str = "direct-care") -> str:
        return str(self.ask(op="decide", nhs=nhs, purpose=purpose)["verdict"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    values = {
        "CONCORD_DATA_DIR": str(settings.data_dir),
        "CONCORD_ID_KEY": settings.id_key or "",
        "CONCORD_DATABASE_URL": settings.database_url or "",
        "CONCORD_DATABASE_SCHEMA": settings.database_schema or "",
        "CONCORD_AUDIT_SIGNING_KEY_FILE": str(settings.audit_signing_key_file or ""),
        "CONCORD_REDIS_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
        "CONCORD_CONSENT_CACHE_SECONDS": "1",
    }
    env.update({k: v for k, v in values.items() if v})
    env.update(extra)
    return env


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.close()


def start(workers: list[Worker], env: dict[str, str]) -> Worker:
    worker = Worker(env)
    workers.append(worker)
    # The first answer proves start-up (and migration) finished before the next worker starts.
    assert worker.ask(op="store-reads")["reads"] == 0
    return worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis server of this test's own, so it can be killed without touching the shared one."""
    need_service("Redis", "127.0.0.1", 6379)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", proc
    proc.kill()
    proc.wait()


def opt_out_is_honoured_at_once(a: Worker, b: Worker) -> None:
    assert b.verdict(PERSON) == "permit"
    assert b.verdict(PERSON) == "permit"
    assert a.ask(op="opt-out", nhs=PERSON)["changed"] is True
    assert b.verdict(PERSON) == "deny"
    assert b.verdict(OTHER) == "permit"
    assert a.ask(op="withdraw", nhs=PERSON)["withdrawn"] == 1
    assert b.verdict(PERSON) == "permit"


def test_embedded_default_two_processes_share_the_fence(
    sqlite_settings: Settings, workers: list[Worker]
) -> None:
    env = environment(sqlite_settings)
    a, b = start(workers, env), start(workers, env)
    b.verdict(PERSON)
    b.verdict(PERSON)
    assert b.ask(op="store-reads")["reads"] == 1, "the second decision should come from B's cache"
    opt_out_is_honoured_at_once(a, b)


def test_redis_two_processes_opt_out_via_one_denied_by_the_other(
    postgres_settings: Settings, workers: list[Worker]
) -> None:
    need_service("Redis", "127.0.0.1", 6379)
    env = environment(postgres_settings, CONCORD_REDIS_URL=REDIS_URL)
    a, b = start(workers, env), start(workers, env)
    b.verdict(PERSON)
    b.verdict(PERSON)
    assert b.ask(op="store-reads")["reads"] == 1, "the second decision should come from Redis"
    opt_out_is_honoured_at_once(a, b)


def test_redis_killed_mid_test_never_turns_into_a_permit(
    postgres_settings: Settings, workers: list[Worker], private_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = private_redis
    env = environment(postgres_settings, CONCORD_REDIS_URL=url)
    a, b = start(workers, env), start(workers, env)
    assert b.verdict(PERSON) == "permit"
    assert b.verdict(PERSON) == "permit"  # cached in Redis
    server.kill()
    server.wait()
    assert b.verdict(PERSON) == "permit", "with Redis gone the store still answers"
    assert a.ask(op="opt-out", nhs=PERSON)["changed"] is True
    assert b.verdict(PERSON) == "deny"
    assert b.verdict(PERSON, "research") == "deny"
    assert b.verdict(OTHER) == "permit"


def test_a_lost_invalidation_still_never_permits(postgres_settings: Settings, workers: list[Worker]) -> None:
    """A's Redis is unreachable, so its invalidation never arrives; B keeps the real Redis and its cache."""
    need_service("Redis", "127.0.0.1", 6379)
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    # Long enough that B's cached permit is still alive when A returns, unless A waits it out.
    life = {"CONCORD_REDIS_PREFIX": prefix, "CONCORD_CONSENT_CACHE_SECONDS": "5"}
    lost = f"redis://127.0.0.1:{free_port()}/0"
    a = start(workers, environment(postgres_settings, CONCORD_REDIS_URL=lost, **life))
    b = start(workers, environment(postgres_settings, CONCORD_REDIS_URL=REDIS_URL, **life))
    assert b.verdict(PERSON) == "permit"
    assert b.verdict(PERSON) == "permit"
    assert b.ask(op="store-reads")["reads"] == 1, "B's permit is cached in Redis"
    assert a.ask(op="opt-out", nhs=PERSON)["changed"] is True
    assert b.verdict(PERSON) == "deny"
