"""``concord serve`` as an operator runs it: a subprocess on a free port, stopped by SIGTERM.

Also a real HTTP server (uvicorn in process, both HTTP parsers) answering refused request
bodies: a client still sending must be able to read the 413.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request, Response

from gateway.api.app import create_app
from gateway.api.metrics import FLUSH_SECONDS
from gateway.audit.keys import write_private_key
from gateway.settings import Settings

pytestmark = pytest.mark.slow

NHS_NUMBER = "9990000018"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCORD_", "PROMETHEUS_"))}
    env["CONCORD_DATA_DIR"] = str(data_dir)
    return env


def wait_ready(process: subprocess.Popen[bytes], base: str, stderr: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"concord serve exited {process.returncode}:\n{stderr.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"concord serve was not ready in {seconds} s:\n{stderr.read_text()}")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_answers_and_stops_cleanly_on_sigterm(tmp_path: Path, workers: int) -> None:
    env = environment(tmp_path / "data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            wait_ready(process, base, err)
            health = httpx.get(f"{base}/healthz", headers={"X-Request-ID": "e2e-1"})
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            assert health.headers["x-request-id"] == "e2e-1"
            assert "server" not in health.headers
            ready = httpx.get(f"{base}/readyz").json()
            assert ready == {"status": "ok", "checks": {"store": "ok"}}
            httpx.get(f"{base}/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS_NUMBER}")
            for _ in range(4):  # with two workers, both answer some
                httpx.get(f"{base}/healthz")
            # A worker adds its requests to the shared values within FLUSH_SECONDS (the one answering
            # the scrape at once): the sum over both workers is exact once that has passed.
            time.sleep(FLUSH_SECONDS + 0.5)
            metrics = httpx.get(f"{base}/metrics")
            assert metrics.status_code == 200
            assert (
                'concord_http_requests_total{method="GET",route="/healthz",status="2xx"} 5.0' in metrics.text
            )
            assert "concord_http_requests_in_flight" in metrics.text
            assert NHS_NUMBER not in metrics.text
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    log = err.read_text()
    assert code == 0, log
    assert NHS_NUMBER not in log and "identifier=" not in log
    lines = [line for line in log.splitlines() if line.strip()]
    if workers > 1:
        assert lines[0].startswith("note: 2 workers share the SQLite store")
        lines = lines[1:]
    records = [json.loads(line) for line in lines]  # every log line is JSON
    access = [r for r in records if "request_id" in r]
    assert {r["route"] for r in access} >= {"/healthz", "/readyz", "/metrics"}
    assert any(r.get("message") == "Application shutdown complete." for r in records)

    verified = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stderr
    result = json.loads(verified.stdout)
    assert result["intact"] is True
    assert result["unsigned_entries"] == 0


def test_serve_outside_the_embedded_default_requires_a_shared_id_key(tmp_path: Path) -> None:
    """Processes that each generated their own id key would give one person different ids."""
    env = environment(tmp_path / "data")
    env["CONCORD_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    env["CONCORD_TOKEN_SECRET"] = "x" * 40
    ran = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2  # click's usage error: a setting is missing
    assert "CONCORD_ID_KEY or CONCORD_ID_KEY_FILE must be set" in ran.stderr
    assert not (tmp_path / "data" / "id.key").exists()


def test_serve_refuses_a_store_it_cannot_open(tmp_path: Path) -> None:
    env = environment(tmp_path / "data")
    env["CONCORD_DATABASE_URL"] = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/none"
    env["CONCORD_TOKEN_SECRET"] = "x" * 40
    env["CONCORD_ID_KEY"] = "y" * 32
    key = tmp_path / "signing.key"
    write_private_key(key, Ed25519PrivateKey.generate())
    env["CONCORD_AUDIT_SIGNING_KEY_FILE"] = str(key)
    ran = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2
    assert "cannot open the store" in ran.stderr
    assert "hunter2" not in ran.stderr


def echo_app(data_dir: Path, limit: int) -> FastAPI:
    app = create_app(Settings(data_dir=data_dir, max_body_bytes=limit))

    async def echo(request: Request) -> Response:
        return Response(str(len(await request.body())).encode())

    app.add_api_route("/echo", echo, methods=["POST"])
    return app


async def pieces(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * size


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_a_real_server_lets_a_refused_client_read_its_413(tmp_path: Path, parser: str) -> None:
    limit = 100_000
    port = free_port()
    app = echo_app(tmp_path / "data", limit)
    config = uvicorn.Config(app, port=port, http=parser, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
            assert not serving.done()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            # Streamed past the limit: the rest is discarded and the connection stays usable.
            refused = await client.post("/echo", content=pieces(50, 10_000))
            assert refused.status_code == 413 and refused.json()["issue"][0]["code"] == "too-long"
            assert (await client.post("/echo", content=b"abc")).text == "3"
            # A gzip bomb: refused at the limit of the inflated size.
            bomb = gzip.compress(b"\0" * (100 * limit))
            refused = await client.post("/echo", content=bomb, headers={"Content-Encoding": "gzip"})
            assert refused.status_code == 413
            # Declared too long: answered before anything is read.
            refused = await client.post("/echo", content=b"x" * (limit + 1))
            assert refused.status_code == 413
            assert (await client.post("/echo", content=pieces(10, 10_000))).text == str(limit)
    finally:
        server.should_exit = True
        await serving
