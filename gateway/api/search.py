"""Search parameters, pure: parse and validate a query, cap ``_count``, sign and check paging tokens.

A search names exactly one person (by NHS number, or by the shared Patient's
id): every search then costs one disclosure decision, and its log entry names
that person. Parsing never touches the store, so a request rejected here has
read nothing and logged nothing.

Repeated parameters combine with AND, a comma within one value with OR (FHIR search): a CarePlan
matches ``status=active&status=on-hold`` only if its status is both, so none does.

Unknown parameters follow ``Prefer: handling``: ``strict`` rejects them (400
naming the parameter); ``lenient`` (the default) ignores them and the Bundle
reports them. Parameters that would change *which* resources match and that
concord does not implement (``_has``, ``_revinclude``, chains other than to the
Patient's identifier) are rejected under either handling.

A paging token is ``{offset}.{mac}``: an HMAC over the client, the search path,
the parameters that shaped the result and the offset. It is bound to the client
that received it and cannot be edited; a wrong token of any kind gets one error.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote_plus

import orjson

from gateway.api.outcome import BadRequest
from gateway.redact import parameter_name
from mappings import nhs_number as nhs

Pairs = Sequence[tuple[str, str]]

#: Result parameters every search takes; ``_format`` is checked by fhir_responses.
COUNT: Final = "_count"
PAGE: Final = "_page"
FORMAT: Final = "_format"

IDENTIFIER: Final = "identifier"
REFERENCE: Final = "reference"
STATUS: Final = "status"
INCLUDE: Final = "include"
#: The code system CarePlan.status is bound to (the implicit system of its codes).
REQUEST_STATUS: Final = "http://hl7.org/fhir/request-status"

#: What each search accepts: parameter (with modifier or chain) → what it means.
PATIENT_SEARCH: Final[Mapping[str, str]] = {IDENTIFIER: IDENTIFIER}
CAREPLAN_SEARCH: Final[Mapping[str, str]] = {
    "subject": REFERENCE,
    "patient": REFERENCE,
    "subject:Patient": REFERENCE,
    "subject:identifier": IDENTIFIER,
    "patient:identifier": IDENTIFIER,
    "subject.identifier": IDENTIFIER,
    "patient.identifier": IDENTIFIER,
    "subject:Patient.identifier": IDENTIFIER,
    "status": STATUS,
    "_include": INCLUDE,
}
#: Instance-level operations that page ($everything, _history) take only the result parameters.
PAGE_ONLY: Final[Mapping[str, str]] = {}
#: The one _include implemented: a CarePlan's subject.
CAREPLAN_INCLUDES: Final = frozenset({"CarePlan:subject", "CarePlan:patient", "CarePlan:subject:Patient"})

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True, slots=True)
class Limits:
    default: int
    maximum: int


@dataclass(frozen=True, slots=True)
class Person:
    """The one person a search is about: by NHS number or by the shared Patient's id (exactly one set)."""

    nhs_number: str | None = None
    patient_id: str | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed search. ``used`` are the parameters that shaped the result, in request order (``_count``
    as applied, so links and paging tokens carry the page size actually used). ``statuses``: None for
    any status, else the statuses every ``status`` parameter accepts (empty: no CarePlan can match)."""

    person: Person | None
    statuses: frozenset[str] | None
    include_subject: bool
    count: int
    page: str | None
    used: tuple[tuple[str, str], ...]
    ignored: tuple[str, ...]


def preferences(prefer: str | None, name: str) -> list[str]:
    """The values (lower case, unquoted) of each ``name=value`` in a ``Prefer`` header, in order
    (RFC 7240; FHIR R4 http.html's ``handling`` and ``return``)."""
    found = []
    for part in (prefer or "").replace(";", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            found.append(value.strip().strip('"').lower())
    return found


def strict_handling(prefer: str | None) -> bool:
    """Whether ``Prefer`` asks for ``handling=strict`` (anything else, or nothing, is lenient)."""
    return "strict" in preferences(prefer, "handling")


def parse(accepted: Mapping[str, str], pairs: Pairs, strict: bool, limits: Limits, base: str = "") -> Query:
    """Validate ``pairs`` against ``accepted``; ``BadRequest`` for anything that cannot be honoured."""
    person: Person | None = None
    statuses: frozenset[str] | None = None
    include = False
    count = limits.default
    page: str | None = None
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    for name, value in pairs:
        if name == FORMAT:
            continue
        if name == PAGE:
            page = value or None
            continue
        _reject_unsupported(name, accepted)
        role = COUNT if name == COUNT else accepted.get(name)
        if role is None:
            if strict:
                raise BadRequest(f"unknown search parameter: {parameter_name(name)}", code="not-supported")
            ignored.append(parameter_name(name))
            continue
        if not value:
            continue  # an empty parameter is ignored (FHIR search)
        if role == INCLUDE and value not in CAREPLAN_INCLUDES:
            if strict:
                raise BadRequest("_include supports only CarePlan:subject", code="not-supported")
            ignored.append(name)
            continue
        if role == COUNT:
            count = parse_count(value, limits)
            value = str(count)  # as applied (capped)
        elif role == STATUS:
            codes = status_codes(value)
            if codes is not None:  # repeated: AND, so only the statuses both accept
                statuses = codes if statuses is None else statuses & codes
        elif role == INCLUDE:
            include = True
        else:
            if person is not None:
                raise BadRequest("a search names one person: give one patient, subject or identifier")
            person = parse_identifier(value) if role == IDENTIFIER else parse_reference(value, base)
        used.append((name, value))
    return Query(person, statuses, include, count, page, tuple(used), tuple(ignored))


def parse_count(value: str, limits: Limits) -> int:
    """``_count`` as an int in [0, maximum]: above the maximum it is capped, not refused."""
    if not value.isascii() or not value.isdigit():
        raise BadRequest("_count must be a whole number, 0 or more")
    return min(int(value), limits.maximum)


def status_codes(value: str) -> frozenset[str] | None:
    """The CarePlan statuses one ``status`` parameter accepts (a comma means OR); None for any.

    Token rules (FHIR R4 search): ``code`` is the code in any system, ``{system}|code`` the code in
    that system, ``|code`` the code with no system, ``{system}|`` any code of the system. A status
    is a code of ``REQUEST_STATUS`` (its implicit system), so a value naming another system, or
    none, accepts nothing.
    """
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        return None  # nothing asked for, as an empty parameter
    codes: set[str] = set()
    for item in items:
        system, bar, code = item.rpartition("|")
        if bar and system != REQUEST_STATUS:
            continue
        if code.strip():
            codes.add(code.strip())
        elif bar:
            return None  # {REQUEST_STATUS}|: every status
    return frozenset(codes)


def parse_identifier(value: str) -> Person:
    """``system|value`` or a bare value; only NHS numbers, one per search. Never echoes the value."""
    system, bar, code = value.partition("|")
    if not bar:
        system, code = nhs.SYSTEM, value
    if system != nhs.SYSTEM:
        raise BadRequest(f"only NHS number identifiers ({nhs.SYSTEM}) are searchable", code="not-supported")
    if "," in code:
        raise BadRequest("a search names one person: one NHS number", code="not-supported")
    try:
        return Person(nhs_number=nhs.normalise(code))
    except nhs.NhsNumberError:
        raise BadRequest("the identifier is not a valid NHS number") from None


def parse_reference(value: str, base: str = "") -> Person:
    """``Patient/{id}``, a bare id, or this server's absolute URL of a Patient."""
    ref = value.removeprefix(base.rstrip("/") + "/") if base else value
    rtype, slash, rid = ref.rpartition("/")
    if "://" in rtype:
        raise BadRequest("only this server's Patient references are searchable", code="not-supported")
    if slash and rtype != "Patient":
        raise BadRequest("only a Patient can be the subject of a search", code="not-supported")
    if "," in rid:
        raise BadRequest("a search names one person: one Patient", code="not-supported")
    if not _ID.fullmatch(rid):
        raise BadRequest("not a valid Patient reference")
    return Person(patient_id=rid)


def _reject_unsupported(name: str, accepted: Mapping[str, str]) -> None:
    """Parameters that would change what matches and are not implemented: refused under any handling."""
    bare = name.partition(":")[0]
    if bare in ("_has", "_revinclude") or name.startswith("_include:"):
        raise BadRequest(f"search parameter {bare} is not supported", code="not-supported")
    if "." in name and name not in accepted:
        raise BadRequest("chained search is supported only to the Patient's identifier", code="not-supported")


def query_string(pairs: Iterable[tuple[str, str]]) -> str:
    """``urlencode(pairs)``, a few times faster for the token values (``system|code``) searches carry:
    the system, the same in nearly every link, is quoted once and remembered."""
    return "&".join(f"{_quoted(name)}={_quote_value(value)}" for name, value in pairs)


@functools.lru_cache(maxsize=1024)
def _quoted(text: str) -> str:
    """Parameter names and token systems: few, repeated in every link."""
    return quote_plus(text)


def _quote_value(value: str) -> str:
    # Percent-encoding works character by character, so the parts before and after the last "|" may
    # be quoted apart; the code after it (an NHS number, a status) is short and not remembered.
    system, bar, code = value.rpartition("|")
    return _quoted(system) + "%7C" + quote_plus(code) if bar else quote_plus(value)


class PageTokens:
    """Paging tokens bound to (client, search path, parameters used, offset) by an HMAC."""

    ERROR: Final = "the paging token is not valid for this search"

    def __init__(self, key: bytes) -> None:
        self._key = hmac.new(key, b"concord/paging/v1", hashlib.sha256).digest()

    def issue(self, client_id: str, path: str, used: Pairs, offset: int) -> str:
        return f"{offset}.{self._mac(client_id, path, used, offset)}"

    def offset(self, token: str | None, client_id: str, path: str, used: Pairs) -> int:
        """The offset ``token`` stands for (0 without one); ``BadRequest`` if it is not this client's."""
        if token is None:
            return 0
        number, dot, mac = token.partition(".")
        if not dot or not number.isascii() or not number.isdigit() or len(number) > 9:
            raise BadRequest(self.ERROR)
        offset = int(number)
        # As bytes: ``compare_digest`` refuses a str with non-ASCII characters (TypeError, a 500).
        if not hmac.compare_digest(mac.encode(), self._mac(client_id, path, used, offset).encode()):
            raise BadRequest(self.ERROR)
        return offset

    def _mac(self, client_id: str, path: str, used: Pairs, offset: int) -> str:
        message = orjson.dumps([client_id, path, sorted(used), offset])
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()
