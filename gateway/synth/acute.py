"""The acute trust's ADT feed (HL7 v2.5 batch file) for a synthetic population. Format: docs/sources/acute.md.

Every person known to the trust (``in_acute``) gets one or two stays: an A01
admission, sometimes an A02 ward transfer and an A08 update, and (usually) an
A03 discharge whose follow-up instructions travel as FOLLOWUP observations. A
few people also get A28/A31 person messages, and a few an A40 merge of a
duplicate registration. Messages are written person by person (a day's feed in
event order would need the whole population in memory), in one FHS/BHS batch,
segments ended by CR.

``out`` may be a text stream (as ``concord synth`` opens it: UTF-8, ``newline=""``
so CR is written as it is) or a binary one (UTF-8 bytes are written).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import IO, Any, Final

from gateway.synth.defects import DefectPlan, break_check_digit
from gateway.synth.population import (
    ACUTE_TRUST,
    COMMUNITY_PROVIDER,
    COUNCIL,
    FAMILY_NAMES,
    GIVEN_MALE,
    Person,
)
from mappings.nhs_number import formatted

SENT_AT: Final = datetime(2026, 11, 1, 6, 0, 0)
ACUTE_DEFECTS: Final = ("bad-check-digit", "missing-nhs-number", "truncated", "conflicting-birth-date")
#: Only a discharge carries follow-up codes to get wrong.
DISCHARGE_DEFECTS: Final = (*ACUTE_DEFECTS, "unknown-code")
WARDS: Final = ("AMU", "W12", "W7", "CCU")
#: Treatment function codes (NHS Data Dictionary) sent as the hospital service, PV1-10.
SPECIALTIES: Final = ("300", "430", "100", "110", "320")
#: Follow-up code → (text, who is asked to act: "gp", "community", "council" or "trust").
FOLLOW_UPS: Final = {
    "GPREVIEW": ("Review by GP after discharge", "gp"),
    "OPCLINIC": ("Outpatient clinic follow-up", "trust"),
    "MEDREVIEW": ("Medication review", "gp"),
    "BLOODS": ("Blood test", "gp"),
    "DNVISIT": ("District nurse home visit", "community"),
    "WOUND": ("Wound care", "community"),
    "PHYSIO": ("Physiotherapy", "community"),
    "OT": ("Occupational therapy", "community"),
    "SOCCARE": ("Referral to adult social care for a needs assessment", "council"),
}
UNKNOWN_FOLLOW_UP: Final = ("XFU99", "Ring the ward if worse")


@dataclass(slots=True)
class _Feed:
    """Where messages go, with the running counters that make control ids and visit numbers."""

    write: Callable[[str], object]
    rng: random.Random
    defects: DefectPlan
    messages: int = 0

    def send(self, segments: list[str], kinds: tuple[str, ...], person: Person) -> None:
        defect = self.defects.pick("acute", kinds)
        if defect is not None:
            segments = _apply(defect, segments, person, self.rng)
        self.write("".join(s + "\r" for s in segments))
        self.messages += 1

    def control_id(self) -> str:
        return f"ACU{self.messages + 1:09d}"


def write_acute(people: Iterable[Person], out: IO[Any], rng: random.Random, defects: DefectPlan) -> int:
    """Write the feed; returns the number of ADT messages (batch envelope segments not counted)."""
    feed = _Feed(_sink(out), rng, defects)
    stamp = _ts(SENT_AT)
    feed.write(f"FHS|^~\\&|PAS|{ACUTE_TRUST}|CONCORD|ICB|{stamp}||acute-{SENT_AT:%Y%m%d}.hl7\r")
    feed.write(f"BHS|^~\\&|PAS|{ACUTE_TRUST}|CONCORD|ICB|{stamp}\r")
    for person in people:
        if person.in_acute:
            _person(feed, person)
    feed.write(f"BTS|{feed.messages}\rFTS|1\r")
    return feed.messages


def _sink(out: IO[Any]) -> Callable[[str], object]:
    if isinstance(out, io.TextIOBase):
        return out.write
    return lambda text: out.write(text.encode("utf-8"))


# --- one person's story -----------------------------------------------------------------------


@dataclass(slots=True)
class _Patient:
    """What the trust's PAS holds about a person (it can differ from the GP's record)."""

    person: Person
    hospital_number: str
    nhs_style: str  # "NH" | "HN" | "spaced"
    status: str  # PID-32
    phone: str


def _person(feed: _Feed, person: Person) -> None:
    rng = feed.rng
    style = rng.choices(("NH", "HN", "spaced"), weights=(75, 15, 10))[0]
    status = rng.choice(("01", "01", "01", ""))  # PID-32; empty: the PAS keeps no status
    patient = _Patient(person, f"H{person.index + 1000000:07d}", style, status, person.phone)
    when = datetime(2026, 1, 5, 8) + timedelta(minutes=rng.randint(0, 260 * 24 * 60))
    if rng.random() < 0.03:
        _merge(feed, patient, when - timedelta(days=rng.randint(20, 200)))
    elif rng.random() < 0.05:
        _message(feed, patient, "A28", when - timedelta(days=rng.randint(5, 60)), [_pv1_none()])
    for stay in range(1, 3 if rng.random() < 0.2 else 2):
        when = _stay(feed, patient, stay, when) + timedelta(days=rng.randint(10, 60))
    if rng.random() < 0.05:
        patient.phone = f"07{rng.randint(100, 999)} {rng.randint(100000, 999999)}"
        _message(feed, patient, "A31", when, [_pv1_none()])


def _merge(feed: _Feed, patient: _Patient, when: datetime) -> None:
    """A duplicate registration (say, at the front door without the usual number), merged a day later."""
    duplicate = _Patient(patient.person, f"T{patient.person.index + 1000000:07d}", patient.nhs_style, "", "")
    _message(feed, duplicate, "A28", when, [_pv1_none()])
    mrg = f"MRG|{duplicate.hospital_number}^^^{ACUTE_TRUST}^MR"
    _message(feed, patient, "A40", when + timedelta(days=1), [mrg])


def _stay(feed: _Feed, patient: _Patient, stay: int, admitted: datetime) -> datetime:
    rng = feed.rng
    visit = _Visit(
        number=f"V{patient.person.index:07d}{stay}",
        ward=rng.choice(WARDS),
        specialty=rng.choice(SPECIALTIES),
        consultant=_consultant(rng),
        admitted=admitted,
    )
    _message(feed, patient, "A01", admitted, [visit.pv1()])
    now = admitted + timedelta(hours=rng.randint(2, 30))
    if rng.random() < 0.3:
        visit.prior_ward, visit.ward = visit.ward, rng.choice([w for w in WARDS if w != visit.ward])
        _message(feed, patient, "A02", now, [visit.pv1()])
    if rng.random() < 0.15:
        patient.phone = f"0208 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        _message(feed, patient, "A08", now + timedelta(hours=1), [visit.pv1()])
    if rng.random() < 0.1:  # still in hospital when the feed was cut
        return now
    visit.discharged = now + timedelta(days=rng.randint(1, 14), hours=rng.randint(0, 8))
    extra = [visit.pv1(), *_observations(patient.person, visit, rng)]
    _message(feed, patient, "A03", visit.discharged, extra, DISCHARGE_DEFECTS)
    return visit.discharged


@dataclass(slots=True)
class _Visit:
    number: str
    ward: str
    specialty: str
    consultant: str
    admitted: datetime
    prior_ward: str = ""
    discharged: datetime | None = None

    def pv1(self) -> str:
        fields = {
            1: "1",
            2: "I",
            3: f"{self.ward}^^^{ACUTE_TRUST}",
            6: self.prior_ward,
            7: self.consultant,
            10: self.specialty,
            19: self.number,
            44: _ts(self.admitted),
        }
        if self.discharged is not None:
            fields |= {36: "19", 45: _ts(self.discharged)}  # 19: usual place of residence
        return _segment("PV1", fields)


def _consultant(rng: random.Random) -> str:
    return f"C{rng.randint(1000000, 9999999)}^{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_MALE)}^^^Dr"


def _pv1_none() -> str:
    return "PV1|1|N"  # A28/A31 carry a pseudo visit (patient class N: not applicable)


def _observations(person: Person, visit: _Visit, rng: random.Random) -> list[str]:
    """The discharge summary's follow-ups, after one observation that is not a follow-up."""
    discharged = visit.discharged or visit.admitted
    days = str((discharged - visit.admitted).days)
    los = _segment("OBX", {1: "1", 2: "NM", 3: "LOS^Length of stay^L", 5: days, 6: "d", 11: "F"})
    codes = _follow_up_codes(person, rng)
    return [los] + [
        _follow_up(n, code, person, discharged + timedelta(days=rng.randint(3, 28)))
        for n, code in enumerate(codes, start=1)
    ]


