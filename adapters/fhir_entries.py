"""What one entry of a pushed Bundle asks for, and whether this gateway can do it as asked.

FHIR R4 http.html (transaction, batch, conditional create and update) and bundle.html (bdl-3).
Each check gives None or a ``Problem``: a stable reason, the field (relative to the entry:
``request.url``, ``resource.activity[0].modifierExtension``) and a detail that never quotes a value.

Checked per entry, before entries are grouped per person (the entry is quarantined alone):

    fhir-invalid-entry               not an object; in a transaction or batch, no ``request`` object
                                     (bdl-3), a method that is not an R4 HTTP verb, no ``url``; no
                                     resource, or one without ``resourceType``
    fhir-delete-not-supported        DELETE
    fhir-method-not-supported        GET, HEAD, PATCH
    fhir-url-mismatch                ``request.url`` names another type, or (PUT Type/id) another id

Checked per record, once entries are grouped (the person's whole record is quarantined):

    fhir-conditional-not-supported   ``ifNoneExist``, ``ifNoneMatch``, ``ifModifiedSince``; ``ifMatch``
                                     but on a CarePlan PUT whose caller checks it against the store
                                     (or replays the record: the precondition was its push's); a
                                     conditional URL other than ``identifier=system|value``
    fhir-conditional-mismatch        a conditional update whose identifier is not the resource's
    fhir-modifier-extension          a ``modifierExtension`` anywhere in the entry: none is understood
                                     here, and FHIR forbids processing the element as if it were absent
    fhir-implicit-rules              ``implicitRules`` on the resource or a contained one
    fhir-security-label              a ``meta.security`` label asking for more than normal handling
                                     (confidentiality ``R``, ``V``, or any label of another system) on
                                     the resource or a contained one: concord enforces no labels, and
                                     would share what the sender restricted
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

from adapters.fhir_references import NHS_NUMBER_SYSTEM, nhs_numbers, normal, stripped

Problem = tuple[str, str | None, str]

#: The R4 HTTPVerb codes (a required binding: upper case).
HTTP_VERBS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
#: The methods of the entries this gateway takes: creates and updates (FHIR R4 transaction processing).
WRITE_METHODS: Final = frozenset({"POST", "PUT"})
#: Security labels that ask for no handling beyond a normal health record's (v3-Confidentiality
#: unrestricted, low, moderate, normal): accepted, and not carried. Anything else is refused.
CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
NORMAL_HANDLING: Final = frozenset((CONFIDENTIALITY, code) for code in ("U", "L", "M", "N"))
#: Request elements that ask for something this gateway does not do (conditional create and reads).
_NOT_DONE: Final = {
    "ifNoneExist": "a conditional create (ifNoneExist) is not supported: a Patient entry never makes a "
    "second Patient here (people are keyed by NHS number), and a CarePlan is keyed by its id or "
    "identifier; send the entry without it, or as PUT Type?identifier=system|value",
    "ifNoneMatch": "ifNoneMatch (a conditional read) is not supported on a write",
    "ifModifiedSince": "ifModifiedSince (a conditional read) is not supported on a write",
}


def entry_problem(entry: Any, bundle_type: str) -> Problem | None:
    """Whether an entry can be read at all, and is a create or update of its own resource."""
    if not isinstance(entry, Mapping):
        return "fhir-invalid-entry", None, "entry is not a JSON object"
    request: Mapping[str, Any] = {}
    if bundle_type in ("transaction", "batch"):
        problem = _request_problem(entry.get("request"))
        if problem is not None:
            return problem
        request = entry["request"]
    elif isinstance(entry.get("request"), Mapping):
        request = entry["request"]  # a collection entry (read by the command line) need not have one
    method = request.get("method")
    method = method if isinstance(method, str) else ""
    if method == "DELETE":
        return "fhir-delete-not-supported", "request.method", "DELETE entries are not accepted"
    if method and method not in WRITE_METHODS:
        shown = method if method in HTTP_VERBS else "this method"
        detail = f"{shown} entries are not accepted (POST or PUT)"
        return "fhir-method-not-supported", "request.method", detail
    resource = entry.get("resource")
    if not isinstance(resource, Mapping):
        return "fhir-invalid-entry", "resource", "entry has no resource object"
    if not isinstance(resource.get("resourceType"), str):
        return "fhir-invalid-entry", "resource.resourceType", "resource has no resourceType"
    return _url_problem(method, stripped(request.get("url")), resource)


def _request_problem(request: Any) -> Problem | None:
    """bdl-3 and the R4 Bundle.entry.request element: a transaction or batch entry says what to do."""
    if not isinstance(request, Mapping):
        detail = "a transaction or batch entry needs a request object (bdl-3)"
        return "fhir-invalid-entry", "request", detail
    if request.get("method") not in HTTP_VERBS:
        detail = "request.method must be one of GET, HEAD, POST, PUT, DELETE, PATCH (upper case)"
        return "fhir-invalid-entry", "request.method", detail
    if stripped(request.get("url")) is None:
        return "fhir-invalid-entry", "request.url", "request.url must be a string naming the resource"
    return None


def _url_problem(method: str, url: str | None, resource: Mapping[str, Any]) -> Problem | None:
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
    body_id = stripped(resource.get("id"))
    if rid is not None and body_id is not None and rid != body_id:
        return "fhir-url-mismatch", "request.url", "request.url names another id than the resource's"
    return None


def conditional_problem(entry: Mapping[str, Any], takes_if_match: bool) -> Problem | None:
    """A conditional interaction this gateway cannot honour as asked (never ignored: refused).

    Taken: ``PUT Type?identifier=system|value`` whose identifier is the resource's (a Patient's NHS
    number, one of a CarePlan's identifiers). No search is made: the criteria are only checked
    against the body, and the entry is applied as an update of the record its body identifies
    (``adapters.fhir``: a Patient by id, else fullUrl, else NHS number; a CarePlan by id, else the
    criteria's identifier). So it is no FHIR conditional update, and none is declared.
    ``ifMatch`` on a CarePlan update when ``takes_if_match``: the caller compares it with the
    stored version (``POST /fhir``), or replays a quarantined record (the precondition belonged to
    the original push: not checked again, not refused).
    """
    request = entry.get("request")
    if not isinstance(request, Mapping):
        return None  # a collection entry: no interaction asked for
    for name, detail in _NOT_DONE.items():
        if request.get(name) not in (None, ""):
            return "fhir-conditional-not-supported", f"request.{name}", detail
    resource = entry["resource"]
    method = request.get("method")
    if request.get("ifMatch") not in (None, "") and not (
        takes_if_match and method == "PUT" and resource["resourceType"] == "CarePlan"
    ):
        detail = "ifMatch is taken on a CarePlan update (PUT) pushed to POST /fhir only (as a push's etag)"
        return "fhir-conditional-not-supported", "request.ifMatch", detail
    url = stripped(request.get("url")) or ""
    if "?" not in url:
        return None
    if method != "PUT":
        detail = "search parameters in a POST url are not supported (a conditional create is ifNoneExist)"
        return "fhir-conditional-not-supported", "request.url", detail
    return _criteria_problem(url.partition("?")[2], resource)


def _criteria_problem(query: str, resource: Mapping[str, Any]) -> Problem | None:
    criterion = conditional_identifier(query)
    if criterion is None:
        detail = "a conditional update is taken by one criterion, identifier=system|value"
        return "fhir-conditional-not-supported", "request.url", detail
    system, value = criterion
    if resource["resourceType"] == "Patient":
        if system != NHS_NUMBER_SYSTEM:
            detail = f"a Patient is updated conditionally by NHS number only ({NHS_NUMBER_SYSTEM}|N)"
            return "fhir-conditional-not-supported", "request.url", detail
        if nhs_numbers(resource) != [normal(value)]:
            detail = "request.url names another NHS number than the resource's"
            return "fhir-conditional-mismatch", "request.url", detail
        return None
    idents = resource.get("identifier")
    carried = {
        (stripped(i.get("system")), stripped(i.get("value")))
        for i in (idents if isinstance(idents, list) else ())
        if isinstance(i, Mapping)
    }
    if (system, value) not in carried:
        detail = "request.url names an identifier the resource does not carry"
        return "fhir-conditional-mismatch", "request.url", detail
    return None


def conditional_identifier(query: str) -> tuple[str, str] | None:
    """``identifier=system|value`` (``%7C`` too) as (system, value); None for any other criteria."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "identifier":
        return None
    system, bar, value = pairs[0][1].rpartition("|")
    if not bar or not system.strip() or not value.strip():
        return None
    return system.strip(), value.strip()


def not_understood(entry: Mapping[str, Any]) -> Problem | None:
    """The first ``modifierExtension``, ``implicitRules`` or restrictive security label in an entry.

    FHIR R4 extensibility.html: a modifier extension changes the meaning of the element holding
    it, so an element with one cannot be processed as if it were absent; resource.html: a
    resource with ``implicitRules`` the system does not understand is refused;
    security-labels.html: the recipient of a labelled resource is obliged to enforce the label's
    handling caveats, which this gateway cannot (a restricted PDS record's address, say).
    """
    return _first_modifier(entry, "")


def _first_modifier(value: Any, path: str) -> Problem | None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_modifier(item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if not isinstance(value, Mapping):
        return None
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key == "modifierExtension" and item:
            detail = f"{where} is a modifier extension this gateway does not understand"
            return "fhir-modifier-extension", where, detail
        if key == "implicitRules" and item and "resourceType" in value:
            detail = f"{where}: this gateway does not understand the rules the resource was made under"
            return "fhir-implicit-rules", where, detail
        if key == "meta" and "resourceType" in value:
            label = restrictive_label(item)
            if label is not None:
                return "fhir-security-label", f"{where}.security", label
        found = _first_modifier(item, where)
        if found is not None:
            return found
    return None


def restrictive_label(meta: Any) -> str | None:
    """What is wrong with ``meta.security`` (a detail naming the label's code, never patient data), or None
    when every label asks for no more than normal handling."""
    labels = meta.get("security") if isinstance(meta, Mapping) else None
    if not labels:
        return None
    for label in labels if isinstance(labels, list) else [labels]:
        system = label.get("system") if isinstance(label, Mapping) else None
        code = label.get("code") if isinstance(label, Mapping) else None
        if (system, code) not in NORMAL_HANDLING:
            shown = code if system == CONFIDENTIALITY and code in ("R", "V") else ""
            return (
                f"security label {shown or 'of another kind'} asks for handling this gateway does not "
                "enforce: the record is not shared (send it without, once it may be shared normally)"
            )
    return None
