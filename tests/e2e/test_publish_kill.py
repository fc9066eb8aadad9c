"""`kill -9` of the publisher mid-batch, then a restart: every view arrives, nothing is lost.

Real processes: `concord hie-stub` answering slowly (so the kill lands while
deliveries are in flight), `concord publish` killed with SIGKILL, then
`concord publish --until-idle` run again with a short lease.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

PEOPLE = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(data: Path, hie: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env.update(
        {
            "CONCORD_DATA_DIR": str(data),
            "CONCORD_HIE_URL": hie,
            "CONCORD_PUBLISH_LEASE_SECONDS": "2",
            "CONCORD_PUBLISH_BACKOFF_SECONDS": "0.05",
            "CONCORD_PUBLISH_BACKOFF_CAP_SECONDS": "0.5",
            "CONCORD_PUBLISH_POLL_SECONDS": "0.1",
            "CONCORD_HIE_READ_TIMEOUT": "5",
        }
    )
    return env


def concord(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_for(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the HIE stub did not start")


def test_kill_9_mid_batch_then_restart_delivers_everyone_once(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "hie-stub",
            "--port",
            str(port),
            "--delay-rate",
            "1.0",
            "--delay-seconds",
            "0.3",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"{base}/_stub/state")
        env = env_for(tmp_path / "data", f"{base}/fhir")
        extracts = tmp_path / "extracts"
        assert (
            concord(env, "synth", "--people", str(PEOPLE), "--seed", "3", "--out", str(extracts)).returncode
            == 0
        )
        ingested = concord(env, "ingest", "--source", "gp", str(extracts / "gp.csv"))
        assert ingested.returncode in (0, 1), ingested.stderr

        publisher = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "publish"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and get(f"{base}/_stub/state")["requests"] < 3:
            time.sleep(0.05)
        publisher.send_signal(signal.SIGKILL)
        publisher.wait()
        held_at_kill = get(f"{base}/_stub/state")

        post(f"{base}/_stub/faults", {})
        restarted = concord(env, "publish", "--until-idle")
        assert restarted.returncode == 0, restarted.stderr
        status = json.loads(concord(env, "publish", "status", "--json").stdout)
        assert status["outbox"].get("pending", 0) == 0 and status["outbox"].get("claimed", 0) == 0
        assert status["dead_letters_open"] == 0

        state = get(f"{base}/_stub/state")
        shareable = status["people_at_hie"].get("published", 0)
        assert state["counts"]["Patient"] == shareable, "each shareable person's Patient is there once"
        assert shareable > held_at_kill["counts"].get("Patient", 0), (
            "the restart delivered what the kill cut off"
        )
        patients = get(f"{base}/fhir/Patient")
        numbers = [
            i["value"]
            for e in patients.get("entry", [])
            for i in e["resource"].get("identifier", [])
            if i.get("system") == "https://fhir.nhs.uk/Id/nhs-number"
        ]
        assert len(numbers) == len(set(numbers)), "no person twice at the HIE"
        verified = concord(env, "audit", "verify")
        assert verified.returncode == 0, verified.stderr
    finally:
        stub.terminate()
        stub.wait(timeout=10)