def _follow_up_codes(person: Person, rng: random.Random) -> list[str]:
    wanted = ["GPREVIEW"]
    if person.long_term_conditions:
        wanted += ["MEDREVIEW", "BLOODS"]
    if person.frail:
        wanted += ["DNVISIT", "OT", "PHYSIO"]
    if person.in_social_care or person.frail:
        wanted.append("SOCCARE")
    wanted += ["OPCLINIC", "WOUND"]
    return rng.sample(wanted, k=min(len(wanted), rng.randint(0, 3)))


def _follow_up(n: int, code: str, person: Person, due: datetime) -> str:
    text, who = FOLLOW_UPS.get(code, (UNKNOWN_FOLLOW_UP[1], "gp"))
    name, ods = {
        "gp": (f"Practice {person.practice_ods}", person.practice_ods),
        "community": ("Community health services", COMMUNITY_PROVIDER),
        "council": ("Adult social care", COUNCIL),
    }.get(who, ("Outpatients", ACUTE_TRUST))
    fields = {
        1: str(n + 1),
        2: "CWE",
        3: "FOLLOWUP^Follow-up^L",
        4: str(n),
        5: f"{code}^{_esc(text)}^L",
        11: "F",
        14: f"{due:%Y%m%d}",
        23: f"{_esc(name)}^^^^^^^^^{ods}",  # XON.10: organisation identifier
    }
    return _segment("OBX", fields)


