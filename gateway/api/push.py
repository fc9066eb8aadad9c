"""The push service: a pushed body → the source's adapter → the ingest pipeline → what was accepted.

Pushes go through exactly the path ``concord ingest`` takes (``Ingestor.run``:
mapping, validation, quarantine, one transaction per batch). Two differences,
both because the body is already in memory (the API caps it):

- the body is read whole by the adapter *before* anything is written, so a
  body that cannot be read at all (not JSON, not a Bundle, a social care export
  that breaks off) is refused with 400 and nothing of it is stored;
- the answer names what happened to each record: for a FHIR Bundle a
  ``transaction-response`` (``batch-response`` for a batch) with one entry per
  input entry, for a social care export the run's report with every
  quarantined case.

A CarePlan update's ``request.ifMatch`` is compared here with the version stored
before the run (the adapter cannot see the store): a plan that is not stored, or
is at another version, holds its whole record back (quarantined,
``fhir-precondition-failed``, answered 412). Other conditional interactions are
honoured or refused by the adapter (``adapters.fhir_entries``), never ignored.

Quarantined records are kept for replay (``concord quarantine``) and the push
still answers 200: nothing sent is lost. The per-entry status reports only the
sender's own data (its contribution, its CarePlans), never whether other
sources hold the person.
"""

from __future__ import annotations

import asyncio
import io
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import ijson  # type: ignore[import-untyped]
import orjson
from sqlalchemy import select, tuple_

from adapters.fhir import FhirBundleAdapter
from adapters.records import AdapterError, Item, RecordError, SourceRecord
from adapters.social_care import SocialCareAdapter
from gateway.api.fhir_responses import etag_version
from gateway.api.outcome import BadRequest, Forbidden, insufficient_scope, operation_outcome
from gateway.api.principal import Principal
from gateway.bootstrap import Services
from gateway.report import IngestReport
from gateway.store.resources import Current, Key, current_versions
from gateway.store.schema import contributions, quarantine
from mappings.engine import MappingError

#: Resource types a pushed Bundle writes, each needing its write scope.
WRITTEN_TYPES: Final = ("Patient", "CarePlan")
QUARANTINE_REASON: Final = "https://fhir.concord.health/CodeSystem/quarantine-reason"
#: The Bundle types ``POST /fhir`` processes (FHIR R4 http.html: transaction and batch).
PUSHED_TYPES: Final = frozenset({"transaction", "batch"})
#: Quarantine reasons answered otherwise than ``422`` ``processing``: the request was refused as
#: asked (FHIR R4 http.html), or named something this gateway does not understand.
ANSWERS: Final = {
    "fhir-conditional-not-supported": ("400 Bad Request", "not-supported"),
    "fhir-conditional-mismatch": ("400 Bad Request", "invalid"),
    "fhir-precondition-failed": ("412 Precondition Failed", "conflict"),
    "fhir-modifier-extension": ("422 Unprocessable Entity", "extension"),
    "fhir-implicit-rules": ("422 Unprocessable Entity", "not-supported"),
    "fhir-security-label": ("422 Unprocessable Entity", "not-supported"),
}
_BOM: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Quarantined:
    location: str
    reason: str
    field: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Pushed:
    """What a push answers: the response body, and the ingest run that stored it."""

    body: dict[str, Any]
    run_id: int | None


@dataclass(slots=True)
class _Record:
    """One adapter item and the input entries it was read from (with their resource types)."""

    item: Item
    entries: list[int] = field(default_factory=list)
    types: list[str | None] = field(default_factory=list)
    #: For an item that maps: (entry index, resource key) of every CarePlan, in entry order.
    plans: list[tuple[int, Key]] = field(default_factory=list)
    patient_entry: int | None = None
    patient_id: str | None = None
    nhs_number: str | None = None


