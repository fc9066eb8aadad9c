"""The mapping engine: runs a mapping spec over one source record.

A spec (``mappings/specs/<source>.<resource>.json``) is a list of rules; each
rule names a target FHIR element (a path such as ``name[0].family``), where its
value comes from (a source ``field``, a constant ``value`` or a ``template``)
and an optional ``transform`` (``date``, ``concept:<ConceptMap id>`` ...). A rule
with ``each`` maps every item of a list field to one new element (``activity[]``).
Empty values are never written, so no element is empty.

    MappingError     the record cannot be mapped (a required field is missing,
                     a date does not parse, a code has no map where FHIR requires one)

Pure: no I/O after the specs and maps are loaded, same input, same output.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo

from mappings import nhs_number
from mappings.terminology import ConceptMapTable

LONDON = ZoneInfo("Europe/London")
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d*)\])?")


@dataclass(frozen=True, slots=True)
class MappingIssue:
    """Something a record's mapping could not do cleanly. ``reason`` is a stable code."""

    reason: str
    field: str | None
    detail: str


class MappingError(Exception):
    def __init__(self, issue: MappingIssue) -> None:
        super().__init__(issue.detail)
        self.issue = issue


@dataclass(frozen=True, slots=True)
class Rule:
    element: str
    field: str | None = None
    value: Any = None
    template: str | None = None
    transform: tuple[str, ...] = ()
    required: bool = False
    each: tuple[Rule, ...] = ()
    on_unknown: str = "quarantine"
    note: str = ""
    #: Used when the field is empty (before transforms): a source's documented default.
    default: Any = None
    #: Fields of which at least one must be non-empty for the rule to apply (constants that
    #: only make sense beside data, e.g. ``name[0].use``).
    when: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Rule:
        transform = raw.get("transform", ())
        if isinstance(transform, str):
            transform = (transform,)
        sources = [k for k in ("field", "value", "template") if k in raw]
        if len(sources) != 1:
            raise ValueError(f"rule for {raw.get('element')!r} needs exactly one of field/value/template")
        return cls(
            element=raw["element"],
            field=raw.get("field"),
            value=raw.get("value"),
            template=raw.get("template"),
            transform=tuple(transform),
            required=bool(raw.get("required", False)),
            each=tuple(cls.parse(r) for r in raw.get("each", ())),
            on_unknown=raw.get("on_unknown", "quarantine"),
            note=raw.get("note", ""),
            default=raw.get("default"),
            when=(raw["when"],) if isinstance(raw.get("when"), str) else tuple(raw.get("when", ())),
        )


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """How one source's records become one kind of resource."""

    source: str
    resource_type: str
    title: str
    profile: str
    rules: tuple[Rule, ...]
    #: For resources made per item of a list field (care plans): that field's name.
    for_each: str | None = None
    #: Fields of the item (``^field``: of the record) that identify the resource at its source.
    local_id: tuple[str, ...] = ()
    description: str = ""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ResourceSpec:
        return cls(
            source=raw["source"],
            resource_type=raw["resourceType"],
            title=raw.get("title", ""),
            profile=raw["profile"],
            rules=tuple(Rule.parse(r) for r in raw["rules"]),
            for_each=raw.get("for_each"),
            local_id=tuple(raw.get("local_id", ())),
            description=raw.get("description", ""),
        )


@dataclass(slots=True)
class Mapped:
    """A mapped resource body (no id or meta yet) and the warnings met on the way."""

    body: dict[str, Any]
    warnings: list[MappingIssue] = field(default_factory=list)


_Step = Callable[["_Scope", dict[str, Any]], bool]


class _Scope:
    __slots__ = ("context", "index", "item", "root", "warnings")

    def __init__(
        self,
        item: Mapping[str, Any],
        root: Mapping[str, Any],
        index: int,
        warnings: list[MappingIssue],
        context: Mapping[str, Any],
    ) -> None:
        self.item, self.root, self.index, self.warnings, self.context = item, root, index, warnings, context

    def get(self, name: str) -> Any:
        if name.startswith("$"):
            return self.context.get(name[1:])
        if name.startswith("^"):
            return _dig(self.root, name[1:])
        return _dig(self.item, name)


