"""The opt-out register: record and withdraw opt-outs, each change and its log entry in one transaction.

Every change follows the same steps: lock the log's head (which also orders
concurrent changes), read the person's facts, write the Consent, append the
log entry, commit; then tell the decision caches (``Decider.changed``) and only
then return. Once a method here returns, no process serves or publishes data
its change forbids. Opt-outs and withdrawals requested at the same time share
one transaction (group commit): each is still made in order, on the facts the
ones before it left.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consent.chain import Entry, Kind, detail, timestamp
from consent.codes import gp_opt_out
from consent.model import Authority, Facts, OptOut, OptOutKind, Requester
from consent.resource import consent_resource
from gateway.audit.log import AuditLog
from gateway.decisions import Decider
from gateway.group_commit import GroupCommit
from gateway.store.audit import Head, lock_head
from gateway.store.consents import (
    consent_resources,
    find_by_source_ref,
    insert_opt_out,
    read_facts,
    read_facts_many,
    save_withdrawal,
    version_of,
)
from gateway.store.schema import consents, outbox
from mappings import nhs_number as nhs
from mappings.ids import IdMaker


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Change:
    """One opt-out after a request: ``changed`` False when it was already so (nothing was written)."""

    opt_out: OptOut
    action: str
    changed: bool


@dataclass(frozen=True, slots=True)
class GpOptOut:
    """An opt-out code (or its absence) on one GP extract row."""

    nhs_number: str
    practice_ods: str
    local_id: str
    code: str | None
    recorded_at: datetime


@dataclass(slots=True)
class ImportReport:
    lines: int = 0
    recorded: int = 0
    already: int = 0
    withdrawn: int = 0
    #: ``replace`` was asked for but the file had invalid lines, so nothing was withdrawn.
    replace_refused: bool = False
    #: (line number, reason): the NHS number itself is not repeated here.
    invalid: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "recorded": self.recorded,
            "already": self.already,
            "withdrawn": self.withdrawn,
            "replace_refused": self.replace_refused,
            "invalid": [{"line": n, "reason": r} for n, r in self.invalid],
        }


@dataclass(slots=True)
class _Staged:
    """Changes written in this transaction whose log entries and outbox rows are still to be added:
    ``seq`` is the log sequence the last of them will have."""

    seq: int
    entries: list[Entry] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    epochs: dict[str, int] = field(default_factory=dict)


#: One change's work inside the register's transaction: it writes its Consents (staging their log
#: entries and outbox rows) and returns what it reports to its caller.
Record = Callable[[AsyncConnection, _Staged], Awaitable[list[Change]]]


@dataclass(slots=True)
class _Queued:
    record: Record
    changes: list[Change] = field(default_factory=list)


class ConsentRegister:
    def __init__(
        self,
        engine: AsyncEngine,
        log: AuditLog,
        decider: Decider,
        ids: IdMaker,
        policy_uri: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.log = log
        self.decider = decider
        self.ids = ids
        self.policy_uri = policy_uri
        self.clock = clock
        #: Called after each change commits and the caches know (wakes publishers to retract).
        self.on_commit: Callable[[], Awaitable[None]] | None = None
        # Opt-outs and withdrawals made at once share a transaction (``_commit_changes``): on SQLite
        # every writer, the publisher included, queues for one write lock, and a change held it for
        # about 5 ms on its own (measured: at 200 changes/s the lock was never free).
        self._changes: GroupCommit[_Queued] = GroupCommit(self._commit_changes, max_batch=100)

    async def facts(self, nhs_number: str) -> Facts:
        async with self.engine.connect() as conn:
            return await read_facts(conn, nhs.normalise(nhs_number))

    async def resources(self, nhs_number: str) -> list[dict[str, Any]]:
        """The person's opt-outs as FHIR Consent resources, oldest first."""
        async with self.engine.connect() as conn:
            return await consent_resources(conn, nhs.normalise(nhs_number))

    async def opt_out(
        self,
        nhs_number: str,
        kind: OptOutKind,
        authority: Authority,
        actor: Requester,
        request_id: str,
        source: str = "cli",
    ) -> Change:
        """Record an opt-out; a second one of the same kind while one is in force changes nothing."""
        number = nhs.normalise(nhs_number)

        async def record(conn: AsyncConnection, staged: _Staged) -> list[Change]:
            existing = (await read_facts(conn, number)).active(kind)
            if existing is not None:
                return [Change(existing, "opt-out", False)]
            opt_out = OptOut(
                id=uuid.uuid4().hex,
                nhs_number=number,
                kind=kind,
                authority=authority,
                recorded_by=actor.client_id,
                recorded_by_ods=actor.ods_code,
                recorded_at=self.clock(),
                source=source,
            )
            await self._stage(conn, staged, [(opt_out, 0)], actor, request_id)
            return [Change(opt_out, "opt-out", True)]

        return (await self._change(record))[0]

    async def withdraw(
        self,
        nhs_number: str,
        kind: OptOutKind | None,
        authority: Authority,
        actor: Requester,
        request_id: str,
    ) -> list[Change]:
        """Withdraw the person's opt-outs in force (of ``kind``, or all). Empty when none was in force."""
        number = nhs.normalise(nhs_number)

        async def record(conn: AsyncConnection, staged: _Staged) -> list[Change]:
            facts = await read_facts(conn, number)
            now = self.clock()
            pending = [
                (o.withdrawn(now, actor.client_id, authority), await version_of(conn, o.id))
                for o in facts.opt_outs
                if o.active and (kind is None or o.kind is kind)
            ]
            if not pending:
                return []
            await self._stage(conn, staged, pending, actor, request_id)
            return [Change(o, "withdraw", True) for o, _ in pending]

        return await self._change(record)

    async def _change(self, record: Record) -> list[Change]:
        """Run ``record`` in the register's next transaction (shared with changes made meanwhile);
        return its changes once they are committed and every decision cache knows of them."""
        change = _Queued(record)
        await self._changes.submit(change)
        return change.changes

    async def _commit_changes(self, queued: list[_Queued]) -> None:
        """One transaction for every change queued: one lock of the log's head, one commit. Each
        change reads what the ones before it in the batch wrote (a person changed twice in one
        batch is changed in order). Then the caches are told of all of them before any returns."""
        async with self.engine.begin() as conn:
            head = await lock_head(conn)
            staged = _Staged(head.seq)
            for change in queued:
                change.changes = await change.record(conn, staged)
            await self._flush(conn, head, staged)
        epochs = staged.epochs
        if epochs:
            await self.decider.changed(epochs)
            if self.on_commit is not None:
                await self.on_commit()

    async def import_numbers(
        self,
        lines: Iterable[str],
        kind: OptOutKind,
        authority: Authority,
        actor: Requester,
        request_id: str,
        replace_all: bool = False,
        batch_size: int = 1000,
    ) -> ImportReport:
        """Record an opt-out for every NHS number in ``lines`` (one a line; blank lines and ``#`` skipped).

        ``replace_all``: the file is the complete list (as the national service's is), so opt-outs of
        ``kind`` this import recorded earlier and absent from the file are withdrawn.
        """
        report = ImportReport()
        listed: set[str] = set()
        batch: list[str] = []
        for number, line in enumerate(lines, start=1):
            report.lines = number
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                value = nhs.normalise(text)
            except nhs.NhsNumberError as exc:
                report.invalid.append((number, exc.code))
                continue
            listed.add(value)
            batch.append(value)
            if len(batch) >= batch_size:
                await self._import_batch(batch, kind, authority, actor, request_id, report)
                batch = []
        if batch:
            await self._import_batch(batch, kind, authority, actor, request_id, report)
        if replace_all and report.invalid:
            # A damaged line may be someone still opted out: withdrawing on a damaged list would
            # resume sharing by mistake, so nothing is withdrawn until the file reads cleanly.
            report.replace_refused = True
        elif replace_all:
            await self._withdraw_unlisted(listed, kind, authority, actor, request_id, report)
        return report

    async def _import_batch(
        self,
        numbers: Sequence[str],
        kind: OptOutKind,
        authority: Authority,
        actor: Requester,
        request_id: str,
        report: ImportReport,
    ) -> None:
        async with self.engine.begin() as conn:
            head = await lock_head(conn)
            facts = await read_facts_many(conn, numbers)
            now = self.clock()
            pending: list[tuple[OptOut, int]] = []
            seen: set[str] = set()
            for number in numbers:
                if number in seen or facts[number].active(kind) is not None:
                    report.already += 1
                    continue
                seen.add(number)
                pending.append(
                    (
                        OptOut(
                            id=uuid.uuid4().hex,
                            nhs_number=number,
                            kind=kind,
                            authority=authority,
                            recorded_by=actor.client_id,
                            recorded_by_ods=actor.ods_code,
                            recorded_at=now,
                            source="import",
                            source_ref=f"import:{authority.value}:{kind.value}:{number}",
                        ),
                        0,
                    )
                )
            if not pending:
                return
            head, epochs = await self._record(conn, head, pending, actor, request_id)
        report.recorded += len(pending)
        await self.decider.changed(epochs)
        if self.on_commit is not None:
            await self.on_commit()

    async def _withdraw_unlisted(
        self,
        listed: set[str],
        kind: OptOutKind,
        authority: Authority,
        actor: Requester,
        request_id: str,
        report: ImportReport,
    ) -> None:
        async with self.engine.begin() as conn:
            head = await lock_head(conn)
            rows = await conn.execute(
                select(consents.c.id, consents.c.nhs_number, consents.c.version_id).where(
                    consents.c.source == "import",
                    consents.c.kind == kind.value,
                    consents.c.authority == authority.value,
                    consents.c.status == "active",
                )
            )
            gone = [(cid, number, version) for cid, number, version in rows.all() if number not in listed]
            if not gone:
                return
            facts = await read_facts_many(conn, [number for _, number, _ in gone])
            now = self.clock()
            by_id = {o.id: o for f in facts.values() for o in f.opt_outs}
            pending = [
                (by_id[cid].withdrawn(now, actor.client_id, authority), version) for cid, _, version in gone
            ]
            head, epochs = await self._record(conn, head, pending, actor, request_id)
        report.withdrawn += len(pending)
        await self.decider.changed(epochs)
        if self.on_commit is not None:
            await self.on_commit()

    async def apply_gp_codes(
        self, conn: AsyncConnection, rows: Sequence[GpOptOut], actor: Requester, request_id: str
    ) -> tuple[dict[str, int], list[str]]:
        """Bring the register in line with opt-out codes on GP extract rows, inside the ingest's transaction.

        A code records an opt-out (once per practice and patient); a row without the code that earlier
        carried one withdraws it. Returns the changed people's new epochs (for ``Decider.changed``,
        once the caller has committed) and the unknown codes met (read as local opt-outs).
        """
        if not rows:
            return {}, []
        refs = {f"gp:{r.practice_ods}:{r.local_id}:{r.nhs_number}": r for r in rows}
        known = await find_by_source_ref(conn, refs)
        pending: list[tuple[OptOut, int]] = []
        unknown: list[str] = []
        for ref, row in refs.items():
            existing = known.get(ref)
            if row.code:
                kind, recognised = gp_opt_out(row.code)
                if not recognised:
                    unknown.append(row.code)
                if existing is not None and existing.active and existing.kind is kind:
                    continue
                if existing is not None and existing.active:
                    # The practice recorded a different opt-out: withdraw the old, record the new.
                    pending.append(
                        (
                            existing.withdrawn(row.recorded_at, actor.client_id, Authority.GP_EXTRACT),
                            await version_of(conn, existing.id),
                        )
                    )
                pending.append(
                    (
                        OptOut(
                            id=uuid.uuid4().hex,
                            nhs_number=row.nhs_number,
                            kind=kind,
                            authority=Authority.PATIENT_AT_GP,
                            recorded_by=actor.client_id,
                            recorded_by_ods=row.practice_ods,
                            recorded_at=row.recorded_at,
                            source="gp-extract",
                            source_ref=ref,
                        ),
                        0,
                    )
                )
            elif existing is not None and existing.active:
                pending.append(
                    (
                        existing.withdrawn(row.recorded_at, actor.client_id, Authority.GP_EXTRACT),
                        await version_of(conn, existing.id),
                    )
                )
        if not pending:
            return {}, unknown
        _head, epochs = await self._record(conn, await lock_head(conn), pending, actor, request_id)
        return epochs, unknown

    async def _record(
        self,
        conn: AsyncConnection,
        head: Head,
        pending: Sequence[tuple[OptOut, int]],
        actor: Requester,
        request_id: str,
    ) -> tuple[Head, dict[str, int]]:
        """Write each opt-out (version 0: new), its log entry and outbox row under the held head lock."""
        staged = _Staged(head.seq)
        await self._stage(conn, staged, pending, actor, request_id)
        return await self._flush(conn, head, staged), staged.epochs

    async def _stage(
        self,
        conn: AsyncConnection,
        staged: _Staged,
        pending: Sequence[tuple[OptOut, int]],
        actor: Requester,
        request_id: str,
    ) -> None:
        """Write each opt-out's Consent (version 0: new) and stage its log entry and outbox row."""
        at = timestamp(self.clock())
        now = self.clock()
        for opt_out, version in pending:
            staged.seq += 1
            content = consent_resource(
                opt_out, self.ids.patient(opt_out.nhs_number), self.policy_uri, version + 1, at
            )
            if version == 0:
                await insert_opt_out(conn, opt_out, staged.seq, content)
            else:
                await save_withdrawal(conn, opt_out, staged.seq, version + 1, content)
            staged.epochs[opt_out.nhs_number] = staged.seq
            staged.entries.append(
                Entry(
                    at=at,
                    kind=Kind.CONSENT_CHANGE,
                    action="opt-out" if opt_out.active else "withdraw",
                    request_id=request_id,
                    requester_kind=actor.kind.value,
                    org_ods=actor.ods_code,
                    client_id=actor.client_id,
                    nhs_number=opt_out.nhs_number,
                    reason=(opt_out.withdrawal_authority or opt_out.authority).value,
                    consent_id=opt_out.id,
                    detail=detail(kind=opt_out.kind.value, source=opt_out.source, version=version + 1),
                )
            )
            # The publisher hears of every change in the same transaction: an opt-out retracts what
            # the HIE holds for the person, a withdrawal republishes it.
            staged.outbox.append(
                {
                    "nhs_number": opt_out.nhs_number,
                    "resource_type": "Consent",
                    "resource_id": opt_out.id,
                    "version_id": version + 1,
                    "created_at": now,
                }
            )

    async def _flush(self, conn: AsyncConnection, head: Head, staged: _Staged) -> Head:
        """Append the staged log entries (their sequence numbers are the ones staged) and outbox rows."""
        if not staged.entries:
            return head
        head = await self.log.append_locked(conn, head, staged.entries)
        assert head.seq == staged.seq, "the log's head moved while the head lock was held"
        await conn.execute(outbox.insert(), staged.outbox)
        return head
