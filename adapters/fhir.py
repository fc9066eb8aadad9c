"""FHIR source: one transaction or batch Bundle pushed by any system (a file may be a collection).

The Bundle is read whole (a pushed Bundle is bounded: the API caps bodies at
10 MB and so does this adapter), then its entries are grouped per person:
each Patient entry with the CarePlans whose ``subject`` points at it becomes
one SourceRecord. A CarePlan that names its subject only by NHS number (a
conditional reference or a logical identifier reference) with no Patient entry
forms a record of its own. See docs/sources/fhir.md.

    AdapterError   the Bundle cannot be read as a whole: not JSON, not a Bundle, another type,
                   a name given twice in an object, two entries with one fullUrl (bdl-7),
                   ``implicitRules`` or a restrictive ``meta.security`` label on the Bundle (the
                   labels ``fhir_entries.restrictive_label`` refuses), objects and arrays nested deeper than
                   ``MAX_DEPTH`` (the JSON encoder stops at 255 levels, Python at its recursion limit)

Entry-level problems are RecordErrors with stable reasons (``adapters.fhir_entries``
lists them), and so are these:

    fhir-unsupported-resource     anything but Patient, CarePlan (and Provenance, ignored)
    fhir-unresolved-reference     a CarePlan whose subject matches no Patient entry, or several
    fhir-nhs-number-conflict      a Patient with two different NHS numbers
    fhir-duplicate-resource       two entries that write one resource: two CarePlans of a record with
                                  one id (or identifier, fullUrl), two Patients that are one record
    unknown-code                  an NHS number verification status in a code system UK Core does not bind

Reading the references is the adapter's job (they are Bundle-relative, ``adapters.fhir_references``);
everything else is in the mapping specs ``mappings/specs/fhir.*.json``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final

import orjson

from adapters.fhir_entries import (
    conditional_identifier,
    conditional_problem,
    entry_problem,
    not_understood,
    restrictive_label,
)
from adapters.fhir_references import NHS_NUMBER_SYSTEM, EntryIndex, nhs_identifiers, nhs_numbers, rebased
from adapters.fhir_references import stripped as _str
from adapters.json_shape import repeated_name
from adapters.records import AdapterError, Item, RecordError, SourceRecord, as_text, ods_code

SOURCE: Final = "fhir"
MAX_BUNDLE_CHARS: Final = 10 * 1024 * 1024
MAX_LOCAL_ID: Final = 128
#: The deepest nesting of objects and arrays read (the Bundle itself is level 1). A Patient or CarePlan
#: is a few dozen levels deep at most; a deeper Bundle is refused whole before anything walks it.
MAX_DEPTH: Final = 100
BUNDLE_TYPES: Final = frozenset({"transaction", "batch", "collection"})
ODS_SYSTEM: Final = "https://fhir.nhs.uk/Id/ods-organization-code"
VERIFICATION_URL: Final = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)
#: The code systems of UK Core's required NHSNumberVerificationStatus value set, by the record
#: field each one's codes go to (the spec maps each with its own ConceptMap: no code is translated).
_UKCORE_SYSTEM: Final = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatus"
VERIFICATION_SYSTEMS: Final = {
    f"{_UKCORE_SYSTEM}England": "nhs_number_verification",
    f"{_UKCORE_SYSTEM}Wales": "nhs_number_verification_wales",
    # UK Core STU1's system, before Wales had its own: England's codes and meanings. The national
    # PDS FHIR API still codes the status in it, so Patients copied from PDS arrive with it.
    _UKCORE_SYSTEM: "nhs_number_verification",
}
#: The value set's third member, v3-NullFlavor ``NI`` (no information): read as no status.
NO_INFORMATION: Final = ("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "NI")
#: Two entries of one Bundle that write the same resource (FHIR R4 http.html: overlapping identities).
DUPLICATE: Final = "fhir-duplicate-resource"
_ODS_CODE = re.compile(r"[A-Z0-9]{3,10}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


@dataclass(frozen=True, slots=True)
class _Context:
    """What every record of one Bundle shares."""

    bundle_type: str
    source_ods: str
    recorded_at: str
    meta: Mapping[str, Any]
    takes_if_match: bool


@dataclass(slots=True)
class _Group:
    """One person's entries: the Patient entry (if any) and the CarePlan entries pointing at it."""

    index: int
    patient: int | None
    nhs_number: str = ""
    plans: list[int] = field(default_factory=list)