def _dig(data: Any, dotted: str) -> Any:
    if "." not in dotted:
        return data.get(dotted) if isinstance(data, Mapping) else None
    for part in dotted.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def pruned(value: Any, drop: Callable[[Any], bool] = lambda _: False) -> Any:
    """Drop empty elements left behind (a list padded by writing index 1 before 0, a Reference whose
    reference was removed), and list items for which ``drop`` is true. Bottom up: an element's
    children are cleaned before it is judged."""
    if isinstance(value, dict):
        return {k: p for k, v in value.items() if not empty(p := pruned(v, drop))}
    if isinstance(value, list):
        return [p for v in value if not empty(p := pruned(v, drop)) and not drop(p)]
    return value


def _blank(value: Any) -> bool:
    return empty(value.strip() if isinstance(value, str) else value)


def _getter(name: str) -> Callable[[_Scope], Any]:
    """Where a field name reads from: ``$context``, ``^root`` or the current item (dotted paths allowed)."""
    if name.startswith("$"):
        key = name[1:]
        return lambda scope: scope.context.get(key)
    if name.startswith("^"):
        path = name[1:]
        return lambda scope: _dig(scope.root, path)
    if "." not in name:
        return lambda scope: scope.item.get(name)
    return lambda scope: _dig(scope.item, name)


#: HL7 table 0136 (yes/no indicator); anything else is no value.
_YES_NO: Final = {"Y": True, "N": False}


def empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


