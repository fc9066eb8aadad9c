"""FHIR transaction Bundles against the stub's ``Store``: parse and validate, then apply atomically.

``parse`` checks the Bundle and validates every resource (fhir.resources R4B plus the required
code sets, through ``mappings.validate``); it costs one model parse per resource and touches no
state. ``apply`` runs the entries in FHIR transaction order (DELETE, POST, PUT, GET) in one
``Txn`` and commits only if every entry succeeded. The response lists the entries in the order
they were sent. Both raise ``TransactionError`` (status + OperationOutcome) and then nothing is
stored.

Supported requests: ``PUT Type/id``, ``PUT Type?search`` (conditional update), ``POST Type``
(with ``ifNoneExist``), ``DELETE Type/id``, ``DELETE Type?search`` (conditional, one match at
most), ``GET Type/id`` and ``GET Type?search``; ``ifMatch`` on PUT. ``urn:uuid:`` fullUrls of
created or updated entries are resolved in the other entries' references. PATCH is refused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from fhir.resources.R4B import get_fhir_model_class

from gateway.hie_stub.search import Query, SearchError, parse_query
from gateway.hie_stub.store import Stored, Txn
from mappings.validate import ValidationFailure, validate

ORDER: Final = ("DELETE", "POST", "PUT", "GET")
FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class TransactionError(Exception):
    """The whole transaction failed: ``status`` and an OperationOutcome ``outcome`` to send back."""

    def __init__(self, status: int, code: str, diagnostics: str, index: int | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        where = "Bundle" if index is None else f"Bundle.entry[{index}]"
        self.outcome = operation_outcome(code, diagnostics, where)


def known_type(rtype: str) -> bool:
    """Whether ``rtype`` is a FHIR resource type (of the R4B models the validator uses)."""
    try:
        get_fhir_model_class(rtype)
    except (KeyError, ValueError):  # fhir.resources 8 raises ValueError for an unknown name
        return False
    return True


def operation_outcome(code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


@dataclass
class Entry:
    index: int
    method: str
    rtype: str
    rid: str | None
    query: Query | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_match: str | None
    if_none_exist: Query | None


def parse(bundle: Any) -> list[Entry]:
    """The entries of a valid transaction Bundle, every resource validated; raises TransactionError."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise TransactionError(400, "invalid", "the body is not a FHIR Bundle")
    if bundle.get("type") != "transaction":
        raise TransactionError(400, "not-supported", "only transaction Bundles are accepted")
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        raise TransactionError(400, "structure", "Bundle.entry must be a list")
    entries = [_entry(i, e) for i, e in enumerate(raw)]
    seen: set[tuple[str, str]] = set()
    for e in entries:
        if e.rid is not None and e.method in ("PUT", "DELETE"):
            if (e.rtype, e.rid) in seen:
                raise TransactionError(400, "duplicate", "the same resource appears twice", e.index)
            seen.add((e.rtype, e.rid))
    return entries


def _entry(index: int, raw: Any) -> Entry:
    def fail(diagnostics: str, code: str = "invalid") -> TransactionError:
        return TransactionError(400, code, diagnostics, index)

    request = raw.get("request") if isinstance(raw, Mapping) else None
    if not isinstance(request, Mapping) or not isinstance(request.get("url"), str):
        raise fail("entry.request with method and url is required")
    method = request.get("method")
    if method == "PATCH":
        raise fail("PATCH is not supported by the stub", "not-supported")
    if method not in ORDER:
        raise fail("entry.request.method must be DELETE, POST, PUT or GET")
    path, _, qs = str(request["url"]).lstrip("/").partition("?")
    parts = path.split("/")
    if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
        raise fail("entry.request.url must be Type, Type/id or Type?search")
    rtype, rid = parts[0], (parts[1] if len(parts) == 2 else None)
    if not known_type(rtype):
        raise fail("unknown resource type in entry.request.url", "not-supported")
    if rid is not None and not FHIR_ID.fullmatch(rid):
        raise fail("the id in entry.request.url is not a FHIR id")
    try:
        query = parse_query(parse_qsl(qs, keep_blank_values=True)) if qs else None
        none_exist = request.get("ifNoneExist")
        if_none_exist = parse_query(parse_qsl(str(none_exist))) if none_exist else None
    except SearchError as exc:
        raise fail(str(exc), "not-supported") from None
    if method in ("PUT", "DELETE") and (rid is None) == (query is None):
        raise fail(f"{method} needs Type/id or Type?search")
    if method == "POST" and (rid is not None or query is not None):
        raise fail("POST creates: the url is the type only")
    resource = raw.get("resource")
    if method in ("PUT", "POST"):
        resource = _checked(resource, rtype, rid, fail)
    if_match = request.get("ifMatch")
    full_url = raw.get("fullUrl")
    return Entry(
        index=index,
        method=method,
        rtype=rtype,
        rid=rid,
        query=query,
        resource=resource if method in ("PUT", "POST") else None,
        full_url=full_url if isinstance(full_url, str) else None,
        if_match=str(if_match) if if_match else None,
        if_none_exist=if_none_exist,
    )


