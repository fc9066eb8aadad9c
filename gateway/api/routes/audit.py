"""The AuditEvent API and the log's integrity check, for the IG board (roles ``ig-auditor``, ``admin``).

``GET /fhir/AuditEvent``   the log's entries as AuditEvents (``consent.auditevent``), oldest first,
                           filtered and paged; scope ``system/AuditEvent.read``
``GET /audit/verify``      ``verify_store`` over the whole log with the gateway's public key

Search parameters (all optional, combined with AND; a comma within one means OR where noted):

    patient.identifier, patient:identifier   the person (``https://fhir.nhs.uk/Id/nhs-number|N``)
    agent, agent.identifier, agent:identifier the requesting organisation's ODS code
    altid                                    the requesting client's id
    date                                     ``eq`` (a day), ``ge``, ``gt``, ``le``, ``lt``; repeatable
    outcome                                  ``0`` success/permit, ``4`` deny (OR)
    subtype                                  concord action codes (``view``, ``opt-out`` ...),
                                             restful codes (``create`` ...) or ``disclose`` (OR)
    action                                   ``C``, ``R``, ``U``, ``E`` (OR)
    type                                     ``110106`` disclosures, ``rest`` consent changes (OR)
    _count, _page_token                      page size; the token from a ``next`` link

A page token is ``{after}.{upto}.{mac}``: the last ``seq`` shown, the log's head when
the first page was asked for (later pages never go past it: a search is a snapshot),
and an HMAC over both, the client and the filters. Every search is itself logged
(``audit-search``, naming the person when one was searched for) before it is answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import ColumnElement, and_, false, or_

from consent.auditevent import ACTIONS, audit_event
from consent.chain import Checkpoint, Kind, StoredEntry, public_key_pem, timestamp
from gateway.api import openapi
from gateway.api.deps import RequestId, ServicesDep
from gateway.api.outcome import FHIR_JSON, BadRequest, ignored_parameters
from gateway.api.principal import Principal, Role
from gateway.api.routes.consent import allowed, log_read
from gateway.api.search import Limits, parse_count, parse_identifier, strict_handling
from gateway.audit.export import AuditFilter, parse_when
from gateway.audit.verify import verify_store
from gateway.bootstrap import Services
from gateway.redact import parameter_name
from gateway.store.audit import entries_query, read_head, stream_entries
from gateway.store.schema import audit_log

router = APIRouter(tags=["Audit"], responses=openapi.ERRORS)

READ_SCOPE: Final = "system/AuditEvent.read"
AUDITORS: Final = frozenset({Role.IG_AUDITOR, Role.ADMIN})
SEARCH_ACTION: Final = "audit-search"
ODS_SYSTEM: Final = "https://fhir.nhs.uk/Id/ods-organization-code"
PAGE_TOKEN: Final = "_page_token"  # noqa: S105 - a parameter name, not a secret
_PATIENT: Final = frozenset({"patient.identifier", "patient:identifier"})
_AGENT: Final = frozenset({"agent", "agent.identifier", "agent:identifier"})
_LISTS: Final = frozenset({"outcome", "subtype", "action", "type"})
_KNOWN: Final = _PATIENT | _AGENT | _LISTS | {"altid", "date", "_count", "_format"}
_PREFIXES: Final = frozenset({"eq", "ge", "gt", "le", "lt"})
_ODS: Final = re.compile(r"[A-Z0-9]{1,20}")

Auditor = Annotated[Principal, Depends(allowed(AUDITORS, READ_SCOPE, "the audit log"))]


@dataclass(slots=True)
class AuditQuery:
    """A parsed AuditEvent search: the filter, the extra conditions, the parameters that shaped it
    (``_count`` as applied); the ``self`` link is these and the page token."""

    where: AuditFilter = field(default_factory=AuditFilter)
    client_id: str | None = None
    since: str | None = None
    until: str | None = None
    #: One (parameter, codes) per ``outcome``, ``subtype``, ``action`` or ``type`` parameter: an entry
    #: must match one code of each (a comma is OR, a repeated parameter AND, as FHIR search has it).
    codes: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    count: int = 20
    token: str | None = None
    used: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def conditions(self) -> list[ColumnElement[bool]]:
        c = audit_log.c
        found = self.where.conditions()
        if self.client_id is not None:
            found.append(c.client_id == self.client_id)
        if self.since is not None:
            found.append(c.at >= self.since)
        if self.until is not None:
            found.append(c.at <= self.until)
        for name, codes in self.codes:
            match = _MATCHES[name]
            found.append(or_(*(match(code) for code in sorted(codes))))
        return found


@router.get(
    "/fhir/AuditEvent",
    openapi_extra={
        "parameters": [
            openapi.param("patient.identifier", openapi.NHS_IDENTIFIER + " (or patient:identifier)"),
            openapi.param("agent", "The requesting organisation's ODS code (or agent.identifier)"),
            openapi.param("altid", "The requesting client's id"),
            openapi.param("date", "A date or instant with a prefix (eq, ge, gt, le, lt); may repeat"),
            openapi.param("outcome", "0 (success) or 4 (denied), comma-separated"),
            openapi.param(
                "subtype",
                "The subtype: a RESTful interaction (read, search-type, ...), disclose, or an action",
            ),
            openapi.param("action", "The AuditEvent action code (C, R, U, D, E), comma-separated"),
            openapi.param("type", "110106 (disclosures) or another DICOM type code (the other entries)"),
            *openapi.RESULT_PARAMETERS[:1],
            openapi.param("_page_token", "The paging token from a Bundle's next link"),
            *openapi.RESULT_PARAMETERS[2:],
        ]
    },
)
async def search_audit_events(
    request: Request, caller: Auditor, services: ServicesDep, request_id: RequestId
) -> Response:
    """A page of matching AuditEvents; the search is logged before it is answered."""
    settings = services.settings
    query = parse_audit_query(
        list(request.query_params.multi_items()),
        strict_handling(request.headers.get("prefer")),
        Limits(settings.default_page_size, settings.max_page_size),
    )
    tokens = PageTokens(settings.resolved_token_secret())
    page, upto, more = await audit_page(services, query, tokens, caller.client_id)
    await log_read(
        services,
        caller,
        request_id,
        SEARCH_ACTION,
        query.where.nhs_number,
        what={"AuditEvent": len(page)},
    )
    base = settings.public_url.rstrip("/") + "/fhir"
    ods = settings.organisation_ods
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base}/AuditEvent/log-{s.seq}",
            "resource": audit_event(s.seq, s.entry, s.entry_hash, ods),
            "search": {"mode": "match"},
        }
        for s in page
    ]
    if query.ignored:
        entries.append({"resource": ignored_parameters(list(query.ignored)), "search": {"mode": "outcome"}})
    shown = [*query.used, *([(PAGE_TOKEN, query.token)] if query.token else [])]
    links = [{"relation": "self", "url": f"{base}/AuditEvent?{urlencode(shown)}"}]
    if more:
        token = tokens.issue(caller.client_id, query.used, page[-1].seq, upto)
        following = urlencode([*query.used, (PAGE_TOKEN, token)])
        links.append({"relation": "next", "url": f"{base}/AuditEvent?{following}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if entries:
        bundle["entry"] = entries
    return Response(orjson.dumps(bundle), 200, media_type=FHIR_JSON)


async def audit_page(
    services: Services, query: AuditQuery, tokens: PageTokens, client_id: str
) -> tuple[list[StoredEntry], int, bool]:
    """One page of matching entries in ``seq`` order, the snapshot bound, and whether more follow.

    The first page fixes the snapshot at the log's head (``upto``); a token carries it to the next.
    """
    async with services.engine.connect() as conn:
        if query.token is None:
            after, upto = 0, (await read_head(conn)).seq
        else:
            after, upto = tokens.read(query.token, client_id, query.used)
        if not query.count:
            return [], upto, False
        wanted = entries_query().where(*query.conditions(), audit_log.c.seq <= upto, audit_log.c.seq > after)
        async for chunk in stream_entries(conn, wanted, query.count + 1):
            return chunk[: query.count], upto, len(chunk) > query.count
    return [], upto, False


@router.get("/audit/verify")
async def verify_log(caller: Auditor, services: ServicesDep) -> Response:
    """Verify every entry and checkpoint of the log; the result as JSON (intact or the first bad entry)."""
    public = services.log.key.public_key()
    verified = await verify_store(services.engine, {services.log.key_id: public})
    result = verified.result
    last = result.last_checkpoint
    body = {
        "intact": result.ok,
        "entries": result.entries,
        "checkpoints": result.checkpoints,
        "last_checkpoint": None
        if last is None
        else {
            "seq": last.seq,
            "entry_hash": last.entry_hash,
            "signed_at": last.signed_at,
            "key_id": last.key_id,
        },
        "unsigned_entries": result.unsigned,
        "problem": None
        if result.problem is None
        else {"seq": result.problem.seq, "code": result.problem.code, "message": result.problem.message},
        "seconds": round(verified.seconds, 3),
        "public_key_pem": public_key_pem(public),
    }
    return Response(orjson.dumps(body), 200, media_type="application/json")


def _checkpoint(cp: Checkpoint) -> dict[str, Any]:
    return {"seq": cp.seq, "entry_hash": cp.entry_hash, "signed_at": cp.signed_at, "key_id": cp.key_id}


def parse_audit_query(pairs: Sequence[tuple[str, str]], strict: bool, limits: Limits) -> AuditQuery:
    """Validate an AuditEvent search (pure); ``BadRequest`` naming the parameter at fault."""
    query = AuditQuery(count=limits.default)
    for name, value in pairs:
        if name == PAGE_TOKEN:
            query.token = value or None
            continue
        if name not in _KNOWN:
            if strict:
                raise BadRequest(f"unknown search parameter: {parameter_name(name)}", code="not-supported")
            query.ignored.append(parameter_name(name))
            continue
        if not value or name == "_format":
            continue  # an empty parameter is ignored (FHIR search)
        if name == "_count":  # as applied (capped): the links carry the page size actually used
            query.count = parse_count(value, limits)
            value = str(query.count)
        query.used.append((name, value))
        if name in _PATIENT:
            if query.where.nhs_number is not None:
                raise BadRequest("patient.identifier: give one person")
            query.where = replace(query.where, nhs_number=parse_identifier(value).nhs_number)
        elif name in _AGENT:
            query.where = replace(query.where, org_ods=_ods(value))
        elif name == "altid":
            query.client_id = value.strip()
        elif name == "date":
            since, until = _window(value)
            if since is not None:
                query.since = max(query.since or since, since)
            if until is not None:
                query.until = min(query.until or until, until)
        elif name != "_count":
            codes = frozenset(_code(v) for v in value.split(",") if v.strip())
            if codes:
                query.codes.append((name, codes))
    _check_codes(query)
    return query


class PageTokens:
    """``{after}.{upto}.{mac}``: an HMAC binds both numbers to the client and the search's parameters."""

    ERROR: Final = "the page token is not valid for this search"

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"concord/audit-paging/v1", hashlib.sha256).digest()

    def issue(self, client_id: str, used: Sequence[tuple[str, str]], after: int, upto: int) -> str:
        return f"{after}.{upto}.{self._mac(client_id, used, after, upto)}"

    def read(self, token: str, client_id: str, used: Sequence[tuple[str, str]]) -> tuple[int, int]:
        """(after, upto) of a token this client was given for this search; ``BadRequest`` otherwise."""
        after, _, rest = token.partition(".")
        upto, _, mac = rest.partition(".")
        if not all(n.isascii() and n.isdigit() and len(n) <= 18 for n in (after, upto)):
            raise BadRequest(self.ERROR)
        if not hmac.compare_digest(mac.encode(), self._mac(client_id, used, int(after), int(upto)).encode()):
            raise BadRequest(self.ERROR)
        return int(after), int(upto)

    def _mac(self, client_id: str, used: Sequence[tuple[str, str]], after: int, upto: int) -> str:
        message = orjson.dumps([client_id, sorted(used), after, upto])
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()