class PushService:
    """Ingests pushed bodies for authenticated source clients. One instance per request is fine."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def fhir_bundle(
        self, principal: Principal, body: bytes, request_id: str, outcomes: bool = False
    ) -> Pushed:
        """Ingest a pushed Bundle; the response Bundle (one entry per input entry, in input order).

        ``outcomes`` (``Prefer: return=OperationOutcome``): every entry's response carries an
        OperationOutcome, the stored ones too; otherwise only those not stored do.
        """
        bundle = _json_object(body)
        entries = bundle.get("entry")
        entries = entries if isinstance(entries, list) else []
        _check_type_scopes(principal, entries)
        adapter = FhirBundleAdapter(sender_ods=principal.ods_code, checks_if_match=True)
        records = _match(await _read_all(adapter.read, body), entries)
        self._plan(records)
        before, before_people = await self._existing(records)
        _check_if_match(records, entries, before)
        items = [r.item for r in records]
        report = await self.services.ingestor.run(adapter.source, items, _input_name(principal, request_id))
        held = {q.location: q for q in await quarantined(self.services, report)}
        async with self.services.engine.connect() as conn:
            after = await current_versions(conn, [k for r in records for _, k in r.plans])
        responses = _responses(records, held, before, before_people, after)
        answers = [responses.get(n) or _unmatched(e) for n, e in enumerate(entries)]
        if outcomes:
            answers = [a if "outcome" in a else _with_outcome(a) for a in answers]
        response = {
            "resourceType": "Bundle",
            "type": "transaction-response" if bundle.get("type") == "transaction" else "batch-response",
            "entry": [{"response": a} for a in answers],
        }
        return Pushed(response, report.run_id)

    async def social_care(self, principal: Principal, body: bytes, request_id: str) -> Pushed:
        """Ingest a council's export; its report, with every quarantined case (location and reason)."""
        adapter = SocialCareAdapter()
        items = await _read_all(adapter.read, body)
        council = _council_ods(body)
        if council.upper() != principal.ods_code.strip().upper():
            raise Forbidden(
                "export.council_ods must be this client's own ODS code: a council sends its own cases"
            )
        report = await self.services.ingestor.run(adapter.source, items, _input_name(principal, request_id))
        held = await quarantined(self.services, report)
        summary = {
            "run_id": report.run_id,
            "records": report.records,
            "accepted": report.accepted,
            "new": report.new,
            "changed": report.changed,
            "unchanged": report.unchanged,
            "quarantined": report.quarantined_total,
            "quarantined_by_reason": dict(sorted(report.quarantined.items())),
            "warnings_by_reason": dict(sorted(report.warnings.items())),
            "quarantined_records": [
                {"location": q.location, "reason": q.reason, "field": q.field, "detail": q.detail}
                for q in sorted(held, key=lambda q: _order(q.location))
            ],
        }
        return Pushed(summary, report.run_id)

    def _plan(self, records: Sequence[_Record]) -> None:
        """For each readable record, the ids the mapper gives its Patient and CarePlans (a pure map)."""
        mapper = self.services.mapper
        for record in records:
            item = record.item
            if not isinstance(item, SourceRecord):
                continue
            try:
                mapped = mapper.map(item)
            except MappingError:
                continue  # the ingest quarantines it with its reason
            record.patient_id = mapped.patient_id
            record.nhs_number = mapped.nhs_number
            plan_keys = [
                (r["resourceType"], r["id"]) for r in mapped.resources if r["resourceType"] == "CarePlan"
            ]
            typed = list(zip(record.entries, record.types, strict=True))
            record.plans = list(zip([n for n, t in typed if t == "CarePlan"], plan_keys, strict=False))
            record.patient_entry = next((n for n, t in typed if t == "Patient"), None)

    async def _existing(self, records: Sequence[_Record]) -> tuple[dict[Key, Current], set[tuple[str, str]]]:
        """Before the run: the sender's CarePlans already stored, and its contributions already held."""
        keys = [k for r in records for _, k in r.plans]
        pairs = [
            (r.item.local_id, r.nhs_number) for r in records if r.nhs_number and r.patient_entry is not None
        ]
        async with self.services.engine.connect() as conn:
            before = await current_versions(conn, keys)
            people: set[tuple[str, str]] = set()
            for start in range(0, len(pairs), 500):
                rows = await conn.execute(
                    select(contributions.c.local_id, contributions.c.nhs_number).where(
                        contributions.c.source == FhirBundleAdapter.source,
                        tuple_(contributions.c.local_id, contributions.c.nhs_number).in_(
                            pairs[start : start + 500]
                        ),
                    )
                )
                people.update((str(a), str(b)) for a, b in rows.all())
        return before, people