class Engine:
    """Applies specs with a fixed set of terminology tables."""

    def __init__(self, tables: Mapping[str, ConceptMapTable]) -> None:
        self.tables = tables
        self._transforms: dict[str, Callable[[Any, str, _Scope, Rule], Any]] = {
            "text": lambda v, a, s, r: _text(v),
            "upper": lambda v, a, s, r: (_text(v) or "").upper() or None,
            "date": lambda v, a, s, r: _date(v, r),
            "datetime": lambda v, a, s, r: _datetime(v, r),
            "split": lambda v, a, s, r: _split(v, a or ","),
            "int": lambda v, a, s, r: _int(v, r),
            "yes-no": lambda v, a, s, r: _YES_NO.get((_text(v) or "").upper()),
            "nhs-number": lambda v, a, s, r: _nhs(v, r),
            "ods-reference": lambda v, a, s, r: {"identifier": {"system": ODS_SYSTEM, "value": _text(v)}},
            "contained-reference": lambda v, a, s, r: v if isinstance(v, str) and v.startswith("#") else None,
            "code": self._code,
            "coding": self._coding,
            "concept": self._concept,
        }
        self._programs: dict[int, tuple[ResourceSpec, _Step]] = {}
        self._code_shapes: dict[str, CodeShapes] = {}

    def check(self, spec: ResourceSpec) -> None:
        """Fail fast on a spec naming a transform or terminology map that does not exist."""
        for rule in _walk(spec.rules):
            for t in rule.transform:
                name, _, arg = t.partition(":")
                if name not in self._transforms:
                    raise ValueError(f"{spec.source}.{spec.resource_type}: unknown transform {name!r}")
                if name in ("code", "coding", "concept") and arg not in self.tables:
                    raise ValueError(f"{spec.source}.{spec.resource_type}: no ConceptMap {arg!r}")

    def apply(
        self,
        spec: ResourceSpec,
        item: Mapping[str, Any],
        root: Mapping[str, Any],
        context: Mapping[str, Any] | None = None,
    ) -> Mapped:
        """Map one item (the record itself, or one element of ``spec.for_each``).

        ``context`` holds values the mapper knows and the record does not, read as
        ``$name`` (``$patient``: the shared Patient's reference, for contained resources).
        """
        out = Mapped({})
        scope = _Scope(item, root, 0, out.warnings, context or {})
        if self._compiled(spec)(scope, out.body):
            out.body = pruned(out.body)
        return out

    def _compiled(self, spec: ResourceSpec) -> _Step:
        """The spec's rules as one function, compiled once per spec (specs are immutable)."""
        found = self._programs.get(id(spec))
        if found is None or found[0] is not spec:
            found = (spec, self._compile_rules(spec.rules))
            self._programs[id(spec)] = found
        return found[1]

    def _compile_rules(self, rules: Sequence[Rule]) -> _Step:
        steps = [self._compile(rule) for rule in rules]

        def run(scope: _Scope, target: dict[str, Any]) -> bool:
            """Apply the rules to ``target``; True if a list was padded (empty filler may remain)."""
            padded = False
            for step in steps:
                padded |= step(scope, target)
            return padded

        return run

    def _compile(self, rule: Rule) -> _Step:
        return self._compile_each(rule) if rule.each else self._compile_value(rule)

    def _compile_each(self, rule: Rule) -> _Step:
        inner = self._compile_rules(rule.each)
        items_of = _getter(rule.field) if rule.field else (lambda scope: None)
        element_path = rule.element

        def each(scope: _Scope, target: dict[str, Any]) -> bool:
            items = items_of(scope)
            if items is None:
                return False
            if not isinstance(items, list):
                raise MappingError(MappingIssue("field-not-a-list", rule.field, "expected a list of items"))
            padded = False
            for i, sub in enumerate(items, start=1):
                element: dict[str, Any] = {}
                sub_item = sub if isinstance(sub, Mapping) else {"value": sub}
                padded |= inner(_Scope(sub_item, scope.root, i, scope.warnings, scope.context), element)
                if element:
                    padded |= _set(target, element_path, element)
            return padded

        return each

    def _compile_value(self, rule: Rule) -> _Step:
        source = self._source(rule)
        transforms = [
            (self._transforms[name], arg) for name, _, arg in (t.partition(":") for t in rule.transform)
        ]
        when = [_getter(name) for name in rule.when]
        default, required, path = rule.default, rule.required, rule.element
        missing_reason = "nhs-number-missing" if "nhs-number" in rule.transform else "required-field-missing"

        def step(scope: _Scope, target: dict[str, Any]) -> bool:
            if when and all(_blank(get(scope)) for get in when):
                return False
            value = source(scope)
            if isinstance(value, str):
                value = value.strip()
            if default is not None and empty(value):
                value = default
            for transform, arg in transforms:
                if empty(value):
                    break
                value = transform(value, arg, scope, rule)
            if empty(value):
                if required:
                    raise MappingError(MappingIssue(missing_reason, rule.field, f"{rule.field} is required"))
                return False
            return _set(target, path, value)

        return step

    @staticmethod
    def _source(rule: Rule) -> Callable[[_Scope], Any]:
        if rule.field is not None:
            return _getter(rule.field)
        if rule.template is not None:
            template = rule.template
            return lambda scope: _render(template, scope)
        constant = rule.value
        if isinstance(constant, (dict, list)):
            # A constant list or dict is copied: resources must never share (and later mutate) it.
            return lambda scope: copy.deepcopy(constant)
        return lambda scope: constant

    def _lookup(self, value: Any, table_id: str, scope: _Scope, rule: Rule) -> tuple[Any, bool]:
        code = _text(value)
        if code is None:
            return None, True
        concept = self.tables[table_id].lookup(code)
        if concept is not None:
            return concept, True
        # The local code is named so an analyst knows what to add to the map, but only when it looks
        # like a code: a value that slipped in from another column (a name, an NHS number) is not.
        shown = shown_code(code, self._shapes(table_id))
        issue = MappingIssue("unknown-code", rule.field, f"{shown} not in ConceptMap {table_id}")
        if rule.on_unknown == "quarantine":
            raise MappingError(issue)
        scope.warnings.append(issue)
        return code, False

    def _shapes(self, table_id: str) -> CodeShapes:
        found = self._code_shapes.get(table_id)
        if found is None:
            found = self._code_shapes[table_id] = CodeShapes.of(self.tables[table_id].entries)
        return found

    def _code(self, value: Any, table_id: str, scope: _Scope, rule: Rule) -> Any:
        concept, known = self._lookup(value, table_id, scope, rule)
        return concept.code if known and concept is not None else None

    def _coding(self, value: Any, table_id: str, scope: _Scope, rule: Rule) -> Any:
        concept, known = self._lookup(value, table_id, scope, rule)
        if not known:
            return {"system": self.tables[table_id].source_system, "code": concept}
        return concept.coding() if concept is not None else None

    def _concept(self, value: Any, table_id: str, scope: _Scope, rule: Rule) -> Any:
        concept, known = self._lookup(value, table_id, scope, rule)
        if not known:
            # Keep the source's own code (and say so in the report) rather than drop it.
            return {"coding": [{"system": self.tables[table_id].source_system, "code": concept}]}
        if concept is None:
            return None
        out: dict[str, Any] = {"coding": [concept.coding()]}
        if concept.display:
            out["text"] = concept.display
        return out


