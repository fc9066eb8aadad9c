"""synth → ingest all four sources → export → re-ingest: the CLI as a data engineer runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mappings import nhs_number
from mappings.ukcore import Conformance
from mappings.validate import validate

SOURCES = {
    "gp": "gp.csv",
    "acute": "acute.hl7",
    "community": "community.jsonl",
    "social-care": "social_care.json",
}


def concord(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONCORD_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("flow")
    data, extracts, export = root / "data", root / "extracts", root / "export"
    made = concord(data, "synth", "--people", "400", "--seed", "7", "--out", str(extracts))
    assert made.returncode == 0, made.stderr
    first = {
        s: concord(data, "ingest", "--json", "--source", s, str(extracts / f)) for s, f in SOURCES.items()
    }
    exported = concord(data, "export", "--out", str(export), "--purpose", "direct-care")
    second = {
        s: concord(data, "ingest", "--json", "--source", s, str(extracts / f)) for s, f in SOURCES.items()
    }
    return {
        "root": root,
        "data": data,
        "export": export,
        "manifest": json.loads((extracts / "manifest.json").read_text()),
        "first": {s: (p.returncode, json.loads(p.stdout)) for s, p in first.items()},
        "second": {s: (p.returncode, json.loads(p.stdout)) for s, p in second.items()},
        "exported": exported,
    }


def test_every_source_ingests_with_exit_code_by_outcome(flow: dict) -> None:
    for source, (code, report) in flow["first"].items():
        assert report["records"] > 0, source
        assert report["accepted"] > 0, source
        assert code == (1 if report["quarantined"] else 0), source


def test_reingest_changes_nothing(flow: dict) -> None:
    for source, (_, report) in flow["second"].items():
        assert report["new"] == 0 and report["changed"] == 0, (source, report)
        assert report["unchanged"] == flow["first"][source][1]["accepted"], source
        assert report["quarantined_by_reason"] == flow["first"][source][1]["quarantined_by_reason"], source


def test_known_defects_are_quarantined_with_their_reason(flow: dict) -> None:
    defects = flow["manifest"]["defects"]
    for source, kinds in defects.items():
        report = flow["first"][source][1]
        held = report["quarantined_by_reason"]
        if "bad-check-digit" in kinds:
            assert held.get("nhs-number-check-digit", 0) >= kinds["bad-check-digit"], source
        if "missing-nhs-number" in kinds:
            assert held.get("nhs-number-missing", 0) >= kinds["missing-nhs-number"], source


def test_export_is_one_patient_per_nhs_number_and_all_valid(flow: dict) -> None:
    assert flow["exported"].returncode == 0, flow["exported"].stderr
    export: Path = flow["export"]
    patients = [json.loads(line) for line in (export / "Patient.ndjson").read_text().splitlines()]
    care_plans = [json.loads(line) for line in (export / "CarePlan.ndjson").read_text().splitlines()]
    provenance = [json.loads(line) for line in (export / "Provenance.ndjson").read_text().splitlines()]
    numbers = [i["value"] for p in patients for i in p["identifier"] if i["system"] == nhs_number.SYSTEM]
    assert len(numbers) == len(set(numbers)) == len(patients)
    assert all(nhs_number.is_valid(n) and nhs_number.is_test_range(n) for n in numbers)
    patient_ids = {p["id"] for p in patients}
    assert all(cp["subject"]["reference"].removeprefix("Patient/") in patient_ids for cp in care_plans)
    sources = {p["agent"][0]["who"]["display"] for p in provenance}
    assert len(sources) == 4, sources  # every source contributed
    targets = {t["reference"] for p in provenance for t in p["target"]}
    assert {f"CarePlan/{cp['id']}" for cp in care_plans} <= targets
    for resource in patients + care_plans + provenance:
        validate(resource)


def test_every_exported_patient_and_care_plan_conforms_to_uk_core(flow: dict) -> None:
    fixtures = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
    conformance = Conformance.load([fixtures / "ukcore-definitions", fixtures / "r4-definitions"])
    problems = []
    for name, require in (("Patient", ["Patient.identifier:nhsNumber"]), ("CarePlan", [])):
        for line in (flow["export"] / f"{name}.ndjson").read_text().splitlines():
            resource = json.loads(line)
            problems += [(name, p) for p in conformance.check(resource, require=require)]
    assert problems == []


def test_view_prints_the_shared_care_view(flow: dict) -> None:
    patients = (flow["export"] / "Patient.ndjson").read_text().splitlines()
    number = next(
        i["value"] for i in json.loads(patients[0])["identifier"] if i["system"] == nhs_number.SYSTEM
    )
    shown = concord(flow["data"], "view", number)
    assert shown.returncode == 0
    bundle = json.loads(shown.stdout)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Patient"
    unknown = concord(flow["data"], "view", "9999999999")
    assert unknown.returncode == 2 and unknown.stdout == ""


def test_a_replay_summary_points_at_a_command_that_works(flow: dict) -> None:
    replayed = concord(flow["data"], "quarantine", "replay", "--all")
    # The last test of the module: it replays the shared store's quarantine (nothing was fixed).
    assert replayed.returncode == 1, replayed.stderr  # the records stay open
    hint = next(line for line in replayed.stdout.splitlines() if "see: concord" in line)
    assert hint == "  see: concord quarantine list"  # a replay spans sources: no --source
    listed = concord(flow["data"], "quarantine", "list")
    assert listed.returncode == 0, listed.stderr
