"""FHIR source: one transaction, batch or collection Bundle pushed by any system.

The Bundle is read whole (a pushed Bundle is bounded: the API caps bodies at
10 MB and so does this adapter), then its entries are grouped per person:
each Patient entry with the CarePlans whose ``subject`` points at it becomes
one SourceRecord. A CarePlan that names its subject only by NHS number (a
conditional reference or a logical identifier reference) with no Patient entry
forms a record of its own. See docs/sources/fhir.md.

Entry-level problems are RecordErrors (stable reasons):

    fhir-invalid-entry            not an object, no resource or no resourceType
    fhir-delete-not-supported     request.method DELETE
    fhir-method-not-supported     request.method other than POST and PUT (GET, HEAD, PATCH ...)
    fhir-url-mismatch             request.url names another type, or (PUT) another id, than the resource
    fhir-unsupported-resource     anything but Patient, CarePlan (and Provenance, ignored)
    fhir-unresolved-reference     a CarePlan whose subject matches no Patient entry, or several
    fhir-nhs-number-conflict      a Patient with two different NHS numbers

Reading the references is the adapter's job (they are Bundle-relative);
everything else is in the mapping specs ``mappings/specs/fhir.*.json``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final
from urllib.parse import parse_qsl

import orjson

from adapters.json_shape import repeated_name
from adapters.records import AdapterError, Item, RecordError, SourceRecord, as_text

SOURCE: Final = "fhir"
MAX_BUNDLE_CHARS: Final = 10 * 1024 * 1024
MAX_LOCAL_ID: Final = 128
BUNDLE_TYPES: Final = frozenset({"transaction", "batch", "collection"})
NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM: Final = "https://fhir.nhs.uk/Id/ods-organization-code"
VERIFICATION_URL: Final = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)
VERIFICATION_SYSTEM: Final = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
_ODS_CODE = re.compile(r"[A-Z0-9]{3,10}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_HISTORY = re.compile(r"/_history/[^/]*$")
_SEPARATORS = re.compile(r"[\s\-]")


@dataclass(frozen=True, slots=True)
class _Context:
    """What every record of one Bundle shares."""

    bundle_type: str
    source_ods: str
    recorded_at: str
    meta: Mapping[str, Any]


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
    """

    source = SOURCE

    def __init__(self, sender_ods: str | None = None, max_chars: int = MAX_BUNDLE_CHARS) -> None:
        self.sender_ods = sender_ods
        self.max_chars = max_chars

    def read(self, stream: IO[str] | IO[bytes]) -> Iterator[Item]:
        try:
            with as_text(stream) as reader:
                text = reader.read(self.max_chars + 1)
        except UnicodeDecodeError as exc:
            raise AdapterError("FHIR Bundle is not UTF-8 text") from exc
        if len(text) > self.max_chars:
            raise AdapterError(f"FHIR Bundle is larger than {self.max_chars} characters: split it")
        yield from self._items(_load(text), None)

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        """``raw`` is the small Bundle ``read`` kept for one record; its items keep ``location``."""
        yield from self._items(_load(raw), location)

    def _items(self, bundle: Mapping[str, Any], location: str | None) -> Iterator[Item]:
        context = self._context(bundle)
        entries = bundle.get("entry", [])
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise AdapterError("Bundle.entry is not a list")
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

    def _context(self, bundle: Mapping[str, Any]) -> _Context:
        bundle_type = bundle.get("type")
        if bundle_type not in BUNDLE_TYPES:
            raise AdapterError("Bundle.type must be transaction, batch or collection")
        meta = bundle.get("meta")
        if not isinstance(meta, Mapping):
            meta = {}
        ods = _ods(self.sender_ods) if self.sender_ods else _ods_of_source(meta.get("source"))
        recorded = _str(bundle.get("timestamp")) or _str(meta.get("lastUpdated")) or ""
        kept_meta: dict[str, Any] = {"source": f"{ODS_SYSTEM}|{ods}"} if ods else {}
        if _str(meta.get("lastUpdated")):
            kept_meta["lastUpdated"] = meta["lastUpdated"]
        return _Context(str(bundle_type), ods, recorded, kept_meta)


