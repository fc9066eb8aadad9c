"""Tampering with the log directly in the database, on SQLite and PostgreSQL: verify names the first bad entry.

The log is built through the real services (opt-outs, withdrawals, disclosures) with a checkpoint
signed every three entries. Each case then edits the tables with SQL, as someone with write access
to the database could, and ``verify_store`` must say which entry is bad and how.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consent.chain import ENTRY_FIELDS, Entry, key_id, link, load_public_key, public_key_pem, sign_checkpoint
from consent.model import Authority, OptOutKind, Purpose
from gateway.audit.verify import verify_store
from gateway.bootstrap import Services, bootstrap
from gateway.cli import cli
from gateway.cli.common import operator
from gateway.disclosure import Ask
from gateway.settings import Settings
from gateway.store.audit import stream_entries
from gateway.views import load_person
from mappings import nhs_number as nhs

A, B, C, D = [n for n in (nhs.complete(f"99913{i:04d}") for i in range(20)) if n is not None][:4]
EVERY = 3
ENTRIES = 11
CHECKPOINTS = [3, 6, 9]


async def build_log(services: Services) -> None:
    """Eleven entries: consent changes and disclosures interleaved; checkpoints at 3, 6 and 9."""
    who = operator(services.settings)
    register = services.register

    async def disclose(number: str, purpose: Purpose) -> None:
        ask = Ask(who, purpose.value, "view", f"req-view-{number}")
        await services.disclosure.person(ask, number, lambda n: load_person(services.engine, n))

    await register.opt_out(A, OptOutKind.LOCAL, Authority.PATIENT_AT_GP, who, "req-1")  # 1
    await register.opt_out(B, OptOutKind.NATIONAL, Authority.LETTER, who, "req-2")  # 2
    await disclose(A, Purpose.DIRECT_CARE)  # 3: deny
    await disclose(B, Purpose.RESEARCH)  # 4: deny
    await register.withdraw(A, None, Authority.LETTER, who, "req-5")  # 5
    await register.opt_out(C, OptOutKind.LOCAL, Authority.PORTAL, who, "req-6")  # 6
    await disclose(A, Purpose.DIRECT_CARE)  # 7: permit
    await disclose(C, Purpose.DIRECT_CARE)  # 8: deny
    await register.opt_out(A, OptOutKind.NATIONAL, Authority.TELEPHONE, who, "req-9")  # 9
    await disclose(B, Purpose.DIRECT_CARE)  # 10: permit
    await disclose(D, Purpose.RESEARCH)  # 11: permit


CHANGE, SHOWN = "consent-change", "disclosure"
LOG_SHAPE = [
    (CHANGE, "opt-out", None),
    (CHANGE, "opt-out", None),
    (SHOWN, "view", "deny"),
    (SHOWN, "view", "deny"),
    (CHANGE, "withdraw", None),
    (CHANGE, "opt-out", None),
    (SHOWN, "view", "permit"),
    (SHOWN, "view", "deny"),
    (CHANGE, "opt-out", None),
    (SHOWN, "view", "permit"),
    (SHOWN, "view", "permit"),
]


@dataclass
class Built:
    services: Services
    keys: dict[str, Ed25519PublicKey]
    hashes: dict[int, str]


@pytest.fixture
async def built(store_settings: Settings) -> AsyncIterator[Built]:
    store_settings.audit_checkpoint_entries = EVERY
    services = await bootstrap(store_settings)
    try:
        await build_log(services)
        public = services.log.key.public_key()
        keys = {key_id(public): public}
        verified = (await verify_store(services.engine, keys)).result
        assert verified.ok, verified.problem
        async with services.engine.connect() as conn:
            seqs = [r[0] for r in await conn.execute(text("SELECT seq FROM audit_checkpoints ORDER BY seq"))]
            hashes = {r[0]: r[1] for r in await conn.execute(text("SELECT seq, entry_hash FROM audit_log"))}
            shape = (
                await conn.execute(text("SELECT kind, action, decision FROM audit_log ORDER BY seq"))
            ).all()
        assert seqs == CHECKPOINTS
        assert [tuple(r) for r in shape] == LOG_SHAPE
        assert sorted(hashes) == list(range(1, ENTRIES + 1))
        yield Built(services, keys, hashes)
    finally:
        await services.close(sign=False)


async def test_the_untampered_log_verifies(built: Built) -> None:
    result = (await verify_store(built.services.engine, built.keys)).result
    assert result.ok, result.problem
    assert (result.entries, result.last_seq, result.checkpoints) == (ENTRIES, ENTRIES, len(CHECKPOINTS))
    assert result.last_checkpoint is not None and result.last_checkpoint.seq == CHECKPOINTS[-1]
    assert result.unsigned == ENTRIES - CHECKPOINTS[-1]
    assert result.key_ids == set(built.keys)
    assert result.last_hash == built.hashes[ENTRIES]
    # Hashes noted outside the log earlier and still matching do not get in the way.
    expect = [(9, built.hashes[9]), (ENTRIES, built.hashes[ENTRIES])]
    assert (await verify_store(built.services.engine, built.keys, expect)).result.ok
    # Checked against a key that did not sign it, the first checkpoint is already unknown.
    other = Ed25519PrivateKey.generate().public_key()
    unknown = (await verify_store(built.services.engine, {key_id(other): other})).result.problem
    assert unknown is not None and (unknown.seq, unknown.code) == (3, "unknown-key")


# --- the tampering, one SQL edit each -------------------------------------------------------------

Tamper = Callable[[AsyncConnection], Awaitable[None]]


async def sql(conn: AsyncConnection, statement: str, **params: object) -> None:
    """One edit; it must touch at least one row (a tampering that misses proves nothing)."""
    result = await conn.execute(text(statement), params)
    assert result.rowcount >= 1, statement


async def set_decision(conn: AsyncConnection) -> None:
    await sql(conn, "UPDATE audit_log SET decision = 'permit', reason = 'no-objection' WHERE seq = 4")


async def set_nhs_number(conn: AsyncConnection) -> None:
    await sql(conn, "UPDATE audit_log SET nhs_number = :n WHERE seq = 7", n=D)


async def set_at(conn: AsyncConnection) -> None:
    await sql(conn, "UPDATE audit_log SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 2")


async def set_detail(conn: AsyncConnection) -> None:
    await sql(conn, 'UPDATE audit_log SET detail = \'{"withheld":["Patient/x"]}\' WHERE seq = 8')


async def delete_entry(conn: AsyncConnection) -> None:
    await sql(conn, "DELETE FROM audit_log WHERE seq = 5")


async def read_entries(conn: AsyncConnection) -> dict[int, tuple[Entry, str]]:
    return {s.seq: (s.entry, s.entry_hash) async for chunk in stream_entries(conn) for s in chunk}


async def insert_forged(conn: AsyncConnection) -> None:
    """Make room after entry 4 and insert a forged entry 5 whose own hash is computed correctly."""
    entries = await read_entries(conn)
    await sql(conn, "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 5")
    await sql(conn, "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000")
    forged = Entry(
        at=entries[4][0].at,
        kind="disclosure",
        action="view",
        request_id="req-forged",
        requester_kind="operator",
        org_ods="CONCORD",
        client_id="cli:someone",
        nhs_number=C,
        purpose="direct-care",
        decision="deny",
        reason="local-opt-out",
    )
    digest = link(bytes.fromhex(entries[4][1]), 5, forged).hex()
    names = ["seq", *ENTRY_FIELDS, "entry_hash"]
    columns, values = ", ".join(names), ", ".join(f":{c}" for c in names)
    params = {name: getattr(forged, name) for name in ENTRY_FIELDS}
    await sql(
        conn, f"INSERT INTO audit_log ({columns}) VALUES ({values})", seq=5, entry_hash=digest, **params
    )


async def swap_entries(conn: AsyncConnection) -> None:
    """Entries 7 and 8 change places (their seq swapped through a temporary value)."""
    await sql(conn, "UPDATE audit_log SET seq = -1 WHERE seq = 7")
    await sql(conn, "UPDATE audit_log SET seq = 7 WHERE seq = 8")
    await sql(conn, "UPDATE audit_log SET seq = 8 WHERE seq = -1")


async def truncate_past_checkpoint(conn: AsyncConnection) -> None:
    """Entries 8 to 11 removed (and the head moved back to entry 7); the checkpoint signed at 9 remains."""
    seven = (await conn.execute(text("SELECT entry_hash FROM audit_log WHERE seq = 7"))).scalar_one()
    await sql(conn, "DELETE FROM audit_log WHERE seq > 7")
    await sql(conn, "UPDATE audit_head SET seq = 7, entry_hash = :h, checkpoint_seq = 6", h=seven)


async def edit_head_hash(conn: AsyncConnection) -> None:
    await sql(conn, "UPDATE audit_head SET entry_hash = :h", h="ab" * 32)


async def delete_unsigned_tail_only(conn: AsyncConnection) -> None:
    """Entry 11 (after the last checkpoint) removed, the head left naming it."""
    await sql(conn, "DELETE FROM audit_log WHERE seq = 11")


async def move_head_back(conn: AsyncConnection) -> None:
    """The head set to entry 7, a real entry with its real hash, on an 11-entry log."""
    seven = (await conn.execute(text("SELECT entry_hash FROM audit_log WHERE seq = 7"))).scalar_one()
    await sql(conn, "UPDATE audit_head SET seq = 7, entry_hash = :h", h=seven)


async def delete_head(conn: AsyncConnection) -> None:
    await sql(conn, "DELETE FROM audit_head WHERE id = 1")


async def rewrite_chain(conn: AsyncConnection, edit_seq: int = 5) -> None:
    """Edit entry 5, then recompute every later entry's hash and the head: a consistent chain again."""
    entries = await read_entries(conn)
    previous = bytes.fromhex(entries[edit_seq - 1][1]) if edit_seq > 1 else bytes(32)
    for seq in range(edit_seq, max(entries) + 1):
        entry, _ = entries[seq]
        if seq == edit_seq:
            entry = replace(entry, action="opt-out", reason="telephone")
        previous = link(previous, seq, entry)
        await sql(
            conn,
            "UPDATE audit_log SET action = :action, reason = :reason, entry_hash = :h WHERE seq = :seq",
            action=entry.action,
            reason=entry.reason,
            h=previous.hex(),
            seq=seq,
        )
    await sql(conn, "UPDATE audit_head SET seq = :seq, entry_hash = :h", seq=max(entries), h=previous.hex())


