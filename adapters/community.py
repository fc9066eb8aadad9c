"""Community health EPR export: JSON Lines, one integrated care and support plan per line.

Each line is one JSON object: one person, with demographics as the community
provider holds them, and one ``plan`` (status, period, care team, goals,
activities). Location is ``line N`` (physical line, from 1); blank lines are
skipped. See docs/sources/community.md for every field.

Reasons a line becomes a RecordError (the run goes on with the next line)::

    not-utf8             the line's bytes are not UTF-8
    json-truncated       the JSON ends before the object does (a cut-off line)
    json-unreadable      any other JSON syntax error
    json-not-an-object   valid JSON, but not an object
    local-id-missing     no patient_id
    field-missing        no provider_ods or no plan
    field-wrong-type     a field has the wrong JSON type (``field`` names it)

Besides the line's own fields the record carries two the pipeline expects of
every source: ``care_plans`` (``[plan]``) and ``source_ods`` (``provider_ods``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Final

import orjson

from adapters.json_shape import repeated_name, shape_problem
from adapters.records import AdapterError, Item, RecordError, SourceRecord, ods_code, utf16_bom

SOURCE: Final = "community"
_BOM: Final = "\ufeff"

#: The JSON type of each known field; nested dicts describe objects, a one-item list a list of objects.
_PLAN_SHAPE: Final[Mapping[str, Any]] = {
    "plan_id": "id",
    "plan_type": "str",
    "title": "str",
    "status": "str",
    "start_date": "str",
    "end_date": "str",
    "review_date": "str",
    "recorded_at": "str",
    "what_matters_to_me": "str",
    "care_team": [{"role": "str", "name": "str", "job_title": "str", "organisation_ods": "str"}],
    "goals": [
        {"goal_id": "id", "description": "str", "status": "str", "achievement": "str", "target_date": "str"}
    ],
    "activities": [
        {
            "activity_id": "id",
            "code": "str",
            "description": "str",
            "status": "str",
            "start_date": "str",
            "end_date": "str",
            "team": "str",
        }
    ],
}
_LINE_SHAPE: Final[Mapping[str, Any]] = {
    "provider_ods": "str",
    "patient_id": "id",
    "nhs_number": "str",
    "nhs_number_status": "str",
    "title": "str",
    "family_name": "str",
    "given_names": "str",
    "date_of_birth": "str",
    "sex": "str",
    "address": {"line_1": "str", "line_2": "str", "town": "str", "postcode": "str"},
    "phone": "str",
    "registered_gp_ods": "str",
    "plan": _PLAN_SHAPE,
}


class CommunityAdapter:
    """Reads the community EPR's JSON Lines export, one line at a time."""

    source = SOURCE

    def read(self, stream: IO[str] | IO[bytes] | Iterable[str | bytes]) -> Iterator[Item]:
        """Yield one item per non-blank line, lazily. Text or binary stream; a leading BOM is ignored."""
        lines = iter(stream)
        number = 0
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise AdapterError("community extract is not UTF-8 text") from exc
            number += 1
            item = _line(line, number)
            if item is not None:
                yield item

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        """Parse one quarantined line again (its ``raw`` text, possibly corrected)."""
        yield _record(raw.removeprefix(_BOM).strip(), location)


def _line(line: str | bytes, number: int) -> Item | None:
    location = f"line {number}"
    if number == 1 and isinstance(line, bytes) and utf16_bom(line):
        raise AdapterError("community extract is UTF-16 text: send it as UTF-8")
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raw = line.decode("utf-8", "replace").rstrip("\r\n")
            return RecordError(SOURCE, location, "not-utf8", None, "the line is not UTF-8 text", raw)
    else:
        text = line
    if number == 1:
        text = text.removeprefix(_BOM)
    text = text.rstrip("\r\n")
    if not text.strip():
        return None
    return _record(text, location)


def _record(text: str, location: str) -> Item:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson reports a cut-off document as "unexpected end of data" at its very end.
        if exc.pos >= len(text.rstrip()):
            return RecordError(
                SOURCE, location, "json-truncated", None, "the line ends inside its JSON object", text
            )
        return RecordError(
            SOURCE, location, "json-unreadable", None, f"not valid JSON at character {exc.pos}", text
        )
    if not isinstance(obj, dict):
        return RecordError(
            SOURCE, location, "json-not-an-object", None, "the line is JSON but not an object", text
        )
    repeated = repeated_name(text)
    if repeated is not None:
        detail = f"an object names {repeated} twice"
        return RecordError(SOURCE, location, "json-duplicate-name", None, detail, text)
    problem = shape_problem(obj, _LINE_SHAPE, "")
    if problem is not None:
        where, expected = problem
        return RecordError(SOURCE, location, "field-wrong-type", where, f"{where} must be {expected}", text)
    local_id = obj.get("patient_id")
    if local_id is None or str(local_id).strip() == "":
        return RecordError(
            SOURCE, location, "local-id-missing", "patient_id", "no community patient id", text
        )
    for required in ("provider_ods", "plan"):
        if not obj.get(required):
            return RecordError(SOURCE, location, "field-missing", required, f"{required} is required", text)
    obj = _ods_upper(obj)
    fields = {**obj, "care_plans": [obj["plan"]], "source_ods": obj["provider_ods"]}
    return SourceRecord(SOURCE, location, str(local_id).strip(), fields, text)


def _ods_upper(obj: dict[str, Any]) -> dict[str, Any]:
    """The line with its ODS codes as ODS writes them: the provider's keys its plans' identifiers."""
    out = {**obj, "provider_ods": ods_code(obj["provider_ods"])}
    if "registered_gp_ods" in out:
        out["registered_gp_ods"] = ods_code(out["registered_gp_ods"])
    plan = out["plan"]
    team = plan.get("care_team") if isinstance(plan, dict) else None
    if isinstance(team, list):
        members = [
            {**m, "organisation_ods": ods_code(m["organisation_ods"])}
            if isinstance(m, dict) and "organisation_ods" in m
            else m
            for m in team
        ]
        out["plan"] = {**plan, "care_team": members}
    return out