def _load(text: str) -> Mapping[str, Any]:
    try:
        bundle = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise AdapterError(f"FHIR Bundle is not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise AdapterError("not a FHIR Bundle: resourceType must be Bundle")
    repeated = repeated_name(text)
    if repeated is not None:
        raise AdapterError(f"FHIR Bundle: an object names {repeated} twice (FHIR JSON allows once)")
    return bundle


def _read_entries(entries: list[Any], context: _Context) -> list[tuple[int, Item]]:
    """Every item of the Bundle with the index of the entry it is reported at."""
    out: list[tuple[int, Item]] = []
    patients: dict[int, Mapping[str, Any]] = {}
    plans: dict[int, Mapping[str, Any]] = {}
    for n, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem is not None:
            reason, fld, detail = problem
            out.append((n, _error(context, n, [entry], reason, fld, detail)))
            continue
        resource = entry["resource"]
        kind = resource["resourceType"]
        if kind == "Patient":
            patients[n] = resource
        elif kind == "CarePlan":
            plans[n] = resource
        elif kind != "Provenance":  # Provenance is ours to write: a sender's is ignored.
            shown = kind if _RESOURCE_TYPE.fullmatch(kind) else "this resource type"
            detail = f"{shown} entries are not accepted (only Patient and CarePlan)"
            out.append(
                (n, _error(context, n, [entry], "fhir-unsupported-resource", "resource.resourceType", detail))
            )
    index = _PatientIndex(entries, patients)
    groups: dict[str, _Group] = {f"entry {n}": _Group(n, n) for n in patients}
    for n in plans:
        key, problem_detail = index.resolve(plans[n].get("subject"))
        if key is None:
            detail = problem_detail or "subject matches no Patient entry"
            out.append((n, _error(context, n, [entries[n]], "fhir-unresolved-reference", "subject", detail)))
            continue
        group = groups.get(key)
        if group is None:  # an NHS number with no Patient entry: the CarePlans form the record
            group = groups[key] = _Group(n, None, nhs_number=key.removeprefix("nhs:"))
        group.plans.append(n)
    for group in groups.values():
        aliases = index.keys_of.get(group.patient, set()) if group.patient is not None else set()
        out.append((group.index, _record(context, entries, group, aliases)))
    return out


def _entry_problem(entry: Any) -> tuple[str, str | None, str] | None:
    if not isinstance(entry, Mapping):
        return "fhir-invalid-entry", None, "entry is not a JSON object"
    request = entry.get("request")
    request = request if isinstance(request, Mapping) else {}
    method = str(request.get("method", "")).upper()
    if method == "DELETE":
        return "fhir-delete-not-supported", "request.method", "DELETE entries are not accepted"
    if method and method not in WRITE_METHODS:
        shown = method if method in ("GET", "HEAD", "PATCH") else "this method"
        detail = f"{shown} entries are not accepted (POST or PUT)"
        return "fhir-method-not-supported", "request.method", detail
    resource = entry.get("resource")
    if not isinstance(resource, Mapping):
        return "fhir-invalid-entry", "resource", "entry has no resource object"
    if not isinstance(resource.get("resourceType"), str):
        return "fhir-invalid-entry", "resource.resourceType", "resource has no resourceType"
    return _url_problem(method, _str(request.get("url")), resource)


#: The methods of the entries this gateway takes: creates and updates (FHIR R4 transaction processing).
WRITE_METHODS: Final = frozenset({"POST", "PUT"})


def _url_problem(method: str, url: str | None, resource: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """An entry whose ``request.url`` names another type, or (a PUT) another id, than its resource
    (FHIR R4 update: the server SHALL reject a body whose id differs from the URL's)."""
    if url is None:
        return None
    path, _, search = url.partition("?")
    parts = path.rstrip("/").split("/")
    if method == "PUT" and not search and len(parts) >= 2:  # [base/]Type/id
        rtype, rid = parts[-2], parts[-1]
    else:  # [base/]Type, or a conditional update's [base/]Type?search
        rtype, rid = parts[-1], None
    if rtype != resource["resourceType"]:
        return "fhir-url-mismatch", "request.url", "request.url names another resource type than the resource"
    body_id = _str(resource.get("id"))
    if rid is not None and body_id is not None and rid != body_id:
        return "fhir-url-mismatch", "request.url", "request.url names another id than the resource's"
    return None


class _PatientIndex:
    """Finds the Patient entry a reference names: by fullUrl, ``Patient/id`` or NHS number."""

    def __init__(self, entries: list[Any], patients: Mapping[int, Mapping[str, Any]]) -> None:
        self.by_key: dict[str, set[int]] = {}
        #: Every key that names each Patient entry (its aliases in this Bundle).
        self.keys_of: dict[int, set[str]] = {}
        for n, patient in patients.items():
            full_url = _str(entries[n].get("fullUrl"))
            keys = {full_url} if full_url else set()
            if full_url and "/Patient/" in full_url and not full_url.startswith("urn:"):
                keys.add("Patient/" + _HISTORY.sub("", full_url).rsplit("/Patient/", 1)[1])
            if _str(patient.get("id")):
                keys.add(f"Patient/{patient['id']}")
            keys.update(f"nhs:{number}" for number in nhs_numbers(patient))
            self.keys_of[n] = keys
            for key in keys:
                self.by_key.setdefault(key, set()).add(n)

    def resolve(self, subject: Any) -> tuple[str | None, str | None]:
        """The group key of ``subject`` (``entry N`` or ``nhs:NNN``), or None and why."""
        key = _subject_key(subject)
        if key is None:
            return None, "subject is not a Patient reference this gateway can resolve"
        found = self.by_key.get(key, set())
        if len(found) > 1:
            return None, "subject matches more than one Patient entry"
        if found:
            return f"entry {next(iter(found))}", None
        if key.startswith("nhs:"):
            return key, None
        return None, None


def _subject_key(subject: Any) -> str | None:
    if not isinstance(subject, Mapping):
        return None
    reference = _str(subject.get("reference"))
    if reference is None:
        ident = subject.get("identifier")
        if (
            isinstance(ident, Mapping)
            and ident.get("system") == NHS_NUMBER_SYSTEM
            and _str(ident.get("value"))
        ):
            return "nhs:" + _normal(str(ident["value"]))
        return None
    if reference.startswith("Patient?"):
        for name, value in parse_qsl(reference.partition("?")[2]):
            system, bar, number = value.rpartition("|")
            if name == "identifier" and bar and system == NHS_NUMBER_SYSTEM and number.strip():
                return "nhs:" + _normal(number)
        return None
    if reference.startswith("#"):
        return None
    reference = _HISTORY.sub("", reference)
    if ":" in reference.split("/", 1)[0]:  # absolute URL or urn:uuid: matches a fullUrl
        return reference
    return reference if reference.startswith("Patient/") else None


def nhs_numbers(patient: Mapping[str, Any]) -> list[str]:
    """The distinct NHS numbers of a Patient (spaces and dashes removed; not checked here)."""
    out: list[str] = []
    for ident in _nhs_identifiers(patient):
        number = _normal(str(ident["value"]))
        if number not in out:
            out.append(number)
    return out


def _nhs_identifiers(patient: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    idents = patient.get("identifier")
    if not isinstance(idents, list):
        return []
    return [
        i
        for i in idents
        if isinstance(i, Mapping) and i.get("system") == NHS_NUMBER_SYSTEM and _str(i.get("value"))
    ]


def _verification_status(patient: Mapping[str, Any]) -> str:
    for ident in _nhs_identifiers(patient):
        for ext in ident.get("extension") or ():
            if not isinstance(ext, Mapping) or ext.get("url") != VERIFICATION_URL:
                continue
            concept = ext.get("valueCodeableConcept")
            codings = concept.get("coding") if isinstance(concept, Mapping) else None
            usable = [c for c in codings or () if isinstance(c, Mapping) and _str(c.get("code"))]
            usable.sort(key=lambda c: c.get("system") != VERIFICATION_SYSTEM)
            if usable:
                return str(usable[0]["code"]).strip()
    return ""


def _record(context: _Context, entries: list[Any], group: _Group, aliases: set[str]) -> Item:
    members = ([group.patient] if group.patient is not None else []) + group.plans
    raw = _raw(context, [entries[n] for n in members])
    location = f"entry {group.index}"
    patient: Mapping[str, Any] | None = None
    status = ""
    number = group.nhs_number
    if group.patient is not None:
        patient = entries[group.patient]["resource"]
        assert patient is not None
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
        status = _verification_status(patient)
    person = _person_id(entries, group, number)
    local_id = _bounded(_qualified(context, person))
    # With no NHS number there is nothing to point at (and the record fails mapping anyway).
    aliases = {*aliases, f"nhs:{number}"} if number else set()
    plans = [
        {
            **_rebased(entries[n]["resource"], aliases, number),
            "local_id": _qualified(context, _plan_id(entries[n], f"{person} plan {k}")),
        }
        for k, n in enumerate(group.plans, start=1)
    ]
    fields = {
        "nhs_number": number,
        "nhs_number_status": status,
        # A list of zero or one codes: the spec writes the extension only when a status was sent.
        "nhs_number_verification": [status] if status else [],
        "patient": patient,
        "care_plans": plans,
        "source_ods": context.source_ods,
        "recorded_at": context.recorded_at,
    }
    return SourceRecord(SOURCE, location, local_id, fields, raw)


def _rebased(value: Any, aliases: set[str], nhs_number: str) -> Any:
    """``value`` with every reference to this person's Patient entry made a reference by NHS number.

    The sender's Patient id or fullUrl means nothing here (and might name
    someone else's resource here); the NHS number names the shared Patient.
    """
    if isinstance(value, list):
        return [_rebased(v, aliases, nhs_number) for v in value]
    if not isinstance(value, Mapping):
        return value
    if isinstance(value.get("reference"), str) and _subject_key(value) in aliases:
        kept = {k: v for k, v in value.items() if k not in ("reference", "identifier", "type")}
        return {"type": "Patient", "identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs_number}, **kept}
    return {k: _rebased(v, aliases, nhs_number) for k, v in value.items()}


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
    """The sender's id for a CarePlan: its id, else its first identifier, else its fullUrl.

    A plan with none of them is named by its place among the person's plans
    (the same when its record is replayed; a sender should send an identifier).
    """
    resource = entry["resource"]
    if _str(resource.get("id")):
        return f"CarePlan/{resource['id']}"
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
    code = code.strip().upper()
    return code if _ODS_CODE.fullmatch(code) else ""


def _normal(number: str) -> str:
    return _SEPARATORS.sub("", number)


def _str(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text or None