async def forge_signature(conn: AsyncConnection) -> None:
    """Checkpoint 6 given checkpoint 3's (valid, but for another message) signature."""
    row = (await conn.execute(text("SELECT signature FROM audit_checkpoints WHERE seq = 3"))).one()
    await sql(conn, "UPDATE audit_checkpoints SET signature = :s WHERE seq = 6", s=row[0])


async def garbage_signature(conn: AsyncConnection) -> None:
    await sql(conn, "UPDATE audit_checkpoints SET signature = 'not base64 at all!' WHERE seq = 9")


async def move_checkpoint_hash(conn: AsyncConnection) -> None:
    """Checkpoint 6 pointed at another hash without re-signing (as a rewrite would need)."""
    await sql(conn, "UPDATE audit_checkpoints SET entry_hash = :h WHERE seq = 6", h="ab" * 32)


async def rewrite_and_resign_with_own_key(conn: AsyncConnection) -> None:
    """A rewrite whose author re-signs checkpoints 6 and 9 with a key of their own."""
    await rewrite_chain(conn)
    mine = Ed25519PrivateKey.generate()
    entries = await read_entries(conn)
    for seq in (6, 9):
        cp = sign_checkpoint(mine, seq, entries[seq][1], datetime.now(UTC))
        await sql(
            conn,
            "UPDATE audit_checkpoints SET entry_hash = :h, key_id = :k, signature = :s, signed_at = :at "
            "WHERE seq = :seq",
            h=cp.entry_hash,
            k=cp.key_id,
            s=cp.signature,
            at=cp.signed_at,
            seq=seq,
        )