def _walk(rules: Sequence[Rule]) -> list[Rule]:
    out: list[Rule] = []
    for r in rules:
        out.append(r)
        out.extend(_walk(r.each))
    return out


def _render(template: str, scope: _Scope) -> str | None:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "i":
            return str(scope.index)
        v = scope.get(name)
        return "" if v is None else str(v)

    rendered = re.sub(r"\{([$^]?[A-Za-z0-9_.]+)\}", repl, template)
    return rendered.strip() or None


@lru_cache(maxsize=4096)
def _parse_path(path: str) -> tuple[tuple[str, int | None, bool], ...]:
    """``a.b[0].c[]`` → ((a, None, False), (b, 0, False), (c, None, True)): name, index, append."""
    parts = []
    for part in path.split("."):
        m = _PATH_PART.fullmatch(part)
        if m is None:
            raise ValueError(f"bad element path {path!r}")
        index = m.group(2)
        parts.append((m.group(1), int(index) if index else None, index == ""))
    return tuple(parts)


def _set(target: dict[str, Any], path: str, value: Any) -> bool:
    """Write ``value`` at ``path``; True if a list had to be padded to reach an index."""
    parts = _parse_path(path)
    node: Any = target
    padded = False
    last_n = len(parts) - 1
    for n, (name, index, append) in enumerate(parts):
        last = n == last_n
        if index is None and not append:
            if last:
                node[name] = value
            else:
                node = node.setdefault(name, {})
            continue
        seq = node.setdefault(name, [])
        if append:
            if last:
                seq.extend(value) if isinstance(value, list) else seq.append(value)
                return padded
            seq.append({})
            node = seq[-1]
            continue
        assert index is not None
        padded |= index > len(seq)
        while len(seq) <= index:
            seq.append({})
        if last:
            seq[index] = value
        else:
            node = seq[index]
    return padded


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _split(value: Any, sep: str) -> list[str]:
    if isinstance(value, list):
        return [t for v in value if (t := _text(v))]
    return [t for part in str(value).split(sep) if (t := part.strip())]


def _int(value: Any, rule: Rule) -> int:
    try:
        return int(str(value).strip())
    except ValueError as exc:
        raise MappingError(MappingIssue("invalid-number", rule.field, "not a whole number")) from exc


#: A local code: a word-like token, no spaces (codes are named in reports; free text never is).
_CODE_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/|-]{0,39}")


#: Code-shaped values that are more likely personal data a sender put in a code field (a field
#: separator too many or too few): a date, a UK postcode, a phone number, a capitalised word (a name).
_PERSONAL_SHAPES = re.compile(
    r"(?:19|20)\d\d(-?)(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])\d*"
    r"|[A-Za-z]{1,2}\d[A-Za-z\d]?\d[A-Za-z]{2}"
    r"|0\d{8,}"
    r"|[A-Z][a-z]{3,}(?:[-'][A-Z]?[a-z]+)*"
)


@dataclass(frozen=True, slots=True)
class CodeShapes:
    """What a map's own codes look like: the kinds of character each is made of (``_shape``) and
    the longest. A value that fits neither came from somewhere else (a misplaced field)."""

    shapes: frozenset[str]
    longest: int

    @classmethod
    def of(cls, codes: Iterable[str]) -> CodeShapes:
        codes = list(codes)
        return cls(frozenset(_shape(c) for c in codes), max((len(c) for c in codes), default=0))

    def fit(self, code: str) -> bool:
        return len(code) <= self.longest and _shape(code) in self.shapes


def _shape(code: str) -> str:
    """The kinds of character a code is made of: letters (``A``), digits (``9``), each punctuation
    mark as itself, in that order: ``LTC-DM`` → ``A-``, ``HBA1C`` → ``A9``, ``01`` → ``9``."""
    kinds = {"A" if ch.isalpha() else "9" if ch.isdigit() else ch for ch in code}
    return "".join(sorted(kinds, key=lambda k: (k != "A", k != "9", k)))


def shown_code(code: str, like: CodeShapes | None = None) -> str:
    """``code 'X'`` for a value shaped like a code; else only that the value is not code-shaped.

    A value shaped like a date, a postcode, a phone number, a capitalised name or an NHS number is
    not named either, nor, given the map's codes (``like``), one longer than any of them or of
    another shape: quarantine details and ``concord quality`` carry no patient data.
    """
    if (
        _CODE_SHAPE.fullmatch(code)
        and not nhs_number.is_valid(code)
        and not _PERSONAL_SHAPES.fullmatch(code)
        and (like is None or like.fit(code))
    ):
        return f"code {code!r}"
    return "a value that is not a code"


