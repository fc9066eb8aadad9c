"""``concord audit export`` on SQLite and PostgreSQL: each filter returns exactly its entries, nothing appended."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from adapters.gp import COLUMNS, GpAdapter
from consent.auditevent import CSV_HEADER, LOG_ENTRY
from consent.chain import Kind
from consent.model import Authority, OptOutKind, Purpose, Requester, RequesterKind
from gateway.audit.export import AuditFilter, matching, write_csv, write_ndjson
from gateway.bootstrap import Services
from gateway.cli import cli
from gateway.cli.audit_export import _output
from gateway.disclosure import Ask
from gateway.store.audit import Head, read_head
from gateway.views import load_person
from mappings.validate import validate

A, B, C = "9990000018", "9990000026", "9990000034"
PROVIDER = Requester(RequesterKind.PROVIDER, "RXX01", "epr-1")
ANALYST = Requester(RequesterKind.ANALYST, "RYY02", "analytics-1")
GATEWAY = "RKL"


def gp_extract(*numbers: str) -> str:
    lines = [",".join(COLUMNS)]
    for n, number in enumerate(numbers, start=1):
        values = dict.fromkeys(COLUMNS, "")
        values.update(
            practice_ods="Y90001",
            gp_patient_id=f"GP{n}",
            nhs_number=number,
            nhs_number_status="01",
            family_name="Test",
            given_names="Person",
            date_of_birth="1950-01-01",
            sex="F",
            recorded_at="2024-04-01T09:00:00+00:00",
        )
        lines.append(",".join(values[c] for c in COLUMNS))
    return "\n".join(lines) + "\n"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, text: str) -> None:
        self.now = datetime.fromisoformat(text)


@dataclass(frozen=True)
class Logged:
    seq: int
    kind: str
    nhs: str
    org: str
    decision: str | None


@pytest.fixture
async def logged(services: Services) -> list[Logged]:
    """Nine entries over three days: opt-outs, withdrawals, views and an export, permits and denies."""
    report = await services.ingestor.run("gp", GpAdapter().read(io.StringIO(gp_extract(A, B, C))), "gp.csv")
    assert report.accepted == 3
    start = (await _head(services)).seq
    clock = Clock()
    services.register.clock = clock
    services.disclosure.clock = clock
    operator = Requester(RequesterKind.OPERATOR, services.settings.organisation_ods, "cli:test")

    async def view(requester: Requester, purpose: str, number: str, request: str) -> None:
        ask = Ask(requester, purpose, "view", request)
        await services.disclosure.person(ask, number, lambda n: load_person(services.engine, n))

    clock.at("2024-05-01T09:00:00+00:00")
    await services.register.opt_out(A, OptOutKind.LOCAL, Authority.PATIENT_AT_GP, operator, "r1")
    clock.at("2024-05-01T23:59:59.999999+00:00")
    await view(PROVIDER, Purpose.DIRECT_CARE, A, "r2")  # deny: local opt-out
    clock.at("2024-05-02T08:00:00+00:00")
    await view(PROVIDER, Purpose.DIRECT_CARE, B, "r3")  # permit
    clock.at("2024-05-02T12:00:00+00:00")
    await view(ANALYST, Purpose.RESEARCH, C, "r4")  # permit
    clock.at("2024-05-02T13:00:00+00:00")
    await services.register.opt_out(C, OptOutKind.NATIONAL, Authority.NATIONAL_SERVICE, operator, "r5")
    clock.at("2024-05-03T00:00:00+00:00")
    await view(ANALYST, Purpose.RESEARCH, C, "r6")  # deny: national opt-out
    clock.at("2024-05-03T09:00:00+00:00")
    await services.register.withdraw(A, None, Authority.LETTER, operator, "r7")
    clock.at("2024-05-03T10:00:00+00:00")
    screen = await services.disclosure.bulk(Ask(operator, Purpose.PLANNING, "export", "r8"))
    assert screen.allows(B, "Patient") and not screen.allows(C, "Patient")
    await screen.commit()  # permit for B, deny for C
    assert (await _head(services)).seq == start + 9
    cc, d = Kind.CONSENT_CHANGE, Kind.DISCLOSURE
    op = operator.ods_code
    rows = [
        (cc, A, op, None),
        (d, A, "RXX01", "deny"),
        (d, B, "RXX01", "permit"),
        (d, C, "RYY02", "permit"),
        (cc, C, op, None),
        (d, C, "RYY02", "deny"),
        (cc, A, op, None),
        (d, B, op, "permit"),
        (d, C, op, "deny"),
    ]
    return [Logged(start + i, *row) for i, row in enumerate(rows, start=1)]


async def _head(services: Services) -> Head:
    async with services.engine.connect() as conn:
        return await read_head(conn)


async def export_ndjson(services: Services, where: AuditFilter) -> list[dict[str, Any]]:
    out = io.BytesIO()
    async with services.engine.connect() as conn:
        # chunk=2: the filters must hold across pages of the keyset paging.
        count = await write_ndjson(matching(conn, where, chunk=2), out, GATEWAY)
    lines = out.getvalue().splitlines()
    assert len(lines) == count
    return [orjson.loads(line) for line in lines]


def seq_of(event: dict[str, Any]) -> int:
    return int(event["id"].removeprefix("log-"))


def ids(logged: list[Logged], *positions: int) -> list[int]:
    """The seqs of the fixture's entries by their 1-based position."""
    return [logged[p - 1].seq for p in positions]