async def truncate_with_its_checkpoints(conn: AsyncConnection) -> None:
    """Entries 8 to 11 removed together with the checkpoint at 9 that would give them away."""
    await truncate_past_checkpoint(conn)
    await sql(conn, "DELETE FROM audit_checkpoints WHERE seq > 7")


@dataclass(frozen=True)
class Case:
    tamper: Tamper
    #: The (seq, code) verify must name.
    problem: tuple[int, str]
    #: Entries noted outside the store (``verify --expect``), picked from the untampered hashes.
    noted: tuple[int, ...] = ()
    #: Words the problem's message must hold.
    says: str = ""


CASES: dict[str, Case] = {
    "update-decision": Case(set_decision, (4, "altered")),
    "update-nhs-number": Case(set_nhs_number, (7, "altered")),
    "update-at": Case(set_at, (2, "altered")),
    "update-detail": Case(set_detail, (8, "altered")),
    "delete-entry": Case(delete_entry, (5, "missing"), says="entry 5 is missing"),
    # The forged entry's own hash is right; the entry after it no longer links.
    "insert-forged": Case(insert_forged, (6, "altered")),
    "swap-entries": Case(swap_entries, (7, "altered")),
    "truncate-past-checkpoint": Case(truncate_past_checkpoint, (8, "truncated"), says="8 to 9 were removed"),
    # Without the checkpoint at 9 only a hash noted outside the store gives the truncation away.
    "truncate-with-its-checkpoints": Case(truncate_with_its_checkpoints, (8, "truncated"), noted=(9,)),
    # Entries 4..6 lie between the last checkpoint that still matches (3) and the one that does not (6).
    "rewrite-chain": Case(rewrite_chain, (4, "rewritten"), says="checkpoint signed at entry 6"),
    "forge-signature": Case(forge_signature, (6, "bad-signature")),
    "garbage-signature": Case(garbage_signature, (9, "bad-signature")),
    "move-checkpoint-hash": Case(move_checkpoint_hash, (6, "bad-signature")),
    "resign-with-own-key": Case(rewrite_and_resign_with_own_key, (6, "unknown-key")),
    # The head: appends chain from it and checkpoints sign it, so it must name a stored entry.
    "edit-head-hash": Case(edit_head_hash, (11, "head"), says="names entry 11 with a hash that entry"),
    "delete-unsigned-tail": Case(delete_unsigned_tail_only, (11, "head"), says="ends at entry 10"),
    "delete-head": Case(delete_head, (12, "head"), says="head is missing"),
    "move-head-back": Case(move_head_back, (8, "head"), says="names entry 7 but the log goes on to entry 11"),
}

