"""Ingest: adapter records → mappings → the store, in batches, one transaction per batch.

For every batch: map each record (a record that cannot be mapped is
quarantined with its reason), validate what changed with fhir.resources and the
code sets (an invalid record is quarantined whole), merge the touched people's
shared Patients from all sources' contributions, then write new versions, their
outbox rows, quarantine rows and the data-quality tables together.

A shared Patient that does not validate once merged (each contribution did on
its own: a contribution stored under earlier, laxer rules, say) is not written:
the person keeps the version they had, and the data-quality report names them
under ``MERGED_PATIENT_INVALID`` with their sources. The records of the batch are
stored as usual. Holding back the record that came in instead would answer its
sender according to what other organisations hold about the person (and whatever
their consent), and would block every source's records for that person.

Memory is bounded by the batch size, not the extract: records stream in from
the adapter and only the touched people's contributions are loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.fhir import SOURCE as FHIR_SOURCE
from adapters.records import NOT_HELD_WHOLE, Item, RecordError, SourceRecord
from adapters.registry import ADAPTERS
from consent.model import Requester, RequesterKind
from gateway.prevalidate import Prevalidator
from gateway.register import ConsentRegister, GpOptOut
from gateway.report import IngestReport
from gateway.store import people, quarantine
from gateway.store.dialect import upsert
from gateway.store.people import StoredContribution
from gateway.store.resources import (
    ConcurrentWrite,
    Current,
    Key,
    Version,
    current_versions,
    move_recorded,
    write_versions,
)
from gateway.store.schema import ingest_runs, unknown_codes
from gateway.store.versioning import content_hash, now, stamp
from mappings import nhs_number
from mappings.engine import MappingError, shown_code
from mappings.mapper import MappedRecord, Mapper, contribution_resource, provenance
from mappings.shared_view import Conflict, Contribution, merge, recorded_instant, retired
from mappings.validate import ValidationFailure, validate

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
_RETRIES = 3
#: The data-quality report's element for a person whose shared Patient would not validate once merged.
MERGED_PATIENT_INVALID: Final = "Patient (not valid once merged)"


class ValidatedCache:
    """Content hashes already validated in this process (bounded LRU): the same content is valid again."""

    def __init__(self, size: int = 20_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, hashes: Iterable[str]) -> None:
        """Content validated elsewhere (the prevalidation worker): its hashes count as validated."""
        for chash in hashes:
            self._remember(chash)

    def validate(self, resource: dict[str, Any], chash: str) -> None:
        if chash in self._seen:
            self._seen.move_to_end(chash)
            return
        validate(resource)
        self._remember(chash)

    def _remember(self, chash: str) -> None:
        self._seen[chash] = None
        self._seen.move_to_end(chash)
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)


@dataclass(slots=True)
class _Batch:
    """What one batch will write, built before anything is written."""

    when: datetime
    report: IngestReport
    errors: list[RecordError] = field(default_factory=list)
    versions: list[Version] = field(default_factory=list)
    contributions: dict[tuple[str, str, str], StoredContribution] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    warnings: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: Resource keys whose current version was looked up for this batch (absent from ``current``: new).
    loaded: set[Key] = field(default_factory=set)
    #: Conflicts found for each rebuilt person (empty list: none any more).
    conflicts: dict[str, list[Conflict]] = field(default_factory=dict)
    #: GP rows whose opt-out code is new or changed: the consent register follows them.
    opt_outs: list[GpOptOut] = field(default_factory=list)
    #: (source, sender's ODS code, local id) that a merge in this batch retires: their contributions
    #: are not staged (a merge by an unnamed sender, or of a record from one, matches any sender).
    superseded: set[tuple[str, str | None, str]] = field(default_factory=set)
    #: People whose consent changed in this batch, with their new epochs (caches are told after commit).
    consent_epochs: dict[str, int] = field(default_factory=dict)
    #: Unchanged resources whose source recorded them again, later: their ``recorded`` moves forward.
    recorded_later: dict[Key, str] = field(default_factory=dict)


#: Sources whose records are feed events, applied in the order their source recorded them. A FHIR
#: push is an explicit write (FHIR update: the last request wins, ``ifMatch`` guards concurrency),
#: so its ``Bundle.timestamp`` never holds one back.
ORDERED_SOURCES: Final = frozenset(ADAPTERS) - {FHIR_SOURCE}


class Ingestor:
    """Runs ingests into one store. Stateless between runs but for the validation cache."""

    def __init__(
        self,
        engine: AsyncEngine,
        mapper: Mapper,
        batch_size: int = 500,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.engine = engine
        self.mapper = mapper
        self.batch_size = batch_size
        self.clock = clock
        self.cache = ValidatedCache()
        #: Set by the caller for large runs: validates the next batch in a worker process.
        self.prevalidator: Prevalidator | None = None
        #: The consent register that opt-out codes in GP extracts update (None: codes are only kept).
        self.register: ConsentRegister | None = None
        self.actor = Requester(RequesterKind.SOURCE, "CONCORD", "ingest")
        #: Called after each batch commits (wakes publishers: the batch wrote outbox rows).
        self.on_commit: Callable[[], Awaitable[None]] | None = None

    async def run(
        self, source: str, items: Iterable[Item], input_name: str, progress: ProgressFn | None = None
    ) -> IngestReport:
        """Ingest every item; returns the report (also stored with the run)."""
        report = IngestReport(source, input_name)
        report.run_id = await self._start_run(source, input_name)
        # With a prevalidator, the next batches are validated in worker processes while this one is
        # written; ``ahead`` holds them in order with their pending results.
        ahead: deque[tuple[list[Item], asyncio.Future[list[str]] | None]] = deque()
        batches = _batches(items, self.batch_size)
        depth = self.prevalidator.workers if self.prevalidator else 0
        while True:
            while len(ahead) <= depth and (batch := next(batches, None)) is not None:
                ahead.append((batch, self.prevalidator.submit(batch) if self.prevalidator else None))
            if not ahead:
                break
            batch, validated = ahead.popleft()
            if validated is not None:
                self.cache.add(await validated)
            delta = await self._commit(batch, report.run_id)
            _add(report, delta)
            if progress:
                progress(len(batch))
        await self._finish_run(report)
        return report

    async def replay(self, ids: Sequence[int], adapters: dict[str, Any]) -> IngestReport:
        """Read quarantined records again (after a mapping or data fix) and ingest those that now pass."""
        report = IngestReport("replay", ",".join(str(i) for i in ids[:20]))
        for qid in ids:
            async with self.engine.connect() as conn:
                row = await quarantine.get(conn, qid)
            if row is None or row.status != "open":
                continue
            if row.reason in NOT_HELD_WHOLE:  # only its start is held: the same reason again
                items: list[Item] = [
                    RecordError(row.source, row.location, row.reason, row.field, row.detail, row.raw)
                ]
            else:
                items = list(adapters[row.source].reread(row.raw, row.location))
            delta = await self._commit(items, None, replay_of=qid)
            _add(report, delta)
        return report

    async def _commit(
        self, items: Sequence[Item], run_id: int | None, replay_of: int | None = None
    ) -> IngestReport:
        for attempt in range(_RETRIES):
            try:
                async with self.engine.begin() as conn:
                    batch = await self._apply(conn, items, run_id, replay_of)
                if batch.consent_epochs and self.register is not None:
                    await self.register.decider.changed(batch.consent_epochs)
                if batch.versions or batch.consent_epochs:
                    await self._committed()
                return batch.report
            except (ConcurrentWrite, IntegrityError):
                # Another writer changed the same resources between our read and write.
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _apply(
        self, conn: AsyncConnection, items: Sequence[Item], run_id: int | None, replay_of: int | None
    ) -> _Batch:
        batch = _Batch(self.clock(), IngestReport("", ""))
        mapped = self._map(items, batch)
        stored = await people.load_contributions(conn, {m.nhs_number for _, m in mapped})
        by_person: dict[str, dict[tuple[str, str], StoredContribution]] = {}
        for c in stored:
            by_person.setdefault(c.nhs_number, {})[(c.source, c.local_id)] = c
        batch.loaded = _keys(mapped, self.mapper)
        batch.superseded = {
            (m.source, m.source_ods or None, m.replaces_local_id)
            for _, m in mapped
            if m.replaces_local_id and m.replaces_local_id != m.local_id
        }
        current = await current_versions(conn, batch.loaded)
        for record, m in mapped:
            self._accept(record, m, by_person, current, batch)
        await self._retire_merged(conn, mapped, by_person, batch)
        await people.save_contributions(conn, list(batch.contributions.values()))
        for number in sorted(batch.touched):
            await self._rebuild_person(conn, number, by_person.get(number, {}), current, batch)
        await people.set_conflicts(conn, batch.conflicts, batch.when)
        await write_versions(conn, batch.versions)
        await move_recorded(conn, batch.recorded_later)
        await self._follow_opt_outs(conn, batch)
        await self._write_quality(conn, batch)
        if replay_of is None:
            await quarantine.add(conn, run_id, batch.errors, batch.when)
        elif batch.errors:
            await quarantine.requarantine(conn, replay_of, batch.errors[0])
        else:
            await quarantine.resolve(conn, replay_of, batch.when)
        for e in batch.errors:
            batch.report.quarantined[e.reason] += 1
        return batch

    async def _committed(self) -> None:
        if self.on_commit is not None:
            await self.on_commit()

    async def _follow_opt_outs(self, conn: AsyncConnection, batch: _Batch) -> None:
        """Record (or withdraw) the opt-outs GP rows carry, in this batch's transaction."""
        if not batch.opt_outs or self.register is None:
            return
        epochs, unknown = await self.register.apply_gp_codes(conn, batch.opt_outs, self.actor, "ingest")
        batch.consent_epochs.update(epochs)
        for code in unknown:
            key = (
                "gp",
                "opt_out_code",
                f"unknown opt-out {shown_code(code)}: read as local shared care record dissent",
            )
            batch.warnings[key] = batch.warnings.get(key, 0) + 1

    async def _retire_merged(
        self,
        conn: AsyncConnection,
        mapped: Sequence[tuple[SourceRecord, MappedRecord]],
        by_person: dict[str, dict[tuple[str, str], StoredContribution]],
        batch: _Batch,
    ) -> None:
        """An HL7 merge (A40) supersedes a local id: retire its contribution and rebuild whom it touched.

        Only the merging sender's contribution under that id goes (another trust may use the same
        number for someone else). A merge that keeps the hospital number (two NHS numbers joined
        under one) retires only the contribution held for the merged-away NHS number.
        """
        for record, m in mapped:
            old = m.replaces_local_id or ""
            if not old:
                continue
            merged_nhs: str | None = None
            if old == m.local_id:
                merged_nhs = _nhs_or_none(record.fields.get("merged_nhs_number"))
                if merged_nhs is None or merged_nhs == m.nhs_number:
                    continue  # the survivor itself: nothing else to retire
            numbers = await people.retire_contribution(
                conn, m.source, old, source_ods=m.source_ods, nhs_number=merged_nhs
            )
            if merged_nhs is not None and (m.source, old, merged_nhs) in batch.contributions:
                del batch.contributions[(m.source, old, merged_nhs)]  # staged earlier in this batch
                numbers.append(merged_nhs)
            unseen = [n for n in numbers if n not in by_person]
            for c in await people.load_contributions(conn, unseen):
                by_person.setdefault(c.nhs_number, {})[(c.source, c.local_id)] = c
            for number in numbers:
                by_person.get(number, {}).pop((m.source, old), None)
                batch.touched.add(number)

    def _map(self, items: Sequence[Item], batch: _Batch) -> list[tuple[SourceRecord, MappedRecord]]:
        mapped = []
        for item in items:
            batch.report.records += 1
            if isinstance(item, RecordError):
                batch.errors.append(item)
                continue
            try:
                mapped.append((item, self.mapper.map(item)))
            except MappingError as exc:
                issue = exc.issue
                batch.errors.append(
                    RecordError(
                        item.source,
                        item.location,
                        issue.reason,
                        issue.field,
                        issue.detail,
                        item.raw,
                        item.local_id,
                    )
                )
        return mapped

    def _accept(
        self,
        record: SourceRecord,
        m: MappedRecord,
        by_person: dict[str, dict[tuple[str, str], StoredContribution]],
        current: dict[Key, Current],
        batch: _Batch,
    ) -> None:
        """Validate one mapped record and stage its writes, or quarantine it whole."""
        patient = contribution_resource(m)
        chash = content_hash(patient)
        staged: list[Version] = []
        outcomes: list[str] = []
        local_current = dict(current)
        try:
            self.cache.validate(patient, chash)
            for resource in m.resources:
                key = (resource["resourceType"], resource["id"])
                rhash = content_hash(resource)
                cur = local_current.get(key)
                ordered = m.source in ORDERED_SOURCES and bool(m.recorded)
                if cur is not None and cur.content_hash == rhash:
                    if ordered and (not cur.recorded or _older(cur.recorded, m.recorded)):
                        # The same content recorded again, later: an older change after it is older still.
                        batch.recorded_later[key] = m.recorded
                        local_current[key] = Current(cur.version_id, cur.content_hash, m.recorded)
                    batch.report.count_resource(key[0], "unchanged")
                    outcomes.append("unchanged")
                    continue
                if cur is not None and ordered and cur.recorded and _older(m.recorded, cur.recorded):
                    # From a record older than the one that wrote it (an A03 re-read after the A13
                    # that cancelled it, an older extract replayed): never written over.
                    batch.report.count_resource(key[0], "unchanged")
                    outcomes.append("unchanged")
                    continue
                version_id = cur.version_id + 1 if cur else 1
                stamped = stamp(resource, version_id, batch.when)
                self.cache.validate(stamped, rhash)
                recorded = m.recorded or None
                batch.recorded_later.pop(key, None)  # this version's time, until a later record's
                staged.append(
                    Version(
                        key[0],
                        key[1],
                        version_id,
                        batch.when,
                        rhash,
                        stamped,
                        m.nhs_number,
                        m.source,
                        recorded,
                    )
                )
                local_current[key] = Current(version_id, rhash, recorded)
                outcomes.append("new" if version_id == 1 else "changed")
        except ValidationFailure as exc:
            batch.errors.append(
                RecordError(
                    record.source, record.location, exc.reason, None, str(exc), record.raw, record.local_id
                )
            )
            return
        current.update(local_current)
        for v in staged:
            batch.report.count_resource(v.resource_type, "new" if v.version_id == 1 else "changed")
        batch.versions.extend(staged)
        previous = by_person.get(m.nhs_number, {}).get((m.source, m.local_id))
        if previous is not None and _older(m.recorded, previous.recorded):
            # An older message arriving late (or an event feed re-read) never overwrites newer demographics.
            pass
        elif _superseded(batch.superseded, m):
            pass  # a merge in this batch retires this local id (HL7 A40): its demographics are not kept
        elif previous is None or previous.content_hash != chash or previous.opt_out_code != m.opt_out_code:
            outcomes.append("new" if previous is None else "changed")
            contribution = StoredContribution(
                m.source,
                m.local_id,
                m.nhs_number,
                m.source_ods,
                m.opt_out_code,
                m.recorded,
                chash,
                m.contribution,
            )
            batch.contributions[(m.source, m.local_id, m.nhs_number)] = contribution
            if m.source == "gp" and (previous.opt_out_code if previous else None) != m.opt_out_code:
                batch.opt_outs.append(
                    GpOptOut(
                        m.nhs_number,
                        m.source_ods or "",
                        m.local_id,
                        m.opt_out_code,
                        _instant(m.recorded, batch.when),
                    )
                )
            by_person.setdefault(m.nhs_number, {})[(m.source, m.local_id)] = contribution
            batch.touched.add(m.nhs_number)
        for w in m.warnings:
            key3 = (m.source, w.field or "", w.detail[:255])
            batch.warnings[key3] = batch.warnings.get(key3, 0) + 1
            batch.report.warnings[w.reason] += 1
        batch.report.accepted += 1
        if "new" in outcomes:
            batch.report.new += 1
        elif "changed" in outcomes:
            batch.report.changed += 1
        else:
            batch.report.unchanged += 1

    async def _rebuild_person(
        self,
        conn: AsyncConnection,
        nhs_number: str,
        contributions: dict[tuple[str, str], StoredContribution],
        current: dict[Key, Current],
        batch: _Batch,
    ) -> None:
        """Re-merge one person's shared Patient and its per-source Provenance; stage what changed.

        A person no source holds any more (a merge retired their last record) keeps a Patient that
        says so: inactive (``shared_view.retired``).
        """
        patient_id = self.mapper.ids.patient(nhs_number)
        if not contributions:
            key = ("Patient", patient_id)
            if key not in current and not await current_versions(conn, [key]):
                return  # never stored (a record staged and retired within this batch): nothing to say
            await self._stage(conn, [retired(patient_id, nhs_number)], nhs_number, current, batch)
            batch.conflicts[nhs_number] = []  # nothing left to disagree
            return
        merged, found = merge(
            patient_id,
            [Contribution(c.source, c.local_id, c.content, c.recorded) for c in contributions.values()],
        )
        try:  # the Patient first and alone: when it is not valid, nothing of it is staged
            await self._stage(conn, [merged], nhs_number, current, batch)
        except ValidationFailure as exc:
            log.warning(
                "a shared Patient is not valid once merged (%s): its previous version is kept", exc.reason
            )
            sources = tuple(sorted({c.source for c in contributions.values()}))
            found = [*found, Conflict(MERGED_PATIENT_INVALID, sources, 0)]  # no values compared
        else:
            by_source: dict[str, list[StoredContribution]] = {}
            for c in contributions.values():
                by_source.setdefault(c.source, []).append(c)
            provenances = [
                provenance(
                    self.mapper.ids,
                    source,
                    f"Patient/{patient_id}",
                    [c.local_id for c in group],
                    next((c.source_ods for c in group if c.source_ods), None),
                    "Patient",
                )
                for source, group in sorted(by_source.items())
            ]
            await self._stage(conn, provenances, nhs_number, current, batch)
        batch.conflicts[nhs_number] = found
        for conflict in found:
            batch.report.conflicts[conflict.element] += 1

    async def _stage(
        self,
        conn: AsyncConnection,
        resources: Sequence[dict[str, Any]],
        nhs_number: str,
        current: dict[Key, Current],
        batch: _Batch,
    ) -> None:
        """A new version of each of a person's ``resources`` whose content changed, validated."""
        for resource in resources:
            key = (resource["resourceType"], resource["id"])
            rhash = content_hash(resource)
            cur = current.get(key)
            if cur is not None and cur.content_hash == rhash:
                continue
            if cur is None and key not in batch.loaded:
                # Not loaded with the batch (a person touched only through a merge): look it up now.
                cur = (await current_versions(conn, [key])).get(key)
                if cur is not None and cur.content_hash == rhash:
                    current[key] = cur
                    continue
            version_id = cur.version_id + 1 if cur else 1
            stamped = stamp(resource, version_id, batch.when)
            self.cache.validate(stamped, rhash)
            batch.versions.append(
                Version(key[0], key[1], version_id, batch.when, rhash, stamped, nhs_number, None)
            )
            current[key] = Current(version_id, rhash)
            batch.report.count_resource(key[0], "new" if version_id == 1 else "changed")

    async def _write_quality(self, conn: AsyncConnection, batch: _Batch) -> None:
        if not batch.warnings:
            return
        stmt = upsert(conn, unknown_codes, ["source", "field", "detail"], ["last_seen"], add=["occurrences"])
        await conn.execute(
            stmt,
            [
                {"source": s, "field": f, "detail": d, "occurrences": n, "last_seen": batch.when}
                for (s, f, d), n in sorted(batch.warnings.items())
            ],
        )

    async def _start_run(self, source: str, input_name: str) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                ingest_runs.insert().values(
                    source=source, input_name=input_name[:255], started_at=self.clock()
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    async def _finish_run(self, report: IngestReport) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(ingest_runs)
                .where(ingest_runs.c.id == report.run_id)
                .values(finished_at=self.clock(), report=orjson.dumps(report.as_dict()).decode())
            )


