"""Acute hospital feed: HL7 v2 ADT messages from the trust's patient administration system.

One message is one record. ``adapters.hl7_framing`` splits the stream into
messages as it is read (CR, LF or CRLF segment ends, MLLP framing, batch
envelopes), and each message is parsed here with python-hl7. docs/sources/acute.md lists every segment
and field read, where the NHS number may be, and how discharge follow-ups travel.

A message that cannot be used becomes a RecordError with one of these reasons:

    hl7-unreadable           MSH cannot be read: field separator or encoding characters (MSH-2)
    hl7-no-msh               segments that belong to no message (nothing before them starts with MSH)
    hl7-message-too-large    a message over the size limit (the rest of it is skipped, not held)
    hl7-unsupported-message  not ADT (ORU, OML, ACK ...)
    hl7-unsupported-event    an ADT event the feed does not carry (A12, A60 ...)
    hl7-no-pid               no PID segment
    hl7-multiple-pid         more than one PID segment (one patient per message is agreed)
    local-id-missing         no hospital number among the PID-3 identifiers

The whole input is refused (AdapterError) only when it is empty, UTF-16 text, or its first
segment is not MSH, FHS or BHS: then it is not an HL7 v2 file at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

import hl7
from hl7.exceptions import HL7Exception

from adapters.hl7_framing import Unit, decode, messages, segments, segments_of
from adapters.records import Item, RecordError, SourceRecord, decode_legacy, ods_code

SOURCE: Final = "acute"
CHUNK_SIZE: Final = 64 * 1024
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
#: The ADT events the trust sends, and what each does (docs/sources/acute.md).
EVENTS: Final = {
    "A01": "admit",
    "A02": "transfer",
    "A03": "discharge (transfer-of-care plan with follow-ups)",
    "A04": "register outpatient or emergency attendance",
    "A05": "pre-admit",
    "A08": "update patient information",
    "A11": "cancel admit (demographics only)",
    "A13": "cancel discharge (revokes the discharge plan)",
    "A28": "add person",
    "A31": "update person",
    "A34": "merge patient information, patient id only (as A40: MRG-1 names the retired number)",
    "A40": "merge patient (MRG-1 names the retired hospital number)",
    "A47": "change internal identifier (as A40: MRG-1 names the number replaced)",
}
#: OBX-3 identifier of a discharge follow-up instruction (the trust's local code).
FOLLOW_UP_ID: Final = "FOLLOWUP"
#: HL7 OID of the NHS number as an assigning authority (HD.2).
NHS_NUMBER_OID: Final = "2.16.840.1.113883.2.1.4.1"

_NHS_SHAPE = re.compile(r"\d{3}[ -]?\d{3}[ -]?\d{4}")
#: Assigning authorities (CX.4) of the other UK national patient numbers, sent with type NH as the NHS
#: number is: Scotland's CHI number, Northern Ireland's Health and Care number. Never an NHS number.
_OTHER_NATIONAL = frozenset({"CHI", "HSNI", "HSCNI", "HCN"})
_HOSPITAL_TYPES = ("MR", "MRN", "MEDREC", "PI", "PT")
#: Identifier types trusts send the NHS number as (UCLH's EMAP feed: HN).
_NHS_TYPES = frozenset({"NH", "HN", "NHS", "NHSNBR"})
#: Identifier types (CX.5, HL7 table 0203) that are not the trust's number for the person: national
#: numbers (NHS, social security, driving licence, passport) and the numbers of an account or a visit.
_NOT_HOSPITAL_TYPES = frozenset(
    {"SS", "NH", "HN", "NHS", "NHSNBR", "DL", "PPN", "AN", "ANC", "AND", "ANT", "ANON", "VN"}
)
_WITHDRAWN = frozenset({"D", "W"})  # OBX-11: deleted, wrong (withdrawn)
_CODED = frozenset({"CE", "CWE", "CNE"})

Rep = list[list[str]]  # one repetition of a field: components, each a list of subcomponents


class AcuteAdapter:
    """Reads the trust's ADT feed. ``read`` holds one message in memory at a time."""

    source = SOURCE

    def __init__(self, chunk_size: int = CHUNK_SIZE, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.chunk_size = chunk_size
        self.max_message_bytes = max_message_bytes

    def read(self, stream: IO[bytes] | IO[str]) -> Iterator[Item]:
        """Stream items from a binary (preferred) or text file object, one per message."""
        lines = segments(stream, self.chunk_size, self.max_message_bytes)
        units = messages(lines, self.max_message_bytes, strict=True)
        for n, unit in enumerate(units, start=1):
            yield self._item(unit, f"message {n}")

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        lines = segments_of(raw.encode("utf-8"))
        for unit in messages(lines, self.max_message_bytes, strict=False):
            yield self._item(unit, location)

    def _item(self, unit: Unit, location: str) -> Item:
        raw = decode(unit.segments)
        if unit.kind == "orphan":
            detail = f"{len(unit.segments)} segment(s) outside any message (no MSH before them)"
            return RecordError(SOURCE, location, "hl7-no-msh", None, detail, raw)
        if unit.kind == "too-large":
            detail = f"message over {self.max_message_bytes} bytes: skipped"
            return RecordError(SOURCE, location, "hl7-message-too-large", None, detail, raw)
        return interpret(raw, location)


# --- one message --------------------------------------------------------------------------------


def interpret(text: str, location: str) -> Item:
    """One message (segments separated by CR) to a SourceRecord or a RecordError."""
    if text[:3] != "MSH" and text[:3].upper() == "MSH":
        text = "MSH" + text[3:]  # segment ids are upper case (python-hl7 finds the header by "MSH")
    problem = _msh_problem(text)
    if problem is not None:
        return RecordError(SOURCE, location, "hl7-unreadable", problem[0], problem[1], text)
    try:
        msg = _Message(hl7.parse(text))
    except (HL7Exception, ValueError, IndexError) as exc:
        detail = f"python-hl7 cannot parse the message ({type(exc).__name__})"
        return RecordError(SOURCE, location, "hl7-unreadable", None, detail, text)
    kind, event = msg.get("MSH", 9, 1).upper(), (msg.get("MSH", 9, 2) or msg.get("EVN", 1)).upper()
    if kind != "ADT":
        detail = f"{_code(kind)} messages are not part of the ADT feed"
        return RecordError(SOURCE, location, "hl7-unsupported-message", "MSH-9", detail, text)
    if event not in EVENTS:
        detail = f"ADT^{_code(event)} is not an event the feed carries"
        return RecordError(SOURCE, location, "hl7-unsupported-event", "MSH-9", detail, text)
    pids = msg.all("PID")
    if not pids:
        return RecordError(SOURCE, location, "hl7-no-pid", "PID", "no PID segment", text)
    if len(pids) > 1:
        detail = f"{len(pids)} PID segments: one patient per message is expected"
        return RecordError(SOURCE, location, "hl7-multiple-pid", "PID", detail, text)
    fields = _fields(msg, pids[0], event)
    if not fields["hospital_number"]:
        detail = "no hospital number among the PID-3 identifiers"
        return RecordError(SOURCE, location, "local-id-missing", "PID-3", detail, text)
    return SourceRecord(SOURCE, location, fields["hospital_number"], fields, text)


def _msh_problem(text: str) -> tuple[str, str] | None:
    """Why MSH-1/MSH-2 cannot be trusted, or None. python-hl7 would parse garbage with them."""
    if not text.startswith("MSH") or len(text) < 5:
        return "MSH", "message does not start with a complete MSH segment"
    sep = text[3]
    if sep.isalnum() or sep.isspace():
        return "MSH-1", "field separator is a letter, digit or space"
    end = text.find(sep, 4)
    encoding = text[4:end] if end > 0 else ""
    if not 4 <= len(encoding) <= 5:
        return "MSH-2", f"encoding characters must be 4 (or 5 from v2.7), found {len(encoding)}"
    if len(set(encoding + sep)) != len(encoding) + 1 or any(c.isalnum() or c.isspace() for c in encoding):
        return "MSH-2", "encoding characters must be distinct punctuation"
    return None


def _code(value: str) -> str:
    """A message type or event code, made safe to report (it is not patient data, but could be garbage)."""
    return re.sub(r"[^A-Z0-9_]", "?", value[:8]) or "(none)"


class _Segment:
    """One segment as plain, unescaped strings: field number → repetitions → components → subcomponents."""

    __slots__ = ("fields",)

    def __init__(self, segment: Any = (), unescape: Callable[[str], str] = str) -> None:
        self.fields: list[list[Rep]] = [
            [[[_value(str(s), unescape) for s in _seq(comp)] for comp in _seq(rep)] for rep in _seq(fld)]
            for fld in segment
        ]

    def reps(self, n: int) -> list[Rep]:
        if n >= len(self.fields):
            return []
        return [rep for rep in self.fields[n] if any(any(sub) for sub in rep)]

    def get(self, n: int, comp: int = 1, sub: int = 1) -> str:
        reps = self.reps(n)
        return _part(reps[0], comp, sub) if reps else ""


def _value(raw: str, unescape: Callable[[str], str]) -> str:
    """One (sub)component's text. ``""`` is HL7's explicit null (chapter 2: "delete the value"): it
    reads as empty, so the value is absent from the record and from what is built from it."""
    return "" if raw == _NULL else unescape(raw)


_NULL: Final = '""'


def _seq(node: Any) -> list[Any]:
    return list(node) if isinstance(node, list) else [node]


def _part(rep: Rep, comp: int, sub: int = 1) -> str:
    if comp > len(rep) or sub > len(rep[comp - 1]):
        return ""
    return rep[comp - 1][sub - 1].strip()


def _joined(rep: Rep, comp: int) -> str:
    """All subcomponents of one component, space-separated (street address parts, for instance)."""
    if comp > len(rep):
        return ""
    return " ".join(s.strip() for s in rep[comp - 1] if s.strip())


class _Unescaper:
    """HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\).

    Not python-hl7's ``unescape``: that one logs the whole field, patient data
    included, when it meets a sequence it does not know.
    """

    def __init__(self, esc: str, separators: str) -> None:
        self.esc = esc
        self.pattern = re.compile(re.escape(esc) + "([^" + re.escape(esc) + "]*)" + re.escape(esc))
        # separators: segment, field, repetition, component, subcomponent
        self.table = {"F": separators[1], "R": separators[2], "S": separators[3], "T": separators[4]}
        self.table |= {"E": esc, ".br": "\n"}

    def __call__(self, text: str) -> str:
        if self.esc not in text:
            return text
        return self.pattern.sub(self._one, text)

    def _one(self, match: re.Match[str]) -> str:
        code = match.group(1)
        if code in self.table:
            return self.table[code]
        if code[:1] == "X" and re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", code[1:]):
            return decode_legacy(bytes.fromhex(code[1:]))  # hex data read as the message is
        return ""  # highlighting and unknown sequences carry no data


class _Message:
    def __init__(self, parsed: Any) -> None:
        unescape = _Unescaper(str(parsed.esc), str(parsed.separators))
        self.segments: list[tuple[str, _Segment]] = [
            (str(seg[0]).strip().upper(), _Segment(seg, unescape)) for seg in parsed
        ]

    def all(self, name: str) -> list[_Segment]:
        return [seg for seg_name, seg in self.segments if seg_name == name]

    def first(self, name: str) -> _Segment:
        """The first segment called ``name``, or an empty one (every field reads as "")."""
        found = self.all(name)
        return found[0] if found else _Segment()

    def get(self, name: str, n: int, comp: int = 1, sub: int = 1) -> str:
        return self.first(name).get(n, comp, sub)


# --- the record's fields --------------------------------------------------------------------------


def _fields(msg: _Message, pid: _Segment, event: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "message_type": "ADT",
        "event": event,
        "message_control_id": msg.get("MSH", 10),
        "message_time": msg.get("MSH", 7),
        "hl7_version": msg.get("MSH", 12),
        "sending_application": msg.get("MSH", 3),
        "sending_facility": msg.get("MSH", 4),
        "source_ods": ods_code(msg.get("MSH", 4)),
        "recorded_at": msg.get("EVN", 2) or msg.get("MSH", 7),
        "event_time": msg.get("EVN", 6),
        **_identifiers(pid, msg.get("MSH", 4)),
        **_demographics(pid),
        **_registration(msg.first("PD1")),
        **_visit(msg.first("PV1")),
        **_merge(msg.first("MRG"), msg.get("MSH", 4)),
    }
    fields["care_plans"] = _care_plans(msg, event, fields)
    return fields


@dataclass(frozen=True, slots=True)
class _Cx:
    id: str
    authority: str
    authority_oid: str
    type: str

    @classmethod
    def of(cls, rep: Rep) -> _Cx:
        return cls(_part(rep, 1), _part(rep, 4, 1), _part(rep, 4, 2), _part(rep, 5).upper())

    @property
    def is_nhs(self) -> bool:
        """Assigned by the NHS (CX.4 ``NHS`` or the NHS number OID) as an NHS number: of an NHS number
        type or none, or shaped like one whatever its type (a local type on the NHS number); or of type
        NH, unless another national scheme assigned it (a CHI or Health and Care number). An
        NHS-assigned identifier of a local type not shaped like an NHS number (``H1^^^NHS^MR``, a
        trust that names itself NHS) is not the NHS number, and may be the hospital number."""
        if self.authority.upper() == "NHS" or self.authority_oid == NHS_NUMBER_OID:
            return not self.type or self.type in _NHS_TYPES or bool(_NHS_SHAPE.fullmatch(self.id))
        return self.type == "NH" and self.authority.upper() not in _OTHER_NATIONAL

    @property
    def is_other_national(self) -> bool:
        return self.authority.upper() in _OTHER_NATIONAL


def _identifiers(pid: _Segment, facility: str) -> dict[str, str]:
    ids = [_Cx.of(rep) for rep in pid.reps(3)]
    hospital = _hospital_number(ids, facility)
    nhs, where = _nhs_number(pid, ids)
    return {
        "hospital_number": hospital.id if hospital else "",
        "hospital_number_authority": hospital.authority if hospital else "",
        "nhs_number": nhs,
        "nhs_number_where": where,
        "nhs_number_status": pid.get(32),
    }


def _hospital_number(ids: list[_Cx], facility: str) -> _Cx | None:
    """The trust's own number for the person: among the local identifiers, one assigned by the
    sending facility (MSH-4) first, then by type (a medical record number before a patient id),
    then in the order sent."""
    local = [
        i
        for i in ids
        if i.id and not i.is_nhs and not i.is_other_national and i.type not in _NOT_HOSPITAL_TYPES
    ]
    own = facility.strip().upper()

    def rank(cx: _Cx) -> tuple[bool, int]:
        kind = _HOSPITAL_TYPES.index(cx.type) if cx.type in _HOSPITAL_TYPES else len(_HOSPITAL_TYPES)
        return (not own or cx.authority.strip().upper() != own, kind)

    return min(local, key=rank, default=None)  # min keeps the first of equals: the order sent


def _nhs_number(pid: _Segment, ids: list[_Cx]) -> tuple[str, str]:
    """The NHS number as sent (not validated: the mapping does that) and where it was found.

    PID-3 with the NHS as assigning authority first; older feeds put it in PID-2
    or PID-19, where only a value shaped like one (ten digits, maybe spaced) counts:
    elsewhere PID-19 is a US social security number. A PID-2 that names another
    assigning authority or type (a hospital number, a CHI number) is not the NHS number.
    """
    for cx in ids:
        if cx.is_nhs and cx.id:
            return cx.id, "PID-3"
    reps = pid.reps(2)
    external = _Cx.of(reps[0]) if reps else None
    if external is not None and _NHS_SHAPE.fullmatch(external.id) and _may_be_nhs(external):
        return external.id, "PID-2"
    value = pid.get(19)
    if _NHS_SHAPE.fullmatch(value):
        return value, "PID-19"
    return "", ""


def _may_be_nhs(cx: _Cx) -> bool:
    """A bare value (no assigning authority, no type) may be the NHS number; a labelled one only if NHS."""
    return cx.is_nhs or not (cx.authority or cx.authority_oid or cx.type)


def _demographics(pid: _Segment) -> dict[str, Any]:
    name = _preferred(pid.reps(5), type_comp=7, wanted="L")
    address = _preferred(pid.reps(11), type_comp=7, wanted="H")
    phones = [p for rep in pid.reps(13) if _system(rep) == "phone" and (p := _phone(rep))]
    return {
        "family_name": _part(name, 1, 1),
        "given_names": " ".join(p for p in (_part(name, 2), _part(name, 3)) if p),
        "title": _part(name, 5),
        "birth_date": pid.get(7),
        "sex": pid.get(8),
        "address_line_1": _joined(address, 1),
        "address_line_2": _part(address, 2),
        "town": _part(address, 3),
        "county": _part(address, 4),
        "postcode": _part(address, 5),
        "country": _part(address, 6),
        "address_type": _part(address, 7),
        "phone": phones[0] if phones else "",
        "phones": phones,
        "business_phones": [p for rep in pid.reps(14) if _system(rep) == "phone" and (p := _phone(rep))],
        "other_contacts": _other_contacts(pid),
        "death_time": pid.get(29),
        "death_indicator": pid.get(30),
        # PID-30 stands alone only without a time of death (FHIR's deceased[x] is one or the other).
        "death_indicator_alone": "" if pid.get(29) else pid.get(30),
    }


def _preferred(reps: list[Rep], type_comp: int, wanted: str) -> Rep:
    """The repetition of type ``wanted``, else the first; one holding nothing but its type is passed over."""
    held = [rep for rep in reps if any(_part(rep, c) for c in range(1, type_comp))] or reps
    for rep in held:
        if _part(rep, type_comp).upper() == wanted:
            return rep
    return held[0] if held else []


#: XTN.3 (telecommunication equipment type, HL7 table 0202) → FHIR ContactPoint.system.
_EQUIPMENT: Final = {
    "PH": "phone",
    "CP": "phone",
    "SAT": "phone",
    "FX": "fax",
    "BP": "pager",
    "INTERNET": "email",
    "X.400": "email",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
}


def _system(rep: Rep) -> str:
    """What an XTN reaches: an email (XTN.2 ``NET`` or XTN.3 ``Internet``), a fax, a pager, or a phone
    (the default, as when XTN.3 is empty or unknown)."""
    if _part(rep, 2).upper() == "NET":
        return "email"
    return _EQUIPMENT.get(_part(rep, 3).upper(), "phone")


def _other_contacts(pid: _Segment) -> list[dict[str, str]]:
    """PID-13 (home) and PID-14 (work) repetitions that are not phones: emails (XTN.4, or XTN.1 in
    older feeds), faxes and pagers, each with its system and use."""
    found = []
    for n, use in ((13, "home"), (14, "work")):
        for rep in pid.reps(n):
            system = _system(rep)
            if system == "phone":
                continue
            value = (_part(rep, 4) or _part(rep, 1)) if system == "email" else _phone(rep)
            if value:
                found.append({"system": system, "value": value, "use": use})
    return found


def _phone(rep: Rep) -> str:
    """XTN: the number as written (XTN.1), else the unformatted one (XTN.12), else area + local."""
    return _part(rep, 1) or _part(rep, 12) or " ".join(p for p in (_part(rep, 6), _part(rep, 7)) if p)


def _first(seg: _Segment, n: int) -> Rep:
    reps = seg.reps(n)
    return reps[0] if reps else []


def _registration(pd1: _Segment) -> dict[str, str]:
    """PD1-3: the registered practice (XON, ODS code in XON.10, or XON.3 before v2.5); PD1-4: the GP."""
    practice = _first(pd1, 3)
    return {
        "registered_practice_ods": ods_code(_part(practice, 10) or _part(practice, 3)),
        "registered_gp_code": pd1.get(4),
    }


def _visit(pv1: _Segment) -> dict[str, str]:
    doctor = _first(pv1, 7)
    return {
        "patient_class": pv1.get(2),
        "ward": pv1.get(3, 1),
        "room": pv1.get(3, 2),
        "bed": pv1.get(3, 3),
        "prior_ward": pv1.get(6, 1),
        "consultant_code": _part(doctor, 1),
        "consultant_name": " ".join(p for p in (_part(doctor, 6), _part(doctor, 3), _part(doctor, 2)) if p),
        "specialty": pv1.get(10),
        "visit_number": pv1.get(19),
        "discharge_disposition": pv1.get(36),
        "discharge_destination": pv1.get(37),
        "admit_time": pv1.get(44),
        "discharge_time": pv1.get(45),
    }


def _merge(mrg: _Segment, facility: str) -> dict[str, str]:
    """A40: MRG-1 lists the identifiers of the record merged away (the survivor is in PID)."""
    ids = [_Cx.of(rep) for rep in mrg.reps(1)]
    retired = _hospital_number(ids, facility)
    nhs = next((i.id for i in ids if i.is_nhs and i.id), "")
    old = retired.id if retired else ""
    # replaces_local_id: the store retires the acute contribution held under the old number.
    return {"merged_hospital_number": old, "merged_nhs_number": nhs, "replaces_local_id": old}


def _care_plans(msg: _Message, event: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
    """A03 makes the transfer-of-care plan of the stay; A13 (discharge cancelled) revokes it.

    The plan is identified by the visit number, so a later A03 or A13 for the
    same stay lands on the same CarePlan. An A03 without a visit number falls
    back to its message control id; an A13 without one cannot name a plan.
    """
    if event not in ("A03", "A13"):
        return []
    visit = fields["visit_number"]
    if event == "A13" and not visit:
        return []
    return [
        {
            "plan_id": visit or fields["message_control_id"],
            "plan_status": "active" if event == "A03" else "revoked",
            "plan_type": "DISCHARGE",
            "visit_number": visit,
            "start": fields["discharge_time"] or fields["event_time"] or fields["recorded_at"],
            "recorded_at": fields["recorded_at"],
            "activities": _follow_ups(msg) if event == "A03" else [],
        }
    ]


def _follow_ups(msg: _Message) -> list[dict[str, str]]:
    """Discharge follow-up instructions: OBX segments whose OBX-3 is FOLLOWUP; other OBX are not ours.

    OBX-5 carries the instruction (code^text^coding system when OBX-2 is CE/CWE,
    plain text otherwise), OBX-14 the due date, OBX-23 the organisation asked to
    act (ODS code in XON.10, or XON.3). A follow-up withdrawn (OBX-11 D or W) is left out.
    """
    out = []
    for obx in msg.all("OBX"):
        if obx.get(3, 1).upper() != FOLLOW_UP_ID or obx.get(11).upper() in _WITHDRAWN:
            continue
        value, performer = _first(obx, 5), _first(obx, 23)
        coded = obx.get(2).upper() in _CODED
        out.append(
            {
                "sequence": obx.get(4) or obx.get(1),
                "code": _part(value, 1) if coded else "",
                "text": _part(value, 2) if coded else _part(value, 1),
                "code_system": _part(value, 3) if coded else "",
                "due_date": obx.get(14),
                "performer_ods": ods_code(_part(performer, 10) or _part(performer, 3)),
                "performer_name": _part(performer, 1),
                "result_status": obx.get(11),
            }
        )
    return out
