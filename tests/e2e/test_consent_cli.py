"""The consent register at the command line, end to end on the embedded store.

ingest a small GP extract → view → opt out → view is refused exactly as for an unknown number →
show → export leaves the person out → withdraw → view works again → import with a bad line →
the log verifies. Independent commands run side by side to keep the run short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mappings import nhs_number as nhs

pytestmark = pytest.mark.slow

HEADER = (
    "practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,"
    "sex,address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,"
    "plan_status,plan_start,plan_end,activities,recorded_at\n"
)
OPTED, OTHER, THIRD, UNKNOWN = [n for n in (nhs.complete(f"99914{i:04d}") for i in range(20)) if n][:4]
INVALID = OPTED[:9] + str((int(OPTED[9]) + 1) % 10)  # a check digit off by one
assert not nhs.is_valid(INVALID)


def gp_extract() -> str:
    rows = [
        (OPTED, "GP1", "Davies", "Amelia"),
        (OTHER, "GP2", "Okafor", "Chidi"),
        (THIRD, "GP3", "Kowalska", "Zofia"),
    ]
    return HEADER + "".join(
        f"Y90001,{local},{number},01,Ms,{family},{given},1950-02-0{i + 1},F,{i + 1} High Street,,Barking,"
        f"RM10 2JY,0208 111 222{i},,{local}-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,"
        f"HBA1C|SCHEDULED|2025-01-01,2024-05-04T09:00:00+00:00\n"
        for i, (number, local, family, given) in enumerate(rows)
    )


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def together(data_dir: Path, *commands: Sequence[str]) -> list[Ran]:
    """Run CLI commands side by side (each in its own process) and wait for all of them."""
    # (This module-wide flow runs before the per-test environment clean-up: drop CONCORD_* here.)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env.update(CONCORD_DATA_DIR=str(data_dir), COLUMNS="200")
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    for process in started:
        out, err = process.communicate(timeout=300)
        done.append(Ran(process.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("consent-cli")
    data, export = root / "data", root / "export"
    extract = root / "gp.csv"
    extract.write_text(gp_extract())
    numbers = root / "national.txt"
    numbers.write_text(f"# national opt-outs\n{OTHER}\n{INVALID}\n\n{THIRD}\n")
    ran: dict[str, Ran] = {}

    ran["ingest"], ran["invalid"] = together(
        data, ["ingest", "--source", "gp", str(extract)], ["consent", "opt-out", INVALID]
    )
    ran["view-before"], ran["view-unknown"] = together(data, ["view", OPTED], ["view", UNKNOWN])
    ran["opt-out"], ran["import"] = together(
        data, ["consent", "opt-out", OPTED], ["consent", "import", str(numbers)]
    )
    ran["view-opted-out"], ran["show"], ran["export"] = together(
        data,
        ["view", OPTED],
        ["consent", "show", OPTED],
        ["export", "--out", str(export), "--purpose", "direct-care"],
    )
    [ran["withdraw"]] = together(data, ["consent", "withdraw", OPTED])
    # verify reads the checkpoints before the entries, so an append alongside cannot upset it.
    ran["view-after"], ran["verify"] = together(data, ["view", OPTED], ["audit", "verify", "--json"])
    return {"ran": ran, "export": export}


def ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_view_works_before_the_opt_out(flow: dict[str, Any]) -> None:
    ran = flow["ran"]
    assert ran["ingest"].code == 0, ran["ingest"].err
    view = ran["view-before"]
    assert view.code == 0, view.err
    bundle = json.loads(view.out)
    types = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert types == ["CarePlan", "Patient", "Provenance", "Provenance"]


def test_an_opted_out_person_is_refused_exactly_as_an_unknown_one(flow: dict[str, Any]) -> None:
    ran = flow["ran"]
    assert ran["opt-out"].code == 0, ran["opt-out"].err
    assert "opt-out recorded" in ran["opt-out"].out
    refused, unknown = ran["view-opted-out"], ran["view-unknown"]
    assert (refused.code, refused.out) == (2, "")
    assert (unknown.code, unknown.out) == (2, "")
    assert refused.err == unknown.err
    assert refused.err.strip()  # a message, but nothing that tells the two apart


def test_show_lists_the_opt_out_in_force(flow: dict[str, Any]) -> None:
    show = flow["ran"]["show"]
    assert show.code == 0, show.err
    [line] = show.out.splitlines()
    assert line.startswith("Consent/")
    assert "local-scr" in line and "in force" in line and "via cli" in line


def test_export_leaves_out_only_the_opted_out_person(flow: dict[str, Any]) -> None:
    exported = flow["ran"]["export"]
    assert exported.code == 0, exported.err
    assert "people withheld for direct-care: 1" in exported.out
    # The opted-out person's resources, as `view` showed them before the opt-out.
    theirs = {
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in json.loads(flow["ran"]["view-before"].out)["entry"]
    }
    their_patient = next(i for t, i in theirs if t == "Patient")
    export: Path = flow["export"]
    patients = ndjson(export / "Patient.ndjson")
    care_plans = ndjson(export / "CarePlan.ndjson")
    provenance = ndjson(export / "Provenance.ndjson")
    shipped = {(r["resourceType"], r["id"]) for r in patients + care_plans + provenance}
    assert not theirs & shipped

    numbers = sorted(i["value"] for p in patients for i in p["identifier"] if i["system"] == nhs.SYSTEM)
    assert numbers == sorted([OTHER, THIRD])
    others = {p["id"] for p in patients}
    assert sorted(cp["subject"]["reference"] for cp in care_plans) == sorted(f"Patient/{p}" for p in others)
    targets = {t["reference"].split("/_history")[0] for p in provenance for t in p["target"]}
    assert f"Patient/{their_patient}" not in targets
    assert {f"Patient/{p}" for p in others} | {f"CarePlan/{cp['id']}" for cp in care_plans} == targets
    assert len(provenance) == 4  # the Patient's and the CarePlan's, for each of the two others


def test_withdrawing_restores_the_view(flow: dict[str, Any]) -> None:
    ran = flow["ran"]
    assert ran["withdraw"].code == 0, ran["withdraw"].err
    assert "withdrawn: Consent/" in ran["withdraw"].out
    after = ran["view-after"]
    assert after.code == 0, after.err
    assert json.loads(after.out) == json.loads(ran["view-before"].out)


def test_import_names_the_invalid_line_and_records_the_rest(flow: dict[str, Any]) -> None:
    imported = flow["ran"]["import"]
    assert imported.code == 1, imported.err
    assert "5 lines: 2 recorded, 0 already in force, 0 withdrawn, 1 invalid" in imported.out
    assert "line 3: nhs-number-check-digit" in imported.out
    assert INVALID not in imported.out + imported.err


def test_an_invalid_nhs_number_is_refused_without_echoing_it(flow: dict[str, Any]) -> None:
    invalid = flow["ran"]["invalid"]
    assert invalid.code == 2
    assert "not a valid NHS number" in invalid.err
    assert INVALID not in invalid.out + invalid.err


def test_the_log_verifies_after_it_all(flow: dict[str, Any]) -> None:
    verify = flow["ran"]["verify"]
    assert verify.code == 0, verify.err
    report = json.loads(verify.out)
    assert report["intact"] is True and report["problem"] is None
    # At least: 3 views, the opt-out, 2 imported, the export's 3 people, the withdrawal (the last
    # view ran alongside and may or may not be in).
    assert report["entries"] >= 10
    assert report["checkpoints"] >= 1