def _instant(recorded: str, fallback: datetime) -> datetime:
    seconds = recorded_instant(recorded)
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else fallback


def _older(recorded: str, than: str) -> bool:
    mine, theirs = recorded_instant(recorded), recorded_instant(than)
    return mine is not None and theirs is not None and mine < theirs


def _keys(mapped: Sequence[tuple[SourceRecord, MappedRecord]], mapper: Mapper) -> set[Key]:
    keys: set[Key] = set()
    for _, m in mapped:
        keys.update((r["resourceType"], r["id"]) for r in m.resources)
        keys.add(("Patient", m.patient_id))
        keys.add(("Provenance", mapper.ids.make("Provenance", m.source, f"Patient/{m.patient_id}")))
    return keys


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _add(total: IngestReport, delta: IngestReport) -> None:
    total.records += delta.records
    total.accepted += delta.accepted
    total.new += delta.new
    total.changed += delta.changed
    total.unchanged += delta.unchanged
    total.quarantined.update(delta.quarantined)
    total.warnings.update(delta.warnings)
    total.conflicts.update(delta.conflicts)
    for rtype, counts in delta.resources.items():
        total.resources.setdefault(rtype, type(counts)()).update(counts)


def _nhs_or_none(value: object) -> str | None:
    """A valid NHS number from ``value`` (spaces allowed), else None."""
    try:
        return nhs_number.normalise(str(value)) if value else None
    except nhs_number.NhsNumberError:
        return None


def _superseded(superseded: set[tuple[str, str | None, str]], m: MappedRecord) -> bool:
    """Whether a merge in this batch retires ``m``'s local id at ``m``'s sender (as
    ``people.retire_contribution`` matches: a record or merge with no named sender matches any)."""
    if not superseded:
        return False
    if m.source_ods is None or m.source_ods == "":
        return any((s, lid) == (m.source, m.local_id) for s, _, lid in superseded)
    return (m.source, m.source_ods, m.local_id) in superseded or (m.source, None, m.local_id) in superseded