TABLES = ("audit_log", "audit_checkpoints", "audit_head")


async def snapshot(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    async with engine.connect() as conn:
        return {
            t: [dict(r) for r in (await conn.execute(text(f"SELECT * FROM {t}"))).mappings()] for t in TABLES
        }


async def restore(engine: AsyncEngine, saved: dict[str, list[dict[str, Any]]]) -> None:
    async with engine.begin() as conn:
        for table, rows in saved.items():
            await conn.execute(text(f"DELETE FROM {table}"))  # may be empty (a case deleted its rows)
            columns = list(rows[0])
            await conn.execute(
                text(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
                ),
                rows,
            )


async def test_every_tampering_is_detected_at_the_first_bad_entry(built: Built) -> None:
    """Each case on the same log (restored between cases); every result is compared at the end."""
    engine = built.services.engine
    saved = await snapshot(engine)
    found: dict[str, tuple[int, str] | None] = {}
    for name, case in CASES.items():
        async with engine.begin() as conn:
            await case.tamper(conn)
        noted = [(seq, built.hashes[seq]) for seq in case.noted]
        problem = (await verify_store(engine, built.keys, noted)).result.problem
        found[name] = None if problem is None else (problem.seq, problem.code)
        if problem is not None:
            assert case.says in problem.message, (name, problem.message)
            assert f"entry {problem.seq}" in problem.message or f"entries {problem.seq}" in problem.message
        await restore(engine, saved)
        restored = (await verify_store(engine, built.keys)).result
        assert restored.ok and restored.entries == ENTRIES, (name, restored.problem)
    assert found == {name: case.problem for name, case in CASES.items()}


async def test_deleting_the_unsigned_tail_needs_a_noted_hash(built: Built) -> None:
    """Deleting entries after the last checkpoint (and moving the head back) is not detected on its own.

    Nothing in the store vouches for entries 10 and 11: no checkpoint covers them yet, and whoever can
    delete them can also move ``audit_head`` back, so what remains is a complete, correctly signed
    chain of nine entries. Only a (seq, hash) noted outside the store -- ``verify --expect`` -- shows
    that entries existed beyond entry 9 (docs/audit-log.md: the unsigned window).
    """
    noted = (ENTRIES, built.hashes[ENTRIES])
    async with built.services.engine.begin() as conn:
        await sql(conn, "DELETE FROM audit_log WHERE seq > 9")
        await sql(conn, "UPDATE audit_head SET seq = 9, entry_hash = :h", h=built.hashes[9])
    alone = (await verify_store(built.services.engine, built.keys)).result
    assert alone.ok, alone.problem
    assert (alone.entries, alone.unsigned) == (9, 0)

    caught = (await verify_store(built.services.engine, built.keys, [noted])).result
    assert caught.problem is not None
    assert (caught.problem.seq, caught.problem.code) == (10, "truncated")


@pytest.mark.parametrize("edit", ["seq = 9", "entry_hash = :h"])
async def test_an_edited_head_is_never_signed(built: Built, edit: str) -> None:
    """The key vouches only for entries that exist: a head moved or rewritten in the store is refused."""
    from gateway.audit.log import HeadMismatch

    async with built.services.engine.begin() as conn:
        await sql(conn, f"UPDATE audit_head SET {edit}, checkpoint_seq = 0", h="ab" * 32)
        before = (await conn.execute(text("SELECT count(*) FROM audit_checkpoints"))).scalar_one()
    with pytest.raises(HeadMismatch):
        await built.services.log.checkpoint()
    async with built.services.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM audit_checkpoints"))).scalar_one() == before


async def test_a_true_head_is_signed(built: Built) -> None:
    cp = await built.services.log.checkpoint()
    assert cp is not None and (cp.seq, cp.entry_hash) == (ENTRIES, built.hashes[ENTRIES])


async def test_an_edited_head_at_shutdown_is_logged_not_signed(
    store_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The command's work is committed; closing reports the head for an auditor instead of failing."""
    store_settings.audit_checkpoint_entries = EVERY
    services = await bootstrap(store_settings)
    try:
        await build_log(services)
        async with services.engine.begin() as conn:
            await sql(conn, "UPDATE audit_head SET seq = 9, checkpoint_seq = 0")
    finally:
        await services.close(sign=True)  # no HeadMismatch: the command that closes has done its work
    assert "not signed; run concord audit verify" in caplog.text
    reopened = await bootstrap(store_settings)
    try:
        async with reopened.engine.connect() as conn:
            signed = [
                r[0] for r in await conn.execute(text("SELECT seq FROM audit_checkpoints ORDER BY seq"))
            ]
    finally:
        await reopened.close(sign=False)
    assert signed == CHECKPOINTS  # nothing was signed over the edited head


# --- the command line -----------------------------------------------------------------------------


def start(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env.update(CONCORD_DATA_DIR=str(data_dir), COLUMNS="200")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, " ".join(err.split())


@pytest.mark.slow
async def test_cli_verify_exit_codes_and_public_key(tmp_path: Path) -> None:
    """`concord audit verify` on the embedded store: 0 intact, 1 naming the first bad entry, unknown keys."""
    data, tampered = tmp_path / "data", tmp_path / "tampered"
    settings = Settings(data_dir=data, audit_checkpoint_entries=EVERY, id_key="0" * 32)
    services = await bootstrap(settings)
    try:
        await build_log(services)
        own = key_id(services.log.key.public_key())
    finally:
        await services.close(sign=False)
    shutil.copytree(data, tampered)  # the same store and signing key, then edited
    db = sqlite3.connect(tampered / "concord.db")
    with db:
        assert db.execute("UPDATE audit_log SET nhs_number = ? WHERE seq = 5", (D,)).rowcount == 1
    db.close()
    wrong = tmp_path / "wrong.pem"
    wrong.write_text(public_key_pem(Ed25519PrivateKey.generate().public_key()))

    # `audit public-key` in process (it only reads the key file); every `verify` is a process of its own.
    printed = CliRunner().invoke(cli, ["audit", "public-key"], env={"CONCORD_DATA_DIR": str(data)})
    assert printed.exit_code == 0, printed.output
    pem = printed.stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert key_id(load_public_key(pem.encode())) == own
    mine = tmp_path / "own.pem"
    mine.write_text(pem)
    refusing = start(data, "audit", "verify", "--public-key", str(wrong))
    intact = start(data, "audit", "verify", "--public-key", str(mine))
    caught = start(tampered, "audit", "verify", "--public-key", str(mine))

    code, out, err = finish(refusing)
    assert (code, out) == (1, "")
    assert "LOG TAMPERED: first bad entry 3 (unknown-key)" in err
    code, out, err = finish(intact)
    assert code == 0, err
    assert f"log intact: {ENTRIES} entries, {len(CHECKPOINTS)} signed checkpoints" in out
    assert f"last checkpoint: entry {CHECKPOINTS[-1]}" in out and f"by key {own}" in out
    code, out, err = finish(caught)
    assert (code, out) == (1, "")
    assert "LOG TAMPERED: first bad entry 5 (altered)" in err
