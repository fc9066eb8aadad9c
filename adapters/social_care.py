"""Council social care export: one JSON document of Care Act care and support plans, read streaming.

The document is ``{"export": {...}, "cases": [case, case, ...]}``: the export
header (which council, which system, when) comes first, then one case per
person the council supports (the person's details and their care and support
plans: needs, outcomes, services). It is parsed incrementally with ijson, so
memory holds one case at a time whatever the file size. Location is
``case N`` (position in ``cases``, from 1). See docs/sources/social-care.md.

    AdapterError   the document cannot be read as a whole: not JSON, top level
                   not an object, no ``export`` before ``cases``, no
                   ``export.council_ods``, no ``cases`` array; or it breaks
                   off (a JSON syntax error) part way: the case where it
                   breaks is yielded as a RecordError first, then the run stops
                   because no later case can be found
    RecordError    one case cannot be read; the run goes on with the next:
                   json-not-an-object, local-id-missing (no person_id),
                   field-missing (no person, no care_and_support_plans),
                   field-wrong-type (``field`` names it); and
                   json-truncated / json-unreadable for the case where the
                   document breaks off, or for a replayed case

A case's ``raw`` is a one-case document, ``{"export": header, "cases": [case]}``,
re-serialised from the parsed values (ijson does not give the bytes back), so
replay needs nothing but ``raw``. Besides the case's own fields the record
carries ``care_plans`` (the case's ``care_and_support_plans``) and
``source_ods`` (the header's ``council_ods``). ODS codes (the council's, the GP practice's, each
service provider's) are read in upper case, as ODS writes them. Its ``local_id`` is
``person_id@council_ods``, and its plans' ids are keyed on the council too
(mappings/specs/social-care.CarePlan.json): two councils that happen to use the same person or
plan id for one person keep a record each, and one council is one council whatever its case.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import IO, Any, Final

import ijson  # type: ignore[import-untyped]
import orjson

from adapters.json_shape import repeated_name, shape_problem, shown_name
from adapters.records import AdapterError, Item, RecordError, SourceRecord, ods_code

SOURCE: Final = "social-care"
_BOM: Final = b"\xef\xbb\xbf"
_OPEN: Final = frozenset({"start_map", "start_array"})
_CLOSE: Final = frozenset({"end_map", "end_array"})

_PERSON_SHAPE: Final[Mapping[str, Any]] = {
    "nhs_number": "str",
    "nhs_number_status": "str",
    "title": "str",
    "forenames": "str",
    "surname": "str",
    "date_of_birth": "str",
    "gender": "str",
    "address": {"line_1": "str", "line_2": "str", "town": "str", "postcode": "str"},
    "phone": "str",
    "gp_practice_ods": "str",
}
_PLAN_SHAPE: Final[Mapping[str, Any]] = {
    "plan_id": "id",
    "plan_type": "str",
    "title": "str",
    "status": "str",
    "start_date": "str",
    "end_date": "str",
    "review_date": "str",
    "agreed_date": "str",
    "allocated_worker": {"name": "str", "team": "str"},
    "what_matters_to_me": "str",
    "needs": [{"need_id": "id", "code": "str", "description": "str"}],
    "outcomes": [
        {
            "outcome_id": "id",
            "description": "str",
            "status": "str",
            "achievement": "str",
            "target_date": "str",
        }
    ],
    "services": [
        {
            "service_id": "id",
            "service_type": "str",
            "description": "str",
            "status": "str",
            "start_date": "str",
            "end_date": "str",
            "units_per_week": "number",
            "unit": "str",
            "provider": {"name": "str", "ods_code": "str"},
        }
    ],
}
_CASE_SHAPE: Final[Mapping[str, Any]] = {
    "person_id": "id",
    "person": _PERSON_SHAPE,
    "care_and_support_plans": [_PLAN_SHAPE],
}


class SocialCareAdapter:
    """Reads the council's case management export as a stream of cases."""

    source = SOURCE

    def read(self, stream: IO[str] | IO[bytes]) -> Iterator[Item]:
        """Yield one item per case, lazily. Text or binary stream (UTF-8, a leading BOM is ignored)."""
        events = ijson.parse(_Utf8Source(stream), use_float=True)
        yield from _document(events)

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        """Parse one quarantined case again from its one-case document ``raw``."""
        try:
            doc = orjson.loads(raw.removeprefix("\ufeff"))
        except orjson.JSONDecodeError:
            yield RecordError(
                SOURCE, location, "json-unreadable", None, "the replayed case is not valid JSON", raw
            )
            return
        repeated = repeated_name(raw.removeprefix("\ufeff"))
        if repeated is not None:
            detail = f"an object names {repeated} twice"
            yield RecordError(SOURCE, location, "json-duplicate-name", None, detail, raw)
            return
        cases = doc.get("cases") if isinstance(doc, dict) else None
        header = doc.get("export") if isinstance(doc, dict) else None
        if not isinstance(header, dict) or not isinstance(cases, list) or len(cases) != 1:
            detail = "a replayed case must be {export: {...}, cases: [one case]}"
            yield RecordError(SOURCE, location, "json-not-an-object", None, detail, raw)
            return
        council_ods = header.get("council_ods")
        if not isinstance(council_ods, str) or not council_ods.strip():
            yield RecordError(
                SOURCE, location, "field-missing", "export.council_ods", "no council ODS code", raw
            )
            return
        yield _case(cases[0], ods_code(council_ods), location, raw)