class FhirBundleAdapter:
    """Reads one Bundle.

    ``sender_ods`` is the authenticated sender's ODS code (the API knows it from
    the access token); when given it wins over the Bundle's ``meta.source``.
    ``checks_if_match``: the caller compares each CarePlan update's ``request.ifMatch`` with
    the version it stores (``POST /fhir`` does); otherwise an entry with one is refused, never
    applied as if it had none. ``reread`` (a replay) takes a CarePlan update's ``ifMatch`` whatever
    ``checks_if_match`` says: the precondition belonged to the original push (which took it or
    answered 412), so it is neither checked again nor refused.
    """

    source = SOURCE

    def __init__(
        self, sender_ods: str | None = None, max_chars: int = MAX_BUNDLE_CHARS, checks_if_match: bool = False
    ) -> None:
        self.sender_ods = sender_ods
        self.max_chars = max_chars
        self.checks_if_match = checks_if_match

    def read(self, stream: IO[str] | IO[bytes]) -> Iterator[Item]:
        try:
            with as_text(stream) as reader:
                text = reader.read(self.max_chars + 1)
        except UnicodeDecodeError as exc:
            raise AdapterError("FHIR Bundle is not UTF-8 text") from exc
        if len(text) > self.max_chars:
            raise AdapterError(f"FHIR Bundle is larger than {self.max_chars} characters: split it")
        yield from self._items(_load(text), None, self.checks_if_match)

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        """``raw`` is the small Bundle ``read`` kept for one record; its items keep ``location``.

        A CarePlan update's ``ifMatch`` is not checked again (the store has moved on since the
        push it belonged to) and not refused: a replay applies the record as it was pushed.
        """
        yield from self._items(_load(raw), location, True)

    def _items(self, bundle: Mapping[str, Any], location: str | None, takes_if_match: bool) -> Iterator[Item]:
        context = self._context(bundle, takes_if_match)
        entries = bundle.get("entry", [])
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise AdapterError("Bundle.entry is not a list")
        repeated = _repeated_full_url(entries)
        if repeated is not None:
            raise AdapterError(f"Bundle.entry: {repeated} have the same fullUrl (bdl-7 allows one)")
        items = _read_entries(entries, context)
        for _, item in sorted(items, key=lambda pair: pair[0]):
            if location is None:
                yield item
            elif isinstance(item, SourceRecord):
                yield SourceRecord(item.source, location, item.local_id, item.fields, item.raw)
            else:
                yield RecordError(
                    item.source, location, item.reason, item.field, item.detail, item.raw, item.local_id
                )

    def _context(self, bundle: Mapping[str, Any], takes_if_match: bool) -> _Context:
        bundle_type = bundle.get("type")
        if bundle_type not in BUNDLE_TYPES:
            raise AdapterError("Bundle.type must be transaction, batch or collection")
        if bundle.get("implicitRules"):
            raise AdapterError("Bundle.implicitRules: this gateway does not understand the rules it names")
        meta = bundle.get("meta")
        if not isinstance(meta, Mapping):
            meta = {}
        label = restrictive_label(meta)
        if label is not None:
            raise AdapterError(f"Bundle.meta.security: {label}")
        ods = _ods(self.sender_ods) if self.sender_ods else _ods_of_source(meta.get("source"))
        recorded = _str(bundle.get("timestamp")) or _str(meta.get("lastUpdated")) or ""
        kept_meta: dict[str, Any] = {"source": f"{ODS_SYSTEM}|{ods}"} if ods else {}
        if _str(meta.get("lastUpdated")):
            kept_meta["lastUpdated"] = meta["lastUpdated"]
        return _Context(str(bundle_type), ods, recorded, kept_meta, takes_if_match)