#: The codes each of these parameters may take, and the refusal for any other.
_ALLOWED: Final = {
    "outcome": ({"0", "4"}, "outcome must be 0 (success, permit) or 4 (deny)"),
    "action": ({"C", "R", "U", "D", "E"}, "action must be C, R, U, D or E"),
    "type": ({"110106", "rest"}, "type must be 110106 (disclosure) or rest (consent change)"),
}


def _check_codes(query: AuditQuery) -> None:
    for name, codes in query.codes:
        allowed = _ALLOWED.get(name)
        if allowed is not None and codes - allowed[0]:
            raise BadRequest(allowed[1])


def _window(value: str) -> tuple[str | None, str | None]:
    """The [since, until] window (inclusive, in the log's time format) of one ``date`` parameter."""
    prefix, text = (value[:2], value[2:]) if value[:2] in _PREFIXES else ("eq", value)
    when = _when(text.replace(" ", "+"))  # a + in a query string arrives as a space
    tick = timedelta(microseconds=1)
    try:
        if isinstance(when, datetime):
            windows = {
                "ge": (when, None),
                "gt": (when + tick, None),
                "le": (None, when),
                "lt": (None, when - tick),
            }
            if prefix not in windows:
                raise BadRequest("date: eq takes a day (YYYY-MM-DD); give a time window with ge and le")
            start, end = windows[prefix]
        else:
            first, last = datetime.combine(when, time.min, UTC), datetime.combine(when, time.max, UTC)
            start, end = {
                "eq": (first, last),
                "ge": (first, None),
                "gt": (last + tick, None),
                "le": (None, last),
                "lt": (None, first - tick),
            }[prefix]
    except OverflowError:
        raise BadRequest("date is out of range") from None
    return (timestamp(start) if start else None), (timestamp(end) if end else None)