class _Utf8Source:
    """Bytes for ijson from a text or binary stream, without a leading BOM."""

    __slots__ = ("_started", "_stream")

    def __init__(self, stream: IO[str] | IO[bytes]) -> None:
        self._stream = stream
        self._started = False

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        data = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        if not self._started and data:
            self._started = True
            data = data.removeprefix(_BOM)
        return data


class _Broken(Exception):
    """The JSON text stops being valid here. Never carries the parser's message: it quotes the data."""

    def __init__(self, truncated: bool) -> None:
        super().__init__("truncated" if truncated else "syntax error")
        self.truncated = truncated


def _next(events: Iterator[tuple[str, str, Any]]) -> tuple[str, str, Any]:
    try:
        return next(events)
    except StopIteration:
        raise _Broken(truncated=True) from None
    except ijson.IncompleteJSONError as exc:
        raise _Broken(truncated="premature EOF" in str(exc)) from exc
    except ijson.JSONError as exc:
        raise _Broken(truncated=False) from exc


def _document(events: Iterator[tuple[str, str, Any]]) -> Iterator[Item]:
    council_ods: str | None = None
    header: dict[str, Any] | None = None
    saw_cases = False
    try:
        _, event, _ = _next(events)
        if event != "start_map":
            raise AdapterError("social care export: the top level must be an object with export and cases")
        top: set[str] = set()
        while True:
            _, event, key = _next(events)
            if event == "end_map":
                break
            if key in top:
                raise AdapterError(f"social care export: the top level names {shown_name(key)} twice")
            top.add(key)
            if key == "export":
                header, council_ods = _header(events)
            elif key == "cases":
                if header is None or council_ods is None:
                    raise AdapterError("social care export: the export header must come before cases")
                saw_cases = True
                yield from _cases(events, header, council_ods)
            else:
                _skip(events)
    except _Broken as exc:
        raise AdapterError("social care export is not valid JSON") from exc
    if not saw_cases:
        raise AdapterError("social care export has no cases array")
    _expect_end(events)


def _header(events: Iterator[tuple[str, str, Any]]) -> tuple[dict[str, Any], str]:
    _, event, value = _next(events)
    try:
        header = _build(events, event, value)
    except _Repeated as repeated:
        raise AdapterError(f"social care export: export names {shown_name(repeated.name)} twice") from None
    if not isinstance(header, dict):
        raise AdapterError("social care export: export must be an object")
    council_ods = header.get("council_ods")
    if not isinstance(council_ods, str) or not council_ods.strip():
        raise AdapterError("social care export: export.council_ods is required")
    return header, ods_code(council_ods)


def _cases(
    events: Iterator[tuple[str, str, Any]], header: dict[str, Any], council_ods: str
) -> Iterator[Item]:
    _, event, _ = _next(events)
    if event != "start_array":
        raise AdapterError("social care export: cases must be an array")
    number = 0
    while True:
        number += 1
        location = f"case {number}"
        try:
            _, event, value = _next(events)
            if event == "end_array":
                return
            case = _build(events, event, value)
        except _Repeated as repeated:
            raw = '{"export":' + orjson.dumps(header).decode() + ',"cases":[' + repeated.text + "]}"
            detail = f"an object names {shown_name(repeated.name)} twice"
            yield RecordError(SOURCE, location, "json-duplicate-name", None, detail, raw)
            continue
        except _Broken as exc:
            reason = "json-truncated" if exc.truncated else "json-unreadable"
            detail = "the document breaks off in this case; no later case can be read"
            yield RecordError(SOURCE, location, reason, None, detail)
            raise AdapterError(f"social care export is not valid JSON from {location} on") from exc
        raw = orjson.dumps({"export": header, "cases": [case]}).decode()
        yield _case(case, council_ods, location, raw)


