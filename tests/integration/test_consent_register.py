"""The opt-out register on SQLite and PostgreSQL: changes, their log entries, imports, GP codes, epochs.

Every change must be a valid FHIR Consent plus exactly one consent-change log entry written in the
same transaction; a request that changes nothing must write nothing.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.gp import GpAdapter
from consent.chain import Kind
from consent.model import Authority, OptOutKind, Reason, Requester, RequesterKind
from gateway.bootstrap import Services
from gateway.cli.common import operator
from gateway.disclosure import Ask, Disclosed
from gateway.store.audit import read_head
from gateway.store.consents import read_facts
from gateway.store.quality import quality_report
from gateway.store.schema import audit_log, consents
from gateway.views import load_person
from mappings import nhs_number as nhs
from mappings.validate import validate


def valid_numbers(count: int, block: str = "9991") -> list[str]:
    """Valid NHS numbers from the 999 test range (prefixes with no valid check digit are skipped)."""
    out: list[str] = []
    i = 0
    while len(out) < count:
        number = nhs.complete(f"{block}{i:05d}")
        if number is not None:
            out.append(number)
        i += 1
    assert all(nhs.is_valid(n) and nhs.is_test_range(n) for n in out)
    return out


A, B, C, D, E = valid_numbers(5)


def actor(services: Services) -> Requester:
    return operator(services.settings)


async def log_rows(engine: AsyncEngine, after: int = 0) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq))
        return [dict(r) for r in rows.mappings()]


async def log_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())


async def head_seq(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await read_head(conn)).seq


async def consent_rows(engine: AsyncEngine, number: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(consents).where(consents.c.nhs_number == number).order_by(consents.c.change_seq)
        )
        return [dict(r) for r in rows.mappings()]


# --- opt-out and withdraw -------------------------------------------------------------------------


async def test_opt_out_records_a_valid_consent_and_exactly_one_log_entry(services: Services) -> None:
    before = await head_seq(services.engine)
    change = await services.register.opt_out(
        A, OptOutKind.LOCAL, Authority.PATIENT_AT_GP, actor(services), "req-opt-out"
    )
    assert change.changed and change.action == "opt-out"

    facts = await services.register.facts(A)
    active = facts.active(OptOutKind.LOCAL)
    assert active is not None and active.id == change.opt_out.id
    assert active.source == "cli" and active.authority is Authority.PATIENT_AT_GP

    [resource] = await services.register.resources(A)
    validate(resource)  # fhir.resources (R4B models) plus the required code sets
    assert resource["resourceType"] == "Consent"
    assert resource["id"] == change.opt_out.id
    assert resource["status"] == "active"
    assert resource["meta"]["versionId"] == "1"
    assert resource["patient"]["identifier"] == {"system": nhs.SYSTEM, "value": A}
    assert resource["provision"]["type"] == "deny"
    assert "end" not in resource["provision"]["period"]

    new = await log_rows(services.engine, before)
    assert len(new) == 1
    [entry] = new
    assert entry["seq"] == before + 1
    assert entry["kind"] == Kind.CONSENT_CHANGE
    assert entry["action"] == "opt-out"
    assert entry["consent_id"] == change.opt_out.id
    assert entry["nhs_number"] == A
    assert entry["request_id"] == "req-opt-out"
    assert entry["reason"] == Authority.PATIENT_AT_GP.value
    assert orjson.loads(entry["detail"]) == {"kind": "local-scr", "source": "cli", "version": 1}
    # The Consent row names the entry that recorded it (the person's epoch).
    [row] = await consent_rows(services.engine, A)
    assert row["change_seq"] == entry["seq"]
    assert row["version_id"] == 1 and row["status"] == "active"


async def test_consent_and_its_entry_commit_together_or_not_at_all(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is appended in the change's transaction: a failure after the append leaves neither."""
    await services.register.opt_out(A, OptOutKind.LOCAL, Authority.PATIENT_AT_GP, actor(services), "req-1")
    before_count = await log_count(services.engine)
    real = services.log.append_locked

    async def append_then_fail(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise RuntimeError("the process died after the append")

    monkeypatch.setattr(services.log, "append_locked", append_then_fail)
    with pytest.raises(RuntimeError, match="died after the append"):
        await services.register.opt_out(B, OptOutKind.LOCAL, Authority.LETTER, actor(services), "req-2")
    with pytest.raises(RuntimeError, match="died after the append"):
        await services.register.withdraw(A, None, Authority.LETTER, actor(services), "req-3")
    monkeypatch.undo()

    assert await consent_rows(services.engine, B) == []
    [row] = await consent_rows(services.engine, A)
    assert row["status"] == "active" and row["version_id"] == 1
    assert await log_count(services.engine) == before_count
    assert (await services.register.facts(A)).active(OptOutKind.LOCAL) is not None


async def test_a_second_opt_out_of_the_same_kind_changes_nothing(services: Services) -> None:
    first = await services.register.opt_out(
        A, OptOutKind.LOCAL, Authority.PATIENT_AT_GP, actor(services), "req-1"
    )
    seq = await head_seq(services.engine)
    rows = await consent_rows(services.engine, A)

    again = await services.register.opt_out(A, OptOutKind.LOCAL, Authority.LETTER, actor(services), "req-2")
    assert not again.changed
    assert again.opt_out.id == first.opt_out.id
    assert await head_seq(services.engine) == seq
    assert await log_count(services.engine) == seq  # no row written, head or not
    assert await log_rows(services.engine, seq) == []
    assert await consent_rows(services.engine, A) == rows

    # Another kind is a change of its own.
    other = await services.register.opt_out(
        A, OptOutKind.NATIONAL, Authority.PATIENT_AT_GP, actor(services), "req-3"
    )
    assert other.changed and other.opt_out.id != first.opt_out.id
    assert [e["consent_id"] for e in await log_rows(services.engine, seq)] == [other.opt_out.id]


async def test_withdraw_closes_the_consent_as_version_two_with_one_entry(services: Services) -> None:
    recorded = await services.register.opt_out(
        A, OptOutKind.LOCAL, Authority.PATIENT_AT_GP, actor(services), "req-1"
    )
    seq = await head_seq(services.engine)

    changes = await services.register.withdraw(A, None, Authority.LETTER, actor(services), "req-withdraw")
    assert [(c.opt_out.id, c.action, c.changed) for c in changes] == [(recorded.opt_out.id, "withdraw", True)]
    withdrawn = changes[0].opt_out
    assert withdrawn.withdrawn_at is not None
    assert withdrawn.withdrawal_authority is Authority.LETTER

    facts = await services.register.facts(A)
    assert facts.active(OptOutKind.LOCAL) is None
    assert [o.active for o in facts.opt_outs] == [False]

    [resource] = await services.register.resources(A)
    validate(resource)
    assert resource["status"] == "inactive"
    assert resource["meta"]["versionId"] == "2"
    period = resource["provision"]["period"]
    assert period["end"] >= period["start"]

    [entry] = await log_rows(services.engine, seq)
    assert entry["kind"] == Kind.CONSENT_CHANGE
    assert entry["action"] == "withdraw"
    assert entry["consent_id"] == recorded.opt_out.id
    assert entry["nhs_number"] == A
    assert entry["reason"] == Authority.LETTER.value
    assert orjson.loads(entry["detail"])["version"] == 2
    [row] = await consent_rows(services.engine, A)
    assert (row["status"], row["version_id"], row["change_seq"]) == ("withdrawn", 2, entry["seq"])

    # Nothing in force any more: a second withdrawal changes nothing and writes nothing.
    seq = await head_seq(services.engine)
    assert await services.register.withdraw(A, None, Authority.LETTER, actor(services), "req-again") == []
    assert await head_seq(services.engine) == seq
    assert await log_count(services.engine) == seq  # no row written, head or not


async def test_withdraw_when_none_was_ever_recorded_returns_nothing(services: Services) -> None:
    seq = await head_seq(services.engine)
    assert await services.register.withdraw(B, None, Authority.LETTER, actor(services), "req") == []
    # Only the kind asked for is withdrawn.
    await services.register.opt_out(B, OptOutKind.NATIONAL, Authority.LETTER, actor(services), "req")
    assert (
        await services.register.withdraw(B, OptOutKind.LOCAL, Authority.LETTER, actor(services), "req") == []
    )
    assert len(await log_rows(services.engine, seq)) == 1
    assert (await services.register.facts(B)).active(OptOutKind.NATIONAL) is not None


# --- imports --------------------------------------------------------------------------------------


def bad_check_digit(number: str) -> str:
    wrong = next(d for d in "0123456789" if d != number[9] and not nhs.is_valid(number[:9] + d))
    return number[:9] + wrong


async def test_import_counts_lines_and_names_invalid_ones_without_their_values(services: Services) -> None:
    bad = bad_check_digit(C)
    lines = [
        "# national data opt-outs, weekly file\n",  # 1
        f"{A}\n",  # 2
        f"{B}\n",  # 3
        "\n",  # 4
        f"{bad}\n",  # 5
        f"{A}\n",  # 6 duplicate
        "   \n",  # 7
        "99912ABCDE\n",  # 8 letters
        "9991234\n",  # 9 too short
        f"{nhs.formatted(C)}\n",  # 10 spaced 3-3-4: valid
    ]
    seq = await head_seq(services.engine)
    report = await services.register.import_numbers(
        lines, OptOutKind.NATIONAL, Authority.NATIONAL_SERVICE, actor(services), "req-import", batch_size=2
    )
    assert report.lines == 10
    assert (report.recorded, report.already, report.withdrawn) == (3, 1, 0)
    assert report.invalid == [
        (5, "nhs-number-check-digit"),
        (8, "nhs-number-format"),
        (9, "nhs-number-format"),
    ]
    shown = orjson.dumps(report.as_dict()).decode() + repr(report)
    for value in (bad, "99912ABCDE", "9991234"):
        assert value not in shown

    entries = await log_rows(services.engine, seq)
    assert sorted(e["nhs_number"] for e in entries) == sorted([A, B, C])
    assert {(e["kind"], e["action"], e["reason"]) for e in entries} == {
        (Kind.CONSENT_CHANGE, "opt-out", "national-opt-out-service")
    }
    for number in (A, B, C):
        active = (await services.register.facts(number)).active(OptOutKind.NATIONAL)
        assert active is not None and active.source == "import"
        assert len(await consent_rows(services.engine, number)) == 1

    # The same file again records nothing.
    seq = await head_seq(services.engine)
    again = await services.register.import_numbers(
        lines, OptOutKind.NATIONAL, Authority.NATIONAL_SERVICE, actor(services), "req-import-2"
    )
    assert (again.recorded, again.already, len(again.invalid)) == (0, 4, 3)
    assert await head_seq(services.engine) == seq
    assert await log_count(services.engine) == seq  # no row written, head or not


async def test_replace_all_withdraws_imported_opt_outs_missing_from_the_new_file(services: Services) -> None:
    kind, authority = OptOutKind.NATIONAL, Authority.NATIONAL_SERVICE
    first = await services.register.import_numbers([A, B, C], kind, authority, actor(services), "req-1")
    assert first.recorded == 3
    # Recorded at the command line with the same kind and authority: not the import's to withdraw.
    by_hand = await services.register.opt_out(D, kind, authority, actor(services), "req-cli")
    seq = await head_seq(services.engine)

    report = await services.register.import_numbers(
        [f"{B}\n", f"{C}\n", f"{E}\n"], kind, authority, actor(services), "req-2", replace_all=True
    )
    assert (report.recorded, report.already, report.withdrawn) == (1, 2, 1)
    assert (await services.register.facts(A)).active(kind) is None
    for number in (B, C, E):
        assert (await services.register.facts(number)).active(kind) is not None
    held = (await services.register.facts(D)).active(kind)
    assert held is not None and held.id == by_hand.opt_out.id

    entries = await log_rows(services.engine, seq)
    assert sorted((e["action"], e["nhs_number"]) for e in entries) == [("opt-out", E), ("withdraw", A)]

    # The same complete list again: nothing to record, nothing to withdraw.
    seq = await head_seq(services.engine)
    again = await services.register.import_numbers(
        [B, C, E], kind, authority, actor(services), "req-3", replace_all=True
    )
    assert (again.recorded, again.withdrawn) == (0, 0)
    assert await head_seq(services.engine) == seq
    assert await log_count(services.engine) == seq  # no row written, head or not


async def test_replace_all_withdraws_nothing_while_a_line_is_invalid(services: Services) -> None:
    """A typo could be someone still opted out: a damaged complete list must not resume their sharing."""
    kind, authority = OptOutKind.NATIONAL, Authority.NATIONAL_SERVICE
    await services.register.import_numbers([A, B], kind, authority, actor(services), "req-1")
    typo_of_a = A[:-1] + str((int(A[-1]) + 1) % 10)
    report = await services.register.import_numbers(
        [typo_of_a, B], kind, authority, actor(services), "req-2", replace_all=True
    )
    assert report.replace_refused is True
    assert report.withdrawn == 0
    assert [n for n, _ in report.invalid] == [1]
    assert (await services.register.facts(A)).active(kind) is not None


# --- epochs ---------------------------------------------------------------------------------------


async def latest_change_seq(engine: AsyncEngine, number: str) -> int:
    async with engine.connect() as conn:
        value = (
            await conn.execute(
                select(func.max(audit_log.c.seq)).where(
                    audit_log.c.nhs_number == number, audit_log.c.kind == Kind.CONSENT_CHANGE
                )
            )
        ).scalar()
        return int(value or 0)


async def epoch(engine: AsyncEngine, number: str) -> int:
    async with engine.connect() as conn:
        return (await read_facts(conn, number)).epoch


async def test_epoch_is_the_seq_of_the_persons_latest_change_and_rises(services: Services) -> None:
    engine, who = services.engine, actor(services)
    assert await epoch(engine, A) == 0
    seen = []
    steps = [
        services.register.opt_out(A, OptOutKind.LOCAL, Authority.LETTER, who, "r1"),
        services.register.opt_out(B, OptOutKind.LOCAL, Authority.LETTER, who, "r2"),  # someone else
        services.register.opt_out(A, OptOutKind.NATIONAL, Authority.LETTER, who, "r3"),
        services.register.opt_out(B, OptOutKind.NATIONAL, Authority.LETTER, who, "r4"),
        services.register.withdraw(A, OptOutKind.LOCAL, Authority.LETTER, who, "r5"),
        services.register.withdraw(A, None, Authority.LETTER, who, "r6"),
    ]
    for step in steps:
        await step
        current = await epoch(engine, A)
        assert current == await latest_change_seq(engine, A)
        seen.append(current)
    assert await epoch(engine, B) == await latest_change_seq(engine, B) == 4
    # A's epoch moves only with A's changes, and every change of A's moves it up.
    assert seen == [1, 1, 3, 3, 5, 6]
    assert await head_seq(engine) == 6


# --- opt-out codes on GP extracts -----------------------------------------------------------------

GP_HEADER = (
    "practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,"
    "sex,address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,"
    "plan_status,plan_start,plan_end,activities,recorded_at\n"
)
FIRST = "2024-05-04T09:00:00+00:00"
LATER = "2024-06-10T12:30:00+00:00"
LSCR, NATIONAL_CODE, UNKNOWN_CODE = "LSCR-DISSENT", "827241000000103", "XYZ"


def gp_extract(codes: dict[str, str], recorded_at: str) -> str:
    """One row per person: A at Y90001, B at Y90002, C and D at Y90001, each with one care plan."""
    people = [("Y90001", "GP1", A), ("Y90002", "GP2", B), ("Y90001", "GP3", C), ("Y90001", "GP4", D)]
    rows = [
        f"{ods},{local},{number},01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,"
        f"0208 111 2222,{codes.get(number, '')},{local}-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,"
        f"HBA1C|SCHEDULED|2025-01-01,{recorded_at}\n"
        for ods, local, number in people
    ]
    return GP_HEADER + "".join(rows)


FIRST_CODES = {A: LSCR, B: NATIONAL_CODE, C: UNKNOWN_CODE}


async def ingest(services: Services, text: str) -> None:
    report = await services.ingestor.run("gp", GpAdapter().read(io.StringIO(text)), "gp.csv")
    assert (report.accepted, report.quarantined_total) == (4, 0)


async def disclose(services: Services, number: str, purpose: str) -> Disclosed:
    ask = Ask(operator(services.settings), purpose, "view", f"req-{purpose}-{number}")
    return await services.disclosure.person(ask, number, lambda n: load_person(services.engine, n))


async def test_gp_opt_out_codes_reach_the_register_once(services: Services) -> None:
    await ingest(services, gp_extract(FIRST_CODES, FIRST))
    when = datetime(2024, 5, 4, 9, 0, tzinfo=UTC)
    expected = {
        A: (OptOutKind.LOCAL, "Y90001"),
        B: (OptOutKind.NATIONAL, "Y90002"),
        C: (OptOutKind.LOCAL, "Y90001"),  # unknown code: the broadest opt-out (fail closed)
    }
    for number, (kind, ods) in expected.items():
        facts = await services.register.facts(number)
        assert len(facts.opt_outs) == 1, number
        [o] = facts.opt_outs
        assert (o.kind, o.active, o.recorded_by_ods) == (kind, True, ods), number
        assert (o.authority, o.source) == (Authority.PATIENT_AT_GP, "gp-extract"), number
        assert o.recorded_at == when, number
        for resource in await services.register.resources(number):
            validate(resource)
    assert (await services.register.facts(D)).opt_outs == ()

    entries = await log_rows(services.engine)
    assert sorted((e["nhs_number"], e["action"]) for e in entries) == [
        (A, "opt-out"),
        (B, "opt-out"),
        (C, "opt-out"),
    ]
    assert {e["kind"] for e in entries} == {Kind.CONSENT_CHANGE}

    async with services.engine.connect() as conn:
        unknown = (await quality_report(conn)).unknown_codes
    flagged = [u for u in unknown if u.field == "opt_out_code"]
    assert [(u.source, u.occurrences) for u in flagged] == [("gp", 1)]
    assert UNKNOWN_CODE in flagged[0].detail
    assert not any(LSCR in u.detail or NATIONAL_CODE in u.detail for u in unknown)

    # The same extract again: nothing recorded, nothing logged.
    seq = await head_seq(services.engine)
    await ingest(services, gp_extract(FIRST_CODES, FIRST))
    assert await head_seq(services.engine) == seq
    assert await log_count(services.engine) == seq  # no row written, head or not
    for number in (A, B, C):
        assert len((await services.register.facts(number)).opt_outs) == 1

    # Direct care: the local (LSCR) opt-out denies, the national one never applies.
    denied = await disclose(services, A, "direct-care")
    assert not denied.permitted and denied.decision.reason is Reason.LOCAL_OPT_OUT
    assert denied.resources == []
    permitted = await disclose(services, B, "direct-care")
    assert permitted.permitted
    assert {t for t, _, _ in permitted.resources} == {"Patient", "CarePlan", "Provenance"}
    # Secondary use: both opt-outs deny; the person without one is permitted.
    assert (await disclose(services, A, "research")).decision.reason is Reason.LOCAL_OPT_OUT
    assert (await disclose(services, B, "research")).decision.reason is Reason.NATIONAL_OPT_OUT
    assert (await disclose(services, D, "research")).permitted


async def test_a_later_extract_withdraws_a_removed_code_and_follows_a_changed_one(services: Services) -> None:
    await ingest(services, gp_extract(FIRST_CODES, FIRST))
    assert not (await disclose(services, A, "direct-care")).permitted
    seq = await head_seq(services.engine)

    # A's code is gone; C's unknown code became the national one; D now carries the unknown code
    # (its second occurrence); B's is unchanged.
    await ingest(services, gp_extract({B: NATIONAL_CODE, C: NATIONAL_CODE, D: UNKNOWN_CODE}, LATER))
    later = datetime(2024, 6, 10, 12, 30, tzinfo=UTC)
    [o] = (await services.register.facts(A)).opt_outs
    assert not o.active
    assert o.withdrawn_at == later
    assert o.withdrawal_authority is Authority.GP_EXTRACT
    [resource] = await services.register.resources(A)
    validate(resource)
    assert resource["status"] == "inactive"

    c_facts = await services.register.facts(C)
    old = next(x for x in c_facts.opt_outs if x.kind is OptOutKind.LOCAL)
    assert (old.active, old.withdrawn_at) == (False, later)
    new = c_facts.active(OptOutKind.NATIONAL)
    assert new is not None and (new.recorded_at, new.source) == (later, "gp-extract")
    assert c_facts.active(OptOutKind.LOCAL) is None
    [b_opt_out] = (await services.register.facts(B)).opt_outs
    assert b_opt_out.active

    entries = await log_rows(services.engine, seq)
    assert [(e["nhs_number"], e["action"], e["consent_id"]) for e in entries] == [
        (A, "withdraw", o.id),
        (C, "withdraw", old.id),
        (C, "opt-out", new.id),
        (D, "opt-out", (await services.register.facts(D)).opt_outs[0].id),
    ]

    assert (await disclose(services, A, "direct-care")).permitted
    assert (await disclose(services, C, "direct-care")).permitted
    assert (await disclose(services, C, "research")).decision.reason is Reason.NATIONAL_OPT_OUT
    assert not (await disclose(services, D, "direct-care")).permitted

    async with services.engine.connect() as conn:
        unknown = (await quality_report(conn)).unknown_codes
    # The unknown code met twice (C's row, then D's) is counted twice.
    assert [u.occurrences for u in unknown if UNKNOWN_CODE in u.detail] == [2]


async def test_changes_made_at_once_share_a_transaction_and_apply_in_order(services: Services) -> None:
    """Concurrent requests are group-committed; each still sees what the ones before it wrote."""
    who = actor(services)
    register = services.register
    commits: list[int] = []
    inner = register._commit_changes

    async def counted(queued: list[Any]) -> None:
        commits.append(len(queued))
        await inner(queued)

    register._changes.commit = counted
    first, second, third, other = await asyncio.gather(
        register.opt_out(A, OptOutKind.LOCAL, Authority.LETTER, who, "r1"),
        register.withdraw(A, None, Authority.LETTER, who, "r2"),
        register.opt_out(A, OptOutKind.LOCAL, Authority.LETTER, who, "r3"),
        register.opt_out(B, OptOutKind.LOCAL, Authority.LETTER, who, "r4"),
    )
    assert commits == [4], "one transaction for the four"
    assert first.changed and third.changed and other.changed
    assert [c.action for c in second] == ["withdraw"] and second[0].opt_out.id == first.opt_out.id
    facts = await register.facts(A)
    assert [o.id for o in facts.opt_outs if o.active] == [third.opt_out.id]
    rows = await log_rows(services.engine)
    assert [(r["action"], r["request_id"]) for r in rows] == [
        ("opt-out", "r1"),
        ("withdraw", "r2"),
        ("opt-out", "r3"),
        ("opt-out", "r4"),
    ]
    provider = Requester(RequesterKind.PROVIDER, "RAT", "community-epr")
    decision = await services.decider.decide(A, "direct-care", provider)
    assert (decision.permitted, decision.reason) == (False, Reason.LOCAL_OPT_OUT)