def _load(text: str) -> Mapping[str, Any]:
    try:
        bundle = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise AdapterError(f"FHIR Bundle is not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise AdapterError("not a FHIR Bundle: resourceType must be Bundle")
    if _deeper_than(bundle, MAX_DEPTH):
        raise AdapterError(f"FHIR Bundle nests objects and arrays deeper than {MAX_DEPTH} levels")
    repeated = repeated_name(text)
    if repeated is not None:
        raise AdapterError(f"FHIR Bundle: an object names {repeated} twice (FHIR JSON allows once)")
    return bundle


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels in ``value`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _repeated_full_url(entries: list[Any]) -> str | None:
    """Which two entries break bdl-7 (one fullUrl per entry, unless their meta.versionId differ)."""
    seen: dict[tuple[str, Any], int] = {}
    for n, entry in enumerate(entries):
        full_url = _str(entry.get("fullUrl")) if isinstance(entry, Mapping) else None
        if full_url is None:
            continue
        resource = entry.get("resource")
        meta = resource.get("meta") if isinstance(resource, Mapping) else None
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        key = (full_url, version if isinstance(version, str) else None)
        if key in seen:
            return f"entries {seen[key]} and {n}"
        seen[key] = n
    return None


def _read_entries(entries: list[Any], context: _Context) -> list[tuple[int, Item]]:
    """Every item of the Bundle with the index of the entry it is reported at."""
    out: list[tuple[int, Item]] = []
    patients: list[int] = []
    plans: list[int] = []
    for n, entry in enumerate(entries):
        problem = entry_problem(entry, context.bundle_type)
        if problem is not None:
            reason, fld, detail = problem
            out.append((n, _error(context, n, [entry], reason, fld, detail)))
            continue
        kind = entry["resource"]["resourceType"]
        if kind == "Patient":
            patients.append(n)
        elif kind == "CarePlan":
            plans.append(n)
        elif kind != "Provenance":  # Provenance is ours to write: a sender's is ignored.
            shown = kind if _RESOURCE_TYPE.fullmatch(kind) else "this resource type"
            detail = f"{shown} entries are not accepted (only Patient and CarePlan)"
            out.append(
                (n, _error(context, n, [entry], "fhir-unsupported-resource", "resource.resourceType", detail))
            )
    index = EntryIndex("Patient", entries, patients)
    plan_index = EntryIndex("CarePlan", entries, plans)
    groups: dict[str, _Group] = {f"entry {n}": _Group(n, n) for n in patients}
    for n in plans:
        key, problem_detail = index.resolve(entries[n]["resource"].get("subject"))
        if key is None:
            detail = problem_detail or "subject matches no Patient entry"
            out.append((n, _error(context, n, [entries[n]], "fhir-unresolved-reference", "subject", detail)))
            continue
        group = groups.get(key)
        if group is None:  # an NHS number with no Patient entry: the CarePlans form the record
            group = groups[key] = _Group(n, None, nhs_number=key.removeprefix("nhs:"))
        group.plans.append(n)
    made: list[tuple[_Group, Item]] = []
    for group in groups.values():
        aliases = index.keys_of.get(group.patient, set()) if group.patient is not None else set()
        made.append((group, _record(context, entries, group, aliases, plan_index)))
    out.extend((group.index, item) for group, item in _without_repeats(entries, made))
    return out


def _without_repeats(entries: list[Any], made: list[tuple[_Group, Item]]) -> list[tuple[_Group, Item]]:
    """Two different Patient entries that are one record of this sender (the same id, stable fullUrl
    or NHS number, whatever NHS numbers they carry) are both held back: FHIR R4 http.html fails a transaction
    whose entries' resource identities overlap, and storing one over the other would answer both as
    written while the first is lost (a batch's entries name no order to write them in either).
    The same resource sent twice loses nothing and is taken (so is a CarePlan sent twice)."""
    seen: dict[str, list[int]] = {}
    for group, item in made:
        if isinstance(item, SourceRecord) and group.patient is not None:
            seen.setdefault(item.local_id, []).append(group.patient)
    repeated = {
        n: same
        for same in seen.values()
        if any(entries[m]["resource"] != entries[same[0]]["resource"] for m in same[1:])
        for n in same
    }
    out: list[tuple[_Group, Item]] = []
    for group, item in made:
        same = repeated.get(group.patient) if group.patient is not None else None
        if same is not None and isinstance(item, SourceRecord):
            shown = " and ".join(str(n) for n in same)
            detail = f"entries {shown} are the same Patient of this sender: a Bundle writes a resource once"
            item = RecordError(SOURCE, item.location, DUPLICATE, "resource", detail, item.raw)
        out.append((group, item))
    return out


def _nhs_number_not_a_string(patient: Mapping[str, Any]) -> bool:
    """An NHS number identifier whose value is a JSON number (or anything but a string): invalid
    FHIR, not a missing number (``9990000018`` sent unquoted)."""
    idents = patient.get("identifier")
    return isinstance(idents, list) and any(
        isinstance(i, Mapping)
        and i.get("system") == NHS_NUMBER_SYSTEM
        and i.get("value") is not None
        and not isinstance(i["value"], str)
        for i in idents
    )


def _verification_status(patient: Mapping[str, Any]) -> tuple[str, str] | None:
    """The NHS number's verification status as (record field, code); ("", "") when none is sent,
    None when it is coded in neither system.

    UK Core binds it to England's and Wales's code systems, whose codes differ (Wales has ``nn``,
    traced on the Welsh NHS AR; its ``01`` is traced, England's verified): a code is taken in its
    own system only, never translated, so a status in no system of the value set is not read.
    The value set's third member, v3-NullFlavor ``NI`` (no information), is read as no status.
    """
    for ident in nhs_identifiers(patient):
        for ext in ident.get("extension") or ():
            if not isinstance(ext, Mapping) or ext.get("url") != VERIFICATION_URL:
                continue
            concept = ext.get("valueCodeableConcept")
            codings = concept.get("coding") if isinstance(concept, Mapping) else None
            usable = [c for c in codings or () if isinstance(c, Mapping) and _str(c.get("code"))]
            for system, target in VERIFICATION_SYSTEMS.items():
                for coding in usable:
                    if coding.get("system") == system:
                        return target, str(coding["code"]).strip()
            if any((c.get("system"), str(c["code"]).strip()) == NO_INFORMATION for c in usable):
                return "", ""
            if usable:
                return None
    return "", ""


def _record(
    context: _Context, entries: list[Any], group: _Group, aliases: set[str], plan_index: EntryIndex
) -> Item:
    members = ([group.patient] if group.patient is not None else []) + group.plans
    raw = _raw(context, [entries[n] for n in members])
    location = f"entry {group.index}"
    patient: Mapping[str, Any] | None = None
    status: tuple[str, str] = ("", "")
    number = group.nhs_number
    if group.patient is not None:
        patient = entries[group.patient]["resource"]
        assert patient is not None
        if _nhs_number_not_a_string(patient):
            detail = "Patient.identifier.value of the NHS number is not a JSON string (FHIR's string type)"
            return RecordError(SOURCE, location, "fhir-invalid", "identifier.value", detail, raw)
        numbers = nhs_numbers(patient)
        if len(numbers) > 1:
            return RecordError(
                SOURCE,
                location,
                "fhir-nhs-number-conflict",
                "identifier",
                "Patient has more than one distinct NHS number",
                raw,
            )
        number = numbers[0] if numbers else ""
        found = _verification_status(patient)
        if found is None:
            detail = "the NHS number verification status is in neither UK Core code system (England, Wales)"
            return RecordError(SOURCE, location, "unknown-code", "identifier.extension", detail, raw)
        status = found
    for n in members:
        problem = conditional_problem(entries[n], context.takes_if_match) or not_understood(entries[n])
        if problem is not None:
            reason, fld, detail = problem
            return RecordError(SOURCE, location, reason, fld, f"entry {n}: {detail}", raw)
    person = _person_id(entries, group, number)
    local_id = _bounded(_qualified(context, person))
    # With no NHS number there is nothing to point at (and the record fails mapping anyway).
    aliases = {*aliases, f"nhs:{number}"} if number else set()
    plan_ids = {
        n: _qualified(context, _plan_id(entries[n], f"{person} plan {k}"))
        for k, n in enumerate(group.plans, start=1)
    }
    first_of: dict[str, int] = {}
    for n, plan_id in plan_ids.items():
        first = first_of.get(plan_id)
        if first is not None and entries[first]["resource"] != entries[n]["resource"]:
            detail = f"entries {first} and {n} are one CarePlan: a Bundle writes a resource once"
            return RecordError(SOURCE, location, DUPLICATE, "resource", detail, raw)
        first_of.setdefault(plan_id, n)
    # The keys naming a plan of this record; one that names two CarePlan entries is never guessed.
    siblings = {
        key: plan_ids[n]
        for n in group.plans
        for key in plan_index.keys_of[n]
        if len(plan_index.by_key[key]) == 1
    }
    plans = [
        {**rebased(entries[n]["resource"], aliases, number, siblings), "local_id": plan_ids[n]}
        for n in group.plans
    ]
    kind, code = status
    fields = {
        "nhs_number": number,
        "nhs_number_status": code,
        # Lists of zero or one codes: the spec writes the extension only when a status was sent.
        **{target: [code] if target == kind else [] for target in VERIFICATION_SYSTEMS.values()},
        "patient": patient,
        "care_plans": plans,
        "source_ods": context.source_ods,
        "recorded_at": context.recorded_at,
    }
    return SourceRecord(SOURCE, location, local_id, fields, raw)


def _person_id(entries: list[Any], group: _Group, nhs_number: str) -> str:
    """The sender's id for the person: Patient id, else a stable fullUrl, else the NHS number.

    A ``urn:uuid`` fullUrl is a placeholder that lives for one Bundle, so it is a last resort.
    """
    if group.patient is None:
        return nhs_number
    entry = entries[group.patient]
    full_url = _str(entry.get("fullUrl")) or ""
    resource_id = _str(entry["resource"].get("id"))
    if resource_id:
        return f"Patient/{resource_id}"
    if full_url and not full_url.startswith("urn:"):
        return full_url
    return nhs_number or full_url or f"entry {group.patient}"


def _plan_id(entry: Mapping[str, Any], fallback: str) -> str:
    """The sender's id for a CarePlan: its id, else the identifier its conditional update names,
    else its first identifier, else its fullUrl.

    A plan with none of them is named by its place among the person's plans
    (the same when its record is replayed; a sender should send an identifier).
    """
    resource = entry["resource"]
    if _str(resource.get("id")):
        return f"CarePlan/{resource['id']}"
    request = entry.get("request")
    request = request if isinstance(request, Mapping) else {}
    url = _str(request.get("url"))
    if url and "?" in url and request.get("method") == "PUT":
        criterion = conditional_identifier(url.partition("?")[2])
        if criterion is not None:
            return "|".join(criterion)
    for ident in resource.get("identifier") or ():
        if isinstance(ident, Mapping) and _str(ident.get("value")):
            system = _str(ident.get("system"))
            return f"{system}|{ident['value']}" if system else str(ident["value"])
    return _str(entry.get("fullUrl")) or fallback


def _qualified(context: _Context, local_id: str) -> str:
    """Local ids are the sender's own: qualified by its ODS code so two senders cannot collide."""
    return f"{local_id}@{context.source_ods}" if context.source_ods and local_id else local_id


def _bounded(local_id: str) -> str:
    """A person's local id fits the store's 128 characters: a longer one (a long fullUrl) is hashed."""
    if len(local_id) <= MAX_LOCAL_ID:
        return local_id
    return "sha256:" + hashlib.sha256(local_id.encode()).hexdigest()


def _raw(context: _Context, entries: list[Any]) -> str:
    """A small Bundle holding just these entries (and what the records take from the Bundle)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": context.bundle_type}
    if context.meta:
        bundle["meta"] = dict(context.meta)
    if context.recorded_at:
        bundle["timestamp"] = context.recorded_at
    bundle["entry"] = entries
    return orjson.dumps(bundle).decode()


def _error(
    context: _Context, n: int, entries: list[Any], reason: str, fld: str | None, detail: str
) -> RecordError:
    return RecordError(SOURCE, f"entry {n}", reason, fld, detail, _raw(context, entries))


def _ods_of_source(source: Any) -> str:
    """``Bundle.meta.source`` as ``https://fhir.nhs.uk/Id/ods-organization-code|CODE``, else nothing."""
    text = _str(source) or ""
    system, bar, code = text.rpartition("|")
    return _ods(code) if bar and system == ODS_SYSTEM else ""


def _ods(code: str) -> str:
    code = ods_code(code)
    return code if _ODS_CODE.fullmatch(code) else ""