FILTERS: dict[str, tuple[AuditFilter, tuple[int, ...]]] = {
    "everything": (AuditFilter(), (1, 2, 3, 4, 5, 6, 7, 8, 9)),
    "person": (AuditFilter(nhs_number=A), (1, 2, 7)),
    "organisation": (AuditFilter(org_ods="RYY02"), (4, 6)),
    "deny": (AuditFilter(decision="deny"), (2, 6, 9)),
    "permit": (AuditFilter(decision="permit"), (3, 4, 8)),
    "consent-changes": (AuditFilter(kind=Kind.CONSENT_CHANGE), (1, 5, 7)),
    "disclosures": (AuditFilter(kind=Kind.DISCLOSURE), (2, 3, 4, 6, 8, 9)),
    "one-day-inclusive": (AuditFilter(since="2024-05-01", until="2024-05-01"), (1, 2)),
    "since-a-day": (AuditFilter(since="2024-05-03"), (6, 7, 8, 9)),
    "until-a-day": (AuditFilter(until="2024-05-02"), (1, 2, 3, 4, 5)),
    "date-times": (AuditFilter(since="2024-05-02T12:00:00Z", until="2024-05-02T13:00"), (4, 5)),
    "offset": (AuditFilter(since="2024-05-02T14:00:00+01:00", until="2024-05-03T01:00+01:00"), (5, 6)),
    "combined": (AuditFilter(nhs_number=C, decision="deny", since="2024-05-03"), (6, 9)),
    "nothing": (AuditFilter(nhs_number=A, org_ods="RYY02"), ()),
}


@pytest.mark.parametrize("name", FILTERS)
async def test_each_filter_exports_exactly_its_entries(
    services: Services, logged: list[Logged], name: str
) -> None:
    where, positions = FILTERS[name]
    before = await _head(services)
    events = await export_ndjson(services, where)
    assert [seq_of(e) for e in events] == ids(logged, *positions)
    by_seq = {entry.seq: entry for entry in logged}
    for event in events:
        validate(event)
        expected = by_seq[seq_of(event)]
        patient = [e for e in event["entity"] if e.get("what", {}).get("type") == "Patient"]
        assert patient[0]["what"]["identifier"]["value"] == expected.nhs
        assert event["agent"][0]["who"]["identifier"]["value"] == expected.org
        assert event["outcome"] == ("4" if expected.decision == "deny" else "0")
    after = await _head(services)
    assert (after.seq, after.entry_hash) == (before.seq, before.entry_hash)  # reading appended nothing


