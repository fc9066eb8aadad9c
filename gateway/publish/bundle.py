"""Transaction Bundles for the HIE, joined from stored JSON (never re-serialised), and reading replies. Pure.

A person's publication is one transaction: the Patient by conditional update on
the NHS number identifier (so the HIE keeps one Patient per person whatever ids
it uses), every CarePlan and Provenance by id, and a DELETE for anything the
HIE was sent before that is no longer in the view. A retraction (after an
opt-out) is DELETEs only. Sending the same bundle twice changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.redact import holds_number

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"

Loaded = Sequence[tuple[str, str, bytes]]


def refs_of(entries: Loaded) -> list[str]:
    """``Type/id/_history/version`` of each loaded resource (what the HIE will hold after this)."""
    out = []
    for rtype, rid, content in entries:
        version = orjson.loads(content).get("meta", {}).get("versionId", "1")
        out.append(f"{rtype}/{rid}/_history/{version}")
    return out


def _plain(ref: str) -> str:
    return ref.split("/_history/", 1)[0]


def _delete(ref: str, nhs_number: str) -> bytes:
    url = f"Patient?identifier={NHS_NUMBER_SYSTEM}|{nhs_number}" if ref.startswith("Patient/") else ref
    return orjson.dumps({"request": {"method": "DELETE", "url": url}})


def publication(entries: Loaded, nhs_number: str, published: Iterable[str]) -> bytes:
    """The transaction that makes the HIE hold exactly ``entries`` for this person."""
    current = {f"{t}/{i}" for t, i, _ in entries}
    parts = [_delete(ref, nhs_number) for ref in sorted({_plain(r) for r in published} - current)]
    for rtype, rid, content in entries:
        if rtype == "Patient":
            url = f"Patient?identifier={NHS_NUMBER_SYSTEM}|{nhs_number}"
        else:
            url = f"{rtype}/{rid}"
        parts.append(
            b'{"fullUrl":"urn:uuid:'
            + _uuid(rid).encode()
            + b'","resource":'
            + content
            + b',"request":{"method":"PUT","url":"'
            + url.encode()
            + b'"}}'
        )
    return _transaction(parts)


def retraction(published: Iterable[str], nhs_number: str) -> bytes:
    """DELETEs of everything the HIE was sent for this person (the Patient by its NHS number)."""
    refs = sorted({_plain(r) for r in published})
    if not any(r.startswith("Patient/") for r in refs):
        refs.append("Patient/")
    return _transaction([_delete(ref, nhs_number) for ref in refs])


def _transaction(parts: list[bytes]) -> bytes:
    return b'{"resourceType":"Bundle","type":"transaction","entry":[' + b",".join(parts) + b"]}"


def _uuid(rid: str) -> str:
    h = rid.ljust(32, "0")[:32] if all(c in "0123456789abcdef" for c in rid) else _hex(rid)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _hex(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Reply:
    """What the HIE said about a transaction: success, or the first failing entry's outcome (its
    OperationOutcome as ``safe_outcome`` keeps it, or concord's own account of a malformed answer)."""

    ok: bool
    failed_entry: int | None = None
    outcome: dict[str, Any] | None = None


def request_methods(bundle: bytes) -> list[str]:
    """The method of each entry of a transaction this module built, in order."""
    return [entry["request"]["method"] for entry in orjson.loads(bundle)["entry"]]


