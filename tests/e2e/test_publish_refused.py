"""`concord publish --until-idle` against an HIE that refuses every delivery: exit code 1, not 0.

A batch run whose deliveries all became dead letters is not a success, as an ingest that
quarantined records is not (exit code 1); a run with nothing refused exits 0
(tests/e2e/test_publish_kill.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from topology import concord, environment, free_port, spawn, stop, wait_for


def test_an_hie_refusing_every_delivery_makes_the_batch_run_exit_1(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(CONCORD_DATA_DIR=str(tmp_path / "data"), CONCORD_HIE_URL=f"{base}/fhir")
    log = tmp_path / "hie-stub.log"
    stub = spawn(env, log, "hie-stub", "--port", str(port), "--fail-entry-rate", "1.0")
    try:
        wait_for(f"{base}/_stub/state", process=stub, log=log)
        extracts = tmp_path / "extracts"
        assert concord(env, "synth", "--people", "5", "--seed", "3", "--out", str(extracts)).returncode == 0
        ingested = concord(env, "ingest", "--source", "gp", str(extracts / "gp.csv"))
        assert ingested.returncode in (0, 1), ingested.stderr

        refused = concord(env, "publish", "--until-idle")
        assert refused.returncode == 1, refused.stderr
        assert json.loads(refused.stdout)["dead_letters"] > 0
        status = json.loads(concord(env, "publish", "status", "--json").stdout)
        assert status["dead_letters_open"] == json.loads(refused.stdout)["dead_letters"]

        again = concord(env, "publish", "--until-idle")  # nothing left to deliver: nothing refused now
        assert again.returncode == 0, again.stderr
    finally:
        stop(stub, seconds=10)