async def quarantined(services: Services, report: IngestReport) -> list[Quarantined]:
    """The records the run ``report`` describes that were quarantined (a record seen before included)."""
    if report.run_id is None or not report.quarantined_total:
        return []
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            select(quarantine.c.location, quarantine.c.reason, quarantine.c.field, quarantine.c.detail)
            .where(quarantine.c.run_id == report.run_id)
            .order_by(quarantine.c.id)
        )
        return [Quarantined(*r) for r in rows.all()]


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        value = orjson.loads(body.removeprefix(_BOM))
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not JSON", code="structure") from None
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        raise BadRequest("the body must be a FHIR Bundle (resourceType Bundle)", code="structure")
    if value.get("type") not in PUSHED_TYPES:
        # FHIR R4 http.html: POST [base] processes a transaction or a batch; a collection asks for nothing.
        raise BadRequest(
            "Bundle.type must be transaction or batch: only those are processed", code="structure"
        )
    return value  # a name given twice is refused by the adapter (``adapters.fhir``), as on the CLI


def _check_type_scopes(principal: Principal, entries: Iterable[Any]) -> None:
    """A Bundle writes Patient and CarePlan resources: the caller needs the write scope of each it sends."""
    present = {
        e["resource"].get("resourceType")
        for e in entries
        if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
    }
    for rtype in WRITTEN_TYPES:
        scope = f"system/{rtype}.write"
        if rtype in present and not principal.allows(scope):
            raise insufficient_scope(scope, diagnostics=f"scope {scope} is required to push {rtype} entries")


async def _read_all(read: Any, body: bytes) -> list[Item]:
    """Every item of the body, read off the event loop; ``BadRequest`` when it cannot be read at all."""
    try:
        items: list[Item] = await asyncio.to_thread(lambda: list(read(io.BytesIO(body))))
    except AdapterError as exc:
        raise BadRequest(str(exc), code="structure") from None
    return items


def _match(items: Sequence[Item], entries: Sequence[Any]) -> list[_Record]:
    """Each item with the input entries its raw text holds (the adapter keeps them as they came)."""
    free: dict[bytes, deque[int]] = defaultdict(deque)
    for n, entry in enumerate(entries):
        free[orjson.dumps(entry)].append(n)
    records = []
    for item in items:
        record = _Record(item)
        try:
            raw = orjson.loads(item.raw) if item.raw else {}
        except orjson.JSONDecodeError:
            raw = {}
        held = raw.get("entry") if isinstance(raw, dict) else None
        for entry in held if isinstance(held, list) else ():
            waiting = free.get(orjson.dumps(entry))
            if waiting:
                record.entries.append(waiting.popleft())
                record.types.append(_resource_type(entry))
        records.append(record)
    return records


def _check_if_match(
    records: Sequence[_Record], entries: Sequence[Any], before: Mapping[Key, Current]
) -> None:
    """Hold back (quarantine) each record with a CarePlan update whose ``ifMatch`` is not the version
    stored before the run (FHIR R4 http.html: 412; also for a plan that is not stored at all).

    Compared with what was read before the run, not under a lock: two pushes of one plan by one
    sender that run at the same moment can both pass (only its sender writes a plan).
    """
    for record in records:
        item = record.item
        if not isinstance(item, SourceRecord):
            continue
        for n, key in record.plans:
            request = entries[n].get("request") if isinstance(entries[n], Mapping) else None
            tag = request.get("ifMatch") if isinstance(request, Mapping) else None
            if tag is None or tag == "":
                continue
            current = before.get(key)
            if current is not None and isinstance(tag, str) and etag_version(tag) == str(current.version_id):
                continue
            state = "is not stored here" if current is None else "is at another version"
            detail = f"entry {n}: request.ifMatch names a version, and the CarePlan {state}"
            record.item = RecordError(
                item.source,
                item.location,
                "fhir-precondition-failed",
                "request.ifMatch",
                detail,
                item.raw,
                item.local_id,
            )
            break