def _build(events: Iterator[tuple[str, str, Any]], event: str, value: Any) -> Any:
    """The whole JSON value that starts with (event, value), built from the events that follow.

    Raises ``_Repeated`` (after reading the value to its end) if one of its objects holds a name
    twice, with the value's text as sent (both members kept) for the quarantine.
    """
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    read = [(event, value)]
    names: list[set[str] | None] = [] if event not in _OPEN else [set() if event == "start_map" else None]
    repeated: str | None = None
    while names:
        _, event, value = _next(events)
        builder.event(event, value)
        read.append((event, value))
        if event == "map_key":
            seen = names[-1]
            if seen is not None:
                if value in seen and repeated is None:
                    repeated = value
                seen.add(value)
        elif event in _OPEN:
            names.append(set() if event == "start_map" else None)
        elif event in _CLOSE:
            names.pop()
    if repeated is not None:
        raise _Repeated(_json_text(read), repeated)
    return builder.value


class _Repeated(Exception):
    """A value one of whose objects names a member twice (JSON parsers disagree on which one counts)."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(name)
        self.text, self.name = text, name


def _json_text(events: list[tuple[str, Any]]) -> str:
    """JSON text of a value from its parse events, every member kept (repeated names included)."""
    parts: list[str] = []
    open_: list[list[Any]] = []  # per open container: [its start event, members written so far]
    for event, value in events:
        if event in _CLOSE:
            open_.pop()
            parts.append("}" if event == "end_map" else "]")
            continue
        if event == "map_key":
            parts.append(("," if open_[-1][1] else "") + orjson.dumps(value).decode() + ":")
            open_[-1][1] += 1
            continue
        if open_ and open_[-1][0] == "start_array":
            parts.append("," if open_[-1][1] else "")
            open_[-1][1] += 1
        if event in _OPEN:
            open_.append([event, 0])
            parts.append("{" if event == "start_map" else "[")
        else:
            parts.append(orjson.dumps(value).decode())
    return "".join(parts)


def _skip(events: Iterator[tuple[str, str, Any]]) -> None:
    """Pass over a value the format does not define, without building it."""
    _, event, _ = _next(events)
    depth = 1 if event in _OPEN else 0
    while depth:
        _, event, _ = _next(events)
        depth += (event in _OPEN) - (event in _CLOSE)


def _expect_end(events: Iterator[tuple[str, str, Any]]) -> None:
    try:
        next(events)
    except StopIteration:
        return
    except ijson.JSONError as exc:
        raise AdapterError("social care export has content after the document") from exc
    raise AdapterError("social care export has content after the document")


def _case(case: Any, council_ods: str, location: str, raw: str) -> Item:
    if not isinstance(case, dict):
        return RecordError(SOURCE, location, "json-not-an-object", None, "the case is not a JSON object", raw)
    problem = shape_problem(case, _CASE_SHAPE, "")
    if problem is not None:
        where, expected = problem
        return RecordError(SOURCE, location, "field-wrong-type", where, f"{where} must be {expected}", raw)
    local_id = case.get("person_id")
    if local_id is None or str(local_id).strip() == "":
        return RecordError(SOURCE, location, "local-id-missing", "person_id", "no social care person id", raw)
    for required in ("person", "care_and_support_plans"):
        if required not in case or case[required] is None:
            return RecordError(SOURCE, location, "field-missing", required, f"{required} is required", raw)
    case = _ods_upper(case)
    fields = {**case, "care_plans": case["care_and_support_plans"], "source_ods": council_ods}
    return SourceRecord(SOURCE, location, qualified(local_id, council_ods), fields, raw)


def _ods_upper(case: dict[str, Any]) -> dict[str, Any]:
    """The case with its ODS codes as ODS writes them (the GP practice, each service's provider)."""
    person = case["person"]
    if isinstance(person, dict) and "gp_practice_ods" in person:
        person = {**person, "gp_practice_ods": ods_code(person["gp_practice_ods"])}
    plans = [
        {**plan, "services": [_provider_upper(s) for s in plan["services"]]}
        if isinstance(plan, dict) and isinstance(plan.get("services"), list)
        else plan
        for plan in case["care_and_support_plans"]
    ]
    return {**case, "person": person, "care_and_support_plans": plans}


def _provider_upper(service: Any) -> Any:
    provider = service.get("provider") if isinstance(service, dict) else None
    if not isinstance(provider, dict) or "ods_code" not in provider:
        return service
    return {**service, "provider": {**provider, "ods_code": ods_code(provider["ods_code"])}}


def qualified(person_id: object, council_ods: str) -> str:
    """A case's local id: the person id qualified by the council's ODS code, so that councils pushing
    to one gateway cannot replace each other's records (as the FHIR adapter qualifies its senders')."""
    return f"{str(person_id).strip()}@{ods_code(council_ods)}"