def _nhs(value: Any, rule: Rule) -> str:
    try:
        return nhs_number.normalise(str(value))
    except nhs_number.NhsNumberError as exc:
        raise MappingError(MappingIssue(exc.code, rule.field, str(exc))) from exc


_HL7_TS = re.compile(r"(\d{8,14})(\.\d+)?([+-]\d{4})?")
_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y")


def parse_date(value: Any) -> date | None:
    """A date from ISO, HL7 (YYYYMMDD[hhmm[ss]]) or UK (dd/mm/yyyy) form; None if it is none of them."""
    text = _text(value)
    if text is None:
        return None
    if len(text) == 10 and text[4] == "-":
        try:
            return date.fromisoformat(text)
        except ValueError:
            return None
    if len(text) > 8 and _HL7_TS.fullmatch(text):
        text = text[:8]  # HL7 TS: date part of YYYYMMDDhhmmss[.s][+/-zzzz]
    elif "T" in text:
        text = text.split("T", 1)[0]
    if text.isdigit() and len(text) != 8:
        return None  # strptime would read "195013" as 1950-01-03: compact dates are YYYYMMDD exactly
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


#: A date known to the year or the month only: HL7 TS/DT ``YYYY``, ``YYYYMM`` (a partly unknown date of
#: birth) or ISO ``YYYY-MM``. FHIR's date and dateTime carry such precision as ``1980`` and ``1980-06``.
_PARTIAL_DATE = re.compile(r"(\d{4})(?:-?(\d{2}))?")


def partial_date(value: Any) -> str | None:
    """``YYYY`` or ``YYYY-MM`` for a date known to the year or month only; None for anything else."""
    found = _PARTIAL_DATE.fullmatch(_text(value) or "")
    if found is None:
        return None
    year, month = int(found.group(1)), found.group(2)
    if not 1880 <= year <= date.today().year + 1 or (month is not None and not 1 <= int(month) <= 12):
        return None
    return found.group(1) if month is None else f"{found.group(1)}-{month}"


def _date(value: Any, rule: Rule) -> str:
    parsed = parse_date(value)
    if parsed is not None and parsed.year >= 1880:
        return parsed.isoformat()
    partial = partial_date(value)
    if partial is None:
        raise MappingError(MappingIssue("invalid-date", rule.field, "not a date"))
    return partial


def parse_datetime(value: Any) -> datetime | None:
    """A timezone-aware datetime from ISO 8601 or HL7 TS; local times are Europe/London."""
    text = _text(value)
    if text is None:
        return None
    hl7 = _HL7_TS.fullmatch(text)
    try:
        if hl7 is not None:
            digits, offset = hl7.group(1), hl7.group(3)
            fmt = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}.get(len(digits))
            if fmt is None:
                return None
            if offset:
                return datetime.strptime(digits + offset, fmt + "%z")
            return datetime.strptime(digits, fmt).replace(tzinfo=LONDON)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=LONDON)


#: A day with no time: HL7 DT/DTM ``YYYYMMDD`` (an offset on a bare day says nothing) or ISO ``YYYY-MM-DD``.
_DAY_ONLY = re.compile(r"\d{8}(?:[+-]\d{4})?|\d{4}-\d{2}-\d{2}")


def _datetime(value: Any, rule: Rule) -> str:
    """FHIR dateTime at the precision sent: a day stays a day (FHIR allows it), never made midnight."""
    text = _text(value)
    if text is not None and _DAY_ONLY.fullmatch(text):
        day = parse_date(text[:8] if text[:8].isdigit() else text)
        if day is None or day.year < 1880:
            raise MappingError(MappingIssue("invalid-datetime", rule.field, "not a date and time"))
        return day.isoformat()
    parsed = parse_datetime(value)
    if parsed is not None:
        return parsed.isoformat()
    partial = partial_date(value)  # HL7 DTM and FHIR dateTime may stop at the year or month
    if partial is None:
        raise MappingError(MappingIssue("invalid-datetime", rule.field, "not a date and time"))
    return partial