def _checked(
    resource: Any, rtype: str, rid: str | None, fail: Callable[..., TransactionError]
) -> dict[str, Any]:
    if not isinstance(resource, Mapping):
        raise fail("entry.resource is required for PUT and POST")
    if resource.get("resourceType") != rtype:
        raise fail("entry.resource.resourceType does not match the request url")
    if rid is not None and resource.get("id") not in (None, rid):
        raise fail("entry.resource.id does not match the id in the request url")
    try:
        validate(resource)
    except ValidationFailure as exc:
        raise fail(
            f"{exc.reason}: {exc}", "processing" if exc.reason != "fhir-invalid" else "invalid"
        ) from None
    return dict(resource)


def apply(txn: Txn, entries: list[Entry], representation: bool = False) -> dict[str, Any]:
    """Run ``entries`` in ``txn`` and commit; the transaction-response Bundle. Raises TransactionError."""
    responses: dict[int, dict[str, Any]] = {}
    targets: dict[int, str] = {}
    for e in _phase(entries, "DELETE"):
        responses[e.index] = {"response": {"status": "204 No Content"}}
        for rid in _delete_targets(txn, e):
            txn.delete(e.rtype, rid)
    for e in _phase(entries, "POST"):
        existing = _matches(txn, e, e.if_none_exist) if e.if_none_exist else []
        if existing:
            responses[e.index] = _written(existing[0], "200 OK", representation)
        else:
            targets[e.index] = uuid.uuid4().hex
    for e in _phase(entries, "PUT"):
        targets[e.index] = _put_target(txn, e)
    resolved = {
        e.full_url: f"{e.rtype}/{targets[e.index]}" for e in entries if e.index in targets and e.full_url
    }
    for e in entries:
        if e.index not in targets or e.resource is None:
            continue
        resource = _resolve(e.resource, resolved)
        current = txn.get(e.rtype, targets[e.index])
        if e.if_match and (current is None or current.etag != e.if_match):
            raise TransactionError(412, "conflict", "ifMatch does not match the current version", e.index)
        write = txn.put(e.rtype, targets[e.index], resource)
        status = "201 Created" if write.created else "200 OK"
        responses[e.index] = _written(write.stored, status, representation)
    for e in _phase(entries, "GET"):
        responses[e.index] = _read(txn, e)
    txn.commit()
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [responses[e.index] for e in entries],
    }


def _phase(entries: list[Entry], method: str) -> Iterator[Entry]:
    return (e for e in entries if e.method == method)


def _matches(txn: Txn, e: Entry, query: Query | None) -> list[Stored]:
    found = txn.search(e.rtype, query or Query())
    if len(found) > 1:
        raise TransactionError(
            412, "multiple-matches", "the condition matches more than one resource", e.index
        )
    return found


def _delete_targets(txn: Txn, e: Entry) -> list[str]:
    if e.rid is not None:
        return [e.rid]
    return [s.resource["id"] for s in _matches(txn, e, e.query)]


def _put_target(txn: Txn, e: Entry) -> str:
    assert e.resource is not None
    if e.rid is not None:
        return e.rid
    found = _matches(txn, e, e.query)
    sent_id = e.resource.get("id")
    if found:
        if sent_id not in (None, found[0].resource["id"]):
            raise TransactionError(400, "invalid", "resource.id differs from the matched resource", e.index)
        return str(found[0].resource["id"])
    return str(sent_id) if sent_id else uuid.uuid4().hex


def _written(stored: Stored, status: str, representation: bool) -> dict[str, Any]:
    resource = stored.resource
    entry: dict[str, Any] = {
        "response": {
            "status": status,
            "location": f"{resource['resourceType']}/{resource['id']}/_history/{stored.version}",
            "etag": stored.etag,
            "lastModified": resource["meta"]["lastUpdated"],
        }
    }
    if representation:
        entry["resource"] = resource
    return entry


def _read(txn: Txn, e: Entry) -> dict[str, Any]:
    if e.rid is None:
        query = e.query or Query()
        return {
            "resource": searchset(txn.search(e.rtype, query), query.count),
            "response": {"status": "200 OK"},
        }
    stored = txn.get(e.rtype, e.rid)
    if stored is None:
        return {"response": {"status": "404 Not Found"}}
    return {"resource": stored.resource, "response": {"status": "200 OK", "etag": stored.etag}}


def searchset(found: list[Stored], count: int | None = None) -> dict[str, Any]:
    """A searchset Bundle of ``found`` (the first ``count`` of them; total is all matches)."""
    shown = found if count is None else found[:count]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "entry": [_match(s.resource) for s in shown],
    }


def _match(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": "match"},
    }


def _resolve(value: Any, resolved: Mapping[str, str]) -> Any:
    """``value`` with every ``reference`` naming a resolved fullUrl rewritten to ``Type/id``."""
    if not resolved:
        return value
    if isinstance(value, dict):
        return {
            k: resolved.get(v, v) if k == "reference" and isinstance(v, str) else _resolve(v, resolved)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve(v, resolved) for v in value]
    return value