async def test_events_carry_what_was_disclosed_and_the_chain_hash(
    services: Services, logged: list[Logged]
) -> None:
    events = {seq_of(e): e for e in await export_ndjson(services, AuditFilter())}
    denied_view = events[logged[1].seq]
    withheld = [e["what"]["reference"] for e in denied_view["entity"] if e.get("description") == "withheld"]
    assert withheld and all(ref.split("/")[0] in {"Patient", "CarePlan", "Provenance"} for ref in withheld)
    assert denied_view["outcomeDesc"] == "local-opt-out"
    returned = [e for e in events[logged[2].seq]["entity"] if e.get("description") == "returned"]
    assert returned
    counted = [e for e in events[logged[7].seq]["entity"] if e.get("detail", [{}])[0].get("type") == "count"]
    assert counted[0]["type"]["code"] == "Patient" and counted[0]["detail"][0]["valueString"] == "1"
    async with services.engine.connect() as conn:
        async for page in matching(conn, AuditFilter()):
            for stored in page:
                [evidence] = [
                    e
                    for e in events[stored.seq]["entity"]
                    if e.get("what", {}).get("identifier", {}).get("system") == LOG_ENTRY
                ]
                assert evidence["detail"] == [{"type": "entry-hash", "valueString": stored.entry_hash}]


async def test_csv_export_has_the_header_and_one_row_per_entry(
    services: Services, logged: list[Logged]
) -> None:
    out = io.BytesIO()
    async with services.engine.connect() as conn:
        count = await write_csv(matching(conn, AuditFilter(org_ods="RXX01"), chunk=1), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert count == len(rows) == 2
    assert list(rows[0]) == list(CSV_HEADER)
    assert [(int(r["seq"]), r["nhs_number"], r["decision"]) for r in rows] == [
        (logged[1].seq, A, "deny"),
        (logged[2].seq, B, "permit"),
    ]
    assert all(len(r["entry_hash"]) == 64 for r in rows)


def test_an_empty_log_exports_only_a_csv_header(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["audit", "export", "--format", "csv"], env={"CONCORD_DATA_DIR": str(tmp_path / "data")}
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [",".join(CSV_HEADER)]
    assert "0 entries exported" in result.stderr


# --- the command line -------------------------------------------------------------------------


def concord(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONCORD_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_the_command_line_exports_filters_and_refuses_bad_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = CliRunner()
    env = {"CONCORD_DATA_DIR": str(data)}

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(cli, list(args), env=env)
        return result.exit_code, result.stdout, result.stderr

    assert invoke("consent", "opt-out", A)[0] == 0
    invoke("view", A)  # denied: logged
    invoke("view", B)  # permitted (nothing held for B): logged

    code, out, err = invoke("audit", "export")
    assert code == 0, err
    events = [orjson.loads(line) for line in out.splitlines()]
    assert [e["id"] for e in events] == ["log-1", "log-2", "log-3"]
    for event in events:
        validate(event)
    assert "3 entries exported" in err

    code, out, _ = invoke("audit", "export", "--nhs-number", "999 000 0018", "--decision", "deny")
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == ["log-2"]
    code, out, _ = invoke("audit", "export", "--kind", "consent-change", "--format", "csv")
    assert [r["seq"] for r in csv.DictReader(io.StringIO(out))] == ["1"]
    today = datetime.now(UTC).date()
    window = ((today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat())
    code, out, _ = invoke("audit", "export", "--since", window[0], "--until", window[1])
    assert len(out.splitlines()) == 3
    code, out, _ = invoke("audit", "export", "--until", window[0])
    assert out == ""

    code, out, err = invoke("audit", "export", "--nhs-number", "9990000019")
    assert code == 2 and "not a valid NHS number" in err and "9990000019" not in err
    code, _, err = invoke("audit", "export", "--since", "yesterday")
    assert code == 2 and "ISO date" in err

    # The real entry point writes the file only once complete, and reading appends nothing.
    target = tmp_path / "audit.csv"
    done = concord(data, "audit", "export", "--format", "csv", "--org", "CONCORD", "--out", str(target))
    assert done.returncode == 0, done.stderr
    assert "3 entries exported" in done.stderr
    assert not target.with_name("audit.csv.part").exists()
    rows = list(csv.DictReader(io.StringIO(target.read_text(), newline="")))
    assert [r["seq"] for r in rows] == ["1", "2", "3"]
    verified = orjson.loads(invoke("audit", "verify", "--json")[1])
    assert verified["intact"] and verified["entries"] == 3


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "audit.ndjson"
    with pytest.raises(RuntimeError), _output(target) as fh:
        fh.write(b"half")
        raise RuntimeError("store went away")
    assert list(tmp_path.iterdir()) == []