def read_reply(status: int, body: bytes, methods: Sequence[str]) -> Reply:
    """Read a transaction-response entry by entry against the ``methods`` sent; a 2xx is a success
    only with one successful entry per request (FHIR R4 transaction). A DELETE answered 404 or 410
    succeeded: what it removes is not there (it may never have arrived)."""
    try:
        doc = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    if not 200 <= status < 300:
        refused = doc if doc.get("resourceType") == "OperationOutcome" else None
        return Reply(False, None, safe_outcome(refused))
    if doc.get("resourceType") != "Bundle" or doc.get("type") != "transaction-response":
        return Reply(False, None, problem("the HIE did not answer with a transaction-response"))
    entries = doc.get("entry") or []
    if not isinstance(entries, list) or len(entries) != len(methods):
        answered = len(entries) if isinstance(entries, list) else 0
        counted = f"the HIE answered {answered} entries for {len(methods)} requests"
        return Reply(False, None, problem(counted))
    for index, (entry, method) in enumerate(zip(entries, methods, strict=True)):
        response = entry.get("response") if isinstance(entry, dict) else None
        if not isinstance(response, dict):
            return Reply(False, index, problem("an entry of the transaction-response has no response"))
        # An HTTP status code: three digits, then perhaps its reason phrase ("201 Created").
        code = str(response.get("status", "")).split(" ", 1)[0]
        gone = method == "DELETE" and code in ("404", "410")
        if not ((_STATUS.fullmatch(code) and code.startswith("2")) or gone):
            return Reply(False, index, safe_outcome(response.get("outcome")))
    return Reply(True)


_STATUS = re.compile(r"[1-5][0-9][0-9]")


def problem(diagnostics: str) -> dict[str, Any]:
    """concord's own account of an answer it could not use, as an OperationOutcome."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": diagnostics}],
    }


#: A coding's ``system``/``version``/``code``: no spaces, short, and no run of six or more digits
#: (an HIE may code a refusal with what it refused: an NHS number, a date of birth, a phone number).
_TOKEN = re.compile(r"[A-Za-z0-9_.:/#|+-]{1,200}")
#: R4's IssueSeverity and IssueType codes (required bindings): an issue's ``severity`` and ``code``.
ISSUE_SEVERITIES: Final = frozenset({"fatal", "error", "warning", "information"})
ISSUE_TYPES: Final = frozenset(
    {
        "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
        "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
        "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
        "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store", "exception",
        "timeout", "incomplete", "throttled", "informational",
    }
)  # fmt: skip
#: An element path (``expression``, ``location``): a FHIRPath of names and indexes only, so that it
#: cannot quote a value (``Patient.name.where(family='…')`` is not kept); or an XPath of the same kind.
_PATH = re.compile(
    r"[A-Za-z][A-Za-z0-9_]*(\[[0-9]{1,6}\])?(\.[A-Za-z][A-Za-z0-9_]*(\[[0-9]{1,6}\])?){0,30}"
    r"|(/[a-z]{1,10}:[A-Za-z][A-Za-z0-9_]*(\[[0-9]{1,6}\])?){1,30}"
)
MAX_ISSUES = 20


def safe_outcome(outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    """What of the HIE's OperationOutcome is kept with a dead letter: each issue's severity, code,
    coded details (system, version and code of each coding) and the elements it names, not its free
    text (``diagnostics``, ``details.text``, a coding's ``display``: they may quote the data sent).
    Whatever is not of the expected shape is left out: an HIE's answer never makes this raise."""
    if not isinstance(outcome, dict):
        return None
    issues = outcome.get("issue")
    kept = []
    for issue in issues[:MAX_ISSUES] if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        one: dict[str, Any] = {}
        if issue.get("severity") in ISSUE_SEVERITIES:
            one["severity"] = issue["severity"]
        if issue.get("code") in ISSUE_TYPES:
            one["code"] = issue["code"]
        for key in ("expression", "location"):
            paths = issue.get(key)
            if isinstance(paths, list):
                safe = [p for p in paths[:MAX_ISSUES] if isinstance(p, str) and _PATH.fullmatch(p)]
                if safe:
                    one[key] = safe
        details = issue.get("details")
        codings = details.get("coding") if isinstance(details, dict) else None
        if isinstance(codings, list):
            coded = [
                {k: c[k] for k in ("system", "version", "code") if _is_token(c.get(k))}
                for c in codings[:MAX_ISSUES]
                if isinstance(c, dict) and not _quotes_a_number(c)
            ]
            one["details"] = {"coding": [c for c in coded if c]}
        kept.append(one)
    return {"resourceType": "OperationOutcome", "issue": kept}


def _quotes_a_number(coding: dict[str, Any]) -> bool:
    """A coding whose system, version or code holds a run of digits: dropped whole."""
    return any(holds_number(str(coding.get(k, ""))) for k in ("system", "version", "code"))


def _is_token(value: object) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None
