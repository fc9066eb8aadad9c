"""`concord serve` runs the publisher beside the API when CONCORD_HIE_URL is set, and stops it with itself.

Real processes: `concord hie-stub`, then `concord serve` over a store holding a few people. The
publisher is a child of `serve` (found through /proc); it delivers everyone, and it is gone once
`serve` has exited on SIGTERM. With `--no-publish` there is no such child.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from topology import concord, environment, free_port, get, spawn, stop, wait_for

PEOPLE = 12

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="children are found through /proc")


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of ``pid``'s living children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(entry.name), cmdline))
    return found


def publishers_of(pid: int) -> list[int]:
    return [child for child, cmdline in children(pid) if "gateway.cli publish" in cmdline]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def stub_and_store(tmp_path: Path) -> tuple[dict[str, str], str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(
        CONCORD_DATA_DIR=str(tmp_path / "data"),
        CONCORD_HIE_URL=f"{base}/fhir",
        CONCORD_PUBLISH_POLL_SECONDS="0.2",
    )
    extracts = tmp_path / "extracts"
    assert (
        concord(env, "synth", "--people", str(PEOPLE), "--seed", "5", "--out", str(extracts)).returncode == 0
    )
    assert concord(env, "ingest", "--source", "gp", str(extracts / "gp.csv")).returncode in (0, 1)
    return env, base


def serve(env: dict[str, str], log: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = spawn(env, log, "serve", "--port", str(port), *options)
    wait_for(f"http://127.0.0.1:{port}/readyz", process=process, log=log)
    return process, f"http://127.0.0.1:{port}"


def test_serve_publishes_and_stops_its_publisher_with_it(
    stub_and_store: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, base = stub_and_store
    stub = spawn(env, tmp_path / "stub.log", "hie-stub", "--port", base.rsplit(":", 1)[1])
    try:
        wait_for(f"{base}/_stub/state", process=stub, log=tmp_path / "stub.log")
        status = json.loads(concord(env, "publish", "status", "--json").stdout)
        assert status["outbox"].get("pending", 0) > 0, "nothing delivered before serve starts"
        process, _ = serve(env, tmp_path / "serve.log")
        try:
            [publisher] = publishers_of(process.pid)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = json.loads(concord(env, "publish", "status", "--json").stdout)
                if status["outbox"].get("pending", 0) == 0 and status["outbox"].get("claimed", 0) == 0:
                    break
                time.sleep(0.2)
            published = status["people_at_hie"].get("published", 0)
            assert published > 0
            assert get(f"{base}/_stub/state")["counts"]["Patient"] == published
        finally:
            code = stop(process)
        assert code == 0, (tmp_path / "serve.log").read_text()
        assert not alive(publisher), "the publisher stops with serve"
    finally:
        stop(stub, seconds=10)


def test_no_publish_runs_the_api_alone(stub_and_store: tuple[dict[str, str], str], tmp_path: Path) -> None:
    env, _ = stub_and_store
    process, _ = serve(env, tmp_path / "serve.log", "--no-publish")
    try:
        assert publishers_of(process.pid) == []
    finally:
        assert stop(process) == 0
