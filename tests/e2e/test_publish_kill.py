"""`kill -9` of the publisher mid-batch, then a restart: every view arrives, nothing is lost.

Real processes: `concord hie-stub` answering slowly (so the kill lands while
deliveries are in flight), `concord publish` killed with SIGKILL, then
`concord publish --until-idle` run again with a short lease.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from topology import concord, environment, free_port, get, post, spawn, stop, wait_for

PEOPLE = 40


#: Short leases and backoff, so the restart picks up the killed publisher's people at once.
QUICK = {"LEASE_SECONDS": "2", "BACKOFF_SECONDS": "0.05", "BACKOFF_CAP_SECONDS": "0.5", "POLL_SECONDS": "0.1"}


def env_for(data: Path, hie: str) -> dict[str, str]:
    quick = {f"CONCORD_PUBLISH_{k}": v for k, v in QUICK.items()}
    return environment(CONCORD_DATA_DIR=str(data), CONCORD_HIE_URL=hie, CONCORD_HIE_READ_TIMEOUT="5", **quick)


def test_kill_9_mid_batch_then_restart_delivers_everyone_once(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(tmp_path / "data", f"{base}/fhir")
    log = tmp_path / "hie-stub.log"
    stub = spawn(env, log, "hie-stub", "--port", str(port), "--delay-rate", "1.0", "--delay-seconds", "0.3")
    try:
        wait_for(f"{base}/_stub/state", process=stub, log=log)
        extracts = tmp_path / "extracts"
        assert (
            concord(env, "synth", "--people", str(PEOPLE), "--seed", "3", "--out", str(extracts)).returncode
            == 0
        )
        ingested = concord(env, "ingest", "--source", "gp", str(extracts / "gp.csv"))
        assert ingested.returncode in (0, 1), ingested.stderr

        publisher = spawn(env, tmp_path / "publisher.log", "publish")
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
        stop(stub, seconds=10)
