"""FHIR responses as bytes: stored JSON joined into Bundles, never re-serialised through models.

- ``fhir``: an ``application/fhir+json`` response of ready bytes.
- ``check_format``: JSON only (``_format`` and ``Accept``), FHIR R4 only (the media type's
  ``fhirVersion`` parameter, if given, is 4.0); anything else is 406. ``this_version`` is the
  same test of a media type's parameters (a pushed body's ``Content-Type``: 415).
- ``resource_response``: one resource with ``ETag: W/"{versionId}"`` and ``Last-Modified``;
  ``If-None-Match`` naming the current version gives 304 with no body.
- ``searchset`` and ``history``: Bundles joined from stored bytes, with paging links.
  ``total`` is what this caller may see, never more: for a withheld person it is 0,
  exactly as for a person concord does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

import orjson
from fastapi import Request
from fastapi.responses import Response

from gateway.api.outcome import FHIR_JSON, ApiError, ignored_parameters

#: ``_format`` values meaning JSON (a ``+`` in a query string arrives as a space).
JSON_FORMATS = frozenset(
    {"json", "application/json", "application/fhir+json", "application/fhir json", "application/json+fhir"}
)

#: ``fhirVersion`` values meaning this server's version (R4 http.html, "Version parameter").
FHIR_VERSIONS = frozenset({"4.0", "4.0.1"})

Link = tuple[str, str]
#: One Bundle entry to be: (resource type, id, stored JSON, search mode).
Match = tuple[str, str, bytes, str]


class NotAcceptable(ApiError):
    status = 406
    code = "not-supported"


def fhir(content: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content, status, headers, media_type=FHIR_JSON)


def check_format(request: Request) -> None:
    """Refuse (406) a request for anything but JSON; ``_format`` overrides ``Accept``."""
    check_format_of(request.query_params.get("_format"), request.headers.get("accept", ""))


def check_format_of(fmt: str | None, accept: str) -> None:
    """``check_format`` on the request's first ``_format`` value (None: absent) and its ``Accept``."""
    if fmt is not None:
        media, _, params = fmt.partition(";")
        if media.strip().lower() not in JSON_FORMATS or not this_version(params):
            raise NotAcceptable("only FHIR R4 JSON is served: _format=json")
        return
    if accept.strip() and not _accepts_json(accept):
        raise NotAcceptable("only FHIR R4 JSON is served: Accept application/fhir+json")


def _accepts_json(accept: str) -> bool:
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if (media in ("*/*", "application/*") or "json" in media) and this_version(params):
            return True
    return False


def this_version(params: str) -> bool:
    """Whether a media type's parameters (``a=1; b=2``) leave out ``fhirVersion`` or name R4's."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "fhirversion" and value.strip().strip('"') not in FHIR_VERSIONS:
            return False
    return True


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'


def http_date(when: datetime) -> str:
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return format_datetime(aware.astimezone(UTC), usegmt=True)


def etag_version(tag: str) -> str:
    """The version an ETag names (``W/"3"`` and ``"3"`` both name ``3``: weak comparison)."""
    return tag.strip().removeprefix("W/").strip('"')


def not_modified(if_none_match: str | None, version_id: int) -> bool:
    """Whether ``If-None-Match`` names ``version_id`` (weak comparison) or is ``*``."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or etag_version(tag) == str(version_id):
            return True
    return False


def resource_response(
    if_none_match: str | None, content: bytes, version_id: int, last_updated: datetime
) -> Response:
    headers = {"ETag": etag(version_id), "Last-Modified": http_date(last_updated)}
    if not_modified(if_none_match, version_id):
        return Response(status_code=304, headers=headers)
    return fhir(content, headers=headers)


def searchset(
    base: str, matches: Iterable[Match], total: int, links: Sequence[Link], outcome: bytes | None = None
) -> bytes:
    """A searchset Bundle: ``matches`` (with their search mode), then the outcome entry if any."""
    parts = [
        _entry(base, rtype, rid, content, b'"search":{"mode":' + orjson.dumps(mode) + b"}")
        for rtype, rid, content, mode in matches
    ]
    if outcome is not None:
        parts.append(b'{"resource":' + outcome + b',"search":{"mode":"outcome"}}')
    head = b'{"resourceType":"Bundle","type":"searchset","total":' + str(total).encode()
    return _bundle(head, links, parts)


def history(
    base: str,
    rtype: str,
    rid: str,
    versions: Iterable[tuple[int, datetime, bytes]],
    total: int,
    links: Sequence[Link],
) -> bytes:
    """A history Bundle of one resource, newest first; each entry says how that version came to be."""
    parts = []
    for version_id, when, content in versions:
        first = version_id == 1
        request = {"method": "POST" if first else "PUT", "url": rtype if first else f"{rtype}/{rid}"}
        response = {
            "status": "201 Created" if first else "200 OK",
            "etag": etag(version_id),
            "lastModified": _instant(when),
        }
        extra = b'"request":' + orjson.dumps(request) + b',"response":' + orjson.dumps(response)
        parts.append(_entry(base, rtype, rid, content, extra))
    head = b'{"resourceType":"Bundle","type":"history","total":' + str(total).encode()
    return _bundle(head, links, parts)


def ignored_outcome(names: Sequence[str]) -> bytes | None:
    """The OperationOutcome reporting parameters ignored under lenient handling (None if none were)."""
    if not names:
        return None
    return orjson.dumps(ignored_parameters(list(names)))


def _entry(base: str, rtype: str, rid: str, content: bytes, extra: bytes) -> bytes:
    return (
        b'{"fullUrl":'
        + orjson.dumps(f"{base}{rtype}/{rid}")
        + b',"resource":'
        + content
        + b","
        + extra
        + b"}"
    )


def _bundle(head: bytes, links: Sequence[Link], parts: list[bytes]) -> bytes:
    # FHIR JSON has no empty arrays: ``link`` and ``entry`` are left out when empty.
    if links:
        head += b',"link":' + orjson.dumps([{"relation": rel, "url": url} for rel, url in links])
    if parts:
        head += b',"entry":[' + b",".join(parts) + b"]"
    return head + b"}"


def _instant(when: datetime) -> str:
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