def _when(text: str) -> date | datetime:
    """A day, or an instant (UTC when it has no offset); ``BadRequest`` for anything else."""
    try:
        return parse_when(text)
    except ValueError:
        raise BadRequest("date must be YYYY-MM-DD or a date-time (YYYY-MM-DDThh:mm:ss+00:00)") from None


def _ods(value: str) -> str:
    system, bar, code = value.rpartition("|")
    if bar and system not in ("", ODS_SYSTEM):
        raise BadRequest(f"agent: only ODS codes ({ODS_SYSTEM}) are searchable", code="not-supported")
    code = code.strip().upper()
    if not _ODS.fullmatch(code):
        raise BadRequest("agent must be an ODS code")
    return code


def _code(value: str) -> str:
    """The code of a token parameter value (``system|code`` or ``code``; the system is not checked)."""
    return value.rpartition("|")[2].strip()


def _outcome(code: str) -> ColumnElement[bool]:
    c = audit_log.c
    if code == "4":
        return c.decision == "deny"
    return or_(c.decision.is_(None), c.decision != "deny")


def _subtype(code: str) -> ColumnElement[bool]:
    """The entries whose AuditEvent carries subtype ``code`` (as ``consent.auditevent`` builds them)."""
    c = audit_log.c
    if code == "disclose":
        return c.kind == Kind.DISCLOSURE
    restful = [a for a, (_, interaction) in ACTIONS.items() if interaction == code]
    if restful:
        return c.action.in_([*restful, code])
    return c.action == code


def _action(code: str) -> ColumnElement[bool]:
    """The entries whose AuditEvent.action is ``code`` (known actions by table, others by kind)."""
    c = audit_log.c
    known = [a for a, (letter, _) in ACTIONS.items() if letter == code]
    parts: list[ColumnElement[bool]] = [c.action.in_(known)] if known else []
    if code == "R":
        parts.append(and_(c.action.notin_(list(ACTIONS)), c.kind == Kind.DISCLOSURE))
    if code == "E":
        parts.append(and_(c.action.notin_(list(ACTIONS)), c.kind != Kind.DISCLOSURE))
    return or_(*parts) if parts else false()


def _type(code: str) -> ColumnElement[bool]:
    c = audit_log.c
    return c.kind == Kind.DISCLOSURE if code == "110106" else c.kind != Kind.DISCLOSURE


_MATCHES: Final[dict[str, Callable[[str], ColumnElement[bool]]]] = {
    "outcome": _outcome,
    "subtype": _subtype,
    "action": _action,
    "type": _type,
}