# --- segments ------------------------------------------------------------------------------------


def _message(
    feed: _Feed,
    patient: _Patient,
    event: str,
    when: datetime,
    extra: list[str],
    kinds: tuple[str, ...] = ACUTE_DEFECTS,
) -> None:
    structure = {"A02": "ADT_A02", "A03": "ADT_A03", "A40": "ADT_A39"}.get(event, "ADT_A01")
    msh = (
        f"MSH|^~\\&|PAS|{ACUTE_TRUST}|CONCORD|ICB|{_ts(when)}||ADT^{event}^{structure}|{feed.control_id()}"
        "|P|2.5|||AL|NE||UNICODE UTF-8"
    )
    evn = f"EVN|{event}|{_ts(when)}|||PAS|{_ts(when)}"
    pd1 = f"PD1|||{_esc('Practice ' + patient.person.practice_ods)}^^^^^^^^^{patient.person.practice_ods}"
    feed.send([msh, evn, _pid(patient), pd1, *extra], kinds, patient.person)


def _pid(patient: _Patient, nhs_number: str | None = None, birth: date | None = None) -> str:
    p = patient.person
    nhs = p.nhs_number if nhs_number is None else nhs_number
    ids = f"{patient.hospital_number}^^^{ACUTE_TRUST}^MR"
    if nhs:
        shown = formatted(nhs) if patient.nhs_style == "spaced" and len(nhs) == 10 else nhs
        ids += f"~{shown}^^^NHS^{'HN' if patient.nhs_style == 'HN' else 'NH'}"
    given, _, middle = p.given_names.partition(" ")
    fields = {
        1: "1",
        3: ids,
        5: f"{_esc(p.family_name)}^{_esc(given)}^{_esc(middle)}^^{p.title}",
        7: f"{birth or p.birth_date:%Y%m%d}",
        8: p.sex,
        11: f"{_esc(p.address_line_1)}^^{p.town}^^{p.postcode}^GBR^H",
        13: f"{patient.phone}^PRN^PH" if patient.phone else "",
        32: patient.status,
    }
    return _segment("PID", fields)


def _apply(defect: str, segments: list[str], person: Person, rng: random.Random) -> list[str]:
    """The message as the defect leaves it (``segments`` itself is not changed)."""
    out = list(segments)
    pid = next(i for i, s in enumerate(out) if s.startswith("PID|"))
    if defect == "truncated":
        if rng.random() < 0.5:
            return out[:pid]  # cut before PID: hl7-no-pid
        return [out[0].replace("MSH|^~\\&|", "MSH|~\\&|", 1), *out[1:]]  # MSH-2 cut: hl7-unreadable
    if defect in ("bad-check-digit", "missing-nhs-number"):
        wrong = break_check_digit(person.nhs_number) if defect == "bad-check-digit" else ""
        out[pid] = _swap_nhs(out[pid], person.nhs_number, wrong)
    elif defect == "conflicting-birth-date":
        shifted = person.birth_date + timedelta(days=rng.choice((1, 31, 365, -365)))
        out[pid] = out[pid].replace(f"|{person.birth_date:%Y%m%d}|", f"|{shifted:%Y%m%d}|", 1)
    elif defect == "unknown-code":
        n = sum(s.startswith("OBX|") for s in out)
        due = datetime(2026, 12, 1)
        out.append(_follow_up(n, UNKNOWN_FOLLOW_UP[0], person, due))
    return out


def _swap_nhs(pid: str, right: str, wrong: str) -> str:
    """PID with the NHS number replaced by ``wrong`` (or its repetition dropped when ``wrong`` is empty)."""
    for shown in (formatted(right), right):
        for kind in ("NH", "HN"):
            old = f"~{shown}^^^NHS^{kind}"
            if old in pid:
                return pid.replace(old, f"~{wrong}^^^NHS^{kind}" if wrong else "", 1)
    return pid


def _segment(name: str, fields: dict[int, str]) -> str:
    last = max(fields)
    return "|".join([name, *(fields.get(i, "") for i in range(1, last + 1))])


def _esc(text: str) -> str:
    """HL7 escapes for free text, escape character first."""
    for char, code in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(char, code)
    return text


def _ts(when: datetime) -> str:
    return f"{when:%Y%m%d%H%M%S}"