def _resource_type(entry: Any) -> str | None:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return kind if isinstance(kind, str) else None


def _responses(
    records: Sequence[_Record],
    held: Mapping[str, Quarantined],
    before: Mapping[Key, Current],
    before_people: set[tuple[str, str]],
    after: Mapping[Key, Current],
) -> dict[int, dict[str, Any]]:
    """``entry.response`` by input entry index, for every entry a record holds."""
    responses: dict[int, dict[str, Any]] = {}
    for record in records:
        problem = held.get(record.item.location)
        if problem is not None:
            for n in record.entries:
                responses[n] = _quarantined_response(problem)
            continue
        if record.patient_entry is not None:
            created = (record.item.local_id, record.nhs_number) not in before_people
            responses[record.patient_entry] = {
                "status": "201 Created" if created else "200 OK",
                "location": f"Patient/{record.patient_id}",
            }
        for n, key in record.plans:
            responses[n] = _plan_response(key, before.get(key), after.get(key))
    return responses


def _plan_response(key: Key, before: Current | None, after: Current | None) -> dict[str, Any]:
    if after is None:  # accepted but not stored: cannot happen short of a concurrent delete
        return {"status": "200 OK"}
    response: dict[str, Any] = {
        "status": "201 Created" if before is None else "200 OK",
        "location": f"{key[0]}/{key[1]}/_history/{after.version_id}",
        "etag": f'W/"{after.version_id}"',
    }
    return response


def _quarantined_response(problem: Quarantined) -> dict[str, Any]:
    status, code = ANSWERS.get(problem.reason, ("422 Unprocessable Entity", "processing"))
    where = f" at {problem.field}" if problem.field else ""
    outcome = operation_outcome(code, f"quarantined ({problem.reason}){where}: {problem.detail}")
    outcome["issue"][0]["details"] = {"coding": [{"system": QUARANTINE_REASON, "code": problem.reason}]}
    if problem.field:
        outcome["issue"][0]["expression"] = [problem.field]
    return {"status": status, "outcome": outcome}


def _with_outcome(response: dict[str, Any]) -> dict[str, Any]:
    """A stored entry's response with an OperationOutcome saying so (``Prefer: return=OperationOutcome``)."""
    first = str(response["status"]).startswith("201")
    if str(response.get("location", "")).startswith("Patient/"):
        when = "sent for the first time" if first else "sent before"
        message = f"stored: this sender's details of the person, {when}"
    else:
        message = "stored: a new CarePlan" if first else "stored: the CarePlan, at the version its etag names"
    return {**response, "outcome": operation_outcome("informational", message, "information")}


def _unmatched(entry: Any) -> dict[str, Any]:
    """An entry no record holds: a Provenance (the gateway writes its own), which is not stored."""
    if _resource_type(entry) == "Provenance":
        message = "not stored: the gateway writes its own Provenance for what it stores"
        return {"status": "200 OK", "outcome": operation_outcome("informational", message, "information")}
    # Not expected: every other entry is in a record. Say so rather than guess.
    message = "this entry's outcome could not be matched; see the ingest run's report (X-Ingest-Run)"
    return {"status": "200 OK", "outcome": operation_outcome("incomplete", message, "warning")}


def _council_ods(body: bytes) -> str:
    """``export.council_ods`` of a social care export the adapter has already read whole."""
    found = next(ijson.items(io.BytesIO(body.removeprefix(_BOM)), "export.council_ods"), None)
    return found.strip() if isinstance(found, str) else ""


def _input_name(principal: Principal, request_id: str) -> str:
    return f"api {principal.client_id} {request_id}"[:255]


def _order(location: str) -> tuple[int, str]:
    number = location.rpartition(" ")[2]
    return (int(number), location) if number.isdigit() else (0, location)
