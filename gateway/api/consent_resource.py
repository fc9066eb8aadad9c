"""An incoming FHIR R4 Consent read as the register's terms: who opts out, of what, on whose say-so. Pure.

``parse_opt_out(body)`` reads ``POST /fhir/Consent``: an active opt-out
(``status`` active, ``scope`` patient-privacy, ``provision.type`` deny) for the
person named by ``patient.identifier`` (system ``https://fhir.nhs.uk/Id/nhs-number``,
a valid NHS number). The kind comes from our ``opt-out-kind`` extension, or is
read from ``provision.purpose`` (``TREAT``: local-scr; only ``HRESCH``,
``HOPERAT``, ``PUBHLTH``: national); when both are sent they must agree. The
authority comes from the ``opt-out-authority`` extension, default ``portal``.

``parse_withdrawal(body, stored)`` reads ``PUT /fhir/Consent/{id}``: the stored
Consent sent back with ``status`` inactive; the only other thing it may add is
an ``opt-out-withdrawal`` extension naming the withdrawal's authority.

Both raise ``ConsentError`` with a diagnostic naming the element at fault. No
diagnostic ever repeats the NHS number (or any other value that could carry it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from consent.model import Authority, OptOutKind
from consent.resource import ACT_REASON, AUTHORITY_SYSTEM, EXTENSION_BASE, KIND_SYSTEM, NHS_NUMBER
from mappings import nhs_number as nhs

SCOPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
KIND_URL: Final = f"{EXTENSION_BASE}/opt-out-kind"
AUTHORITY_URL: Final = f"{EXTENSION_BASE}/opt-out-authority"
WITHDRAWAL_URL: Final = f"{EXTENSION_BASE}/opt-out-withdrawal"

#: What an opt-out through the API was recorded on when the sender does not say.
DEFAULT_AUTHORITY: Final = Authority.PORTAL
#: Authorities the API accepts. ``gp-extract`` and ``national-opt-out-service`` are the gateway's own
#: imports: a client cannot claim them.
API_AUTHORITIES: Final = frozenset(
    {Authority.PATIENT_AT_GP, Authority.LETTER, Authority.PORTAL, Authority.TELEPHONE}
)
LOCAL_PURPOSES: Final = frozenset({"TREAT"})
NATIONAL_PURPOSES: Final = frozenset({"HRESCH", "HOPERAT", "PUBHLTH"})
#: Elements of a Consent a withdrawal may send differently from the stored one (set by the server).
_SERVER_SET: Final = frozenset({"meta", "text", "status"})
_ELEMENT: Final = re.compile(r"_?[a-z][A-Za-z]{0,39}")


class ConsentError(ValueError):
    """A Consent the API cannot act on. ``code`` is the OperationOutcome issue code.

    ``status`` is 400 for a Consent that is not a valid opt-out, 422 for a valid resource asking for
    a change this gateway does not make (anything but a withdrawal on ``PUT``).
    """

    def __init__(self, diagnostics: str, code: str = "invalid", status: int = 400) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class OptOutRequest:
    nhs_number: str
    kind: OptOutKind
    authority: Authority


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """``withdraw`` False: the Consent was sent back unchanged (still active, or already inactive)."""

    withdraw: bool
    authority: Authority


def parse_opt_out(body: Any) -> OptOutRequest:
    """The opt-out a ``POST /fhir/Consent`` body asks for; ``ConsentError`` when it is not one."""
    consent = _consent(body)
    if consent.get("status") != "active":
        raise ConsentError(
            "Consent.status must be active to record an opt-out (withdraw one with PUT, status inactive)"
        )
    if not _has_coding(consent.get("scope"), SCOPE_SYSTEM, "patient-privacy"):
        raise ConsentError(f"Consent.scope must be patient-privacy ({SCOPE_SYSTEM})")
    provision = consent.get("provision")
    if not isinstance(provision, Mapping) or provision.get("type") != "deny":
        raise ConsentError("Consent.provision.type must be deny: only opt-outs are recorded")
    number = patient_nhs_number(consent)
    kind = _kind(consent, provision)
    authority = _authority(_extension(consent, AUTHORITY_URL), "Consent.extension:opt-out-authority")
    return OptOutRequest(number, kind, authority or DEFAULT_AUTHORITY)


def parse_withdrawal(body: Any, stored: Mapping[str, Any]) -> Withdrawal:
    """What a ``PUT /fhir/Consent/{id}`` body asks of the ``stored`` Consent.

    Only ``status`` may change, and only from active to inactive; ``meta`` and ``text`` are ignored;
    an ``opt-out-withdrawal`` extension may carry ``authority`` (default ``portal``).
    """
    consent = _consent(body)
    if consent.get("id") != stored.get("id"):
        raise ConsentError("Consent.id is required and must match the id in the URL")
    status = consent.get("status")
    if status not in ("active", "inactive"):
        raise ConsentError(
            "Consent.status: an opt-out is withdrawn with status inactive; other statuses are not supported",
            code="not-supported",
            status=422,
        )
    changed = _first_difference(_comparable(consent), _comparable(stored))
    if changed is not None:
        raise ConsentError(
            f"Consent.{changed} differs from the stored Consent: only status may change "
            "(active to inactive, a withdrawal)",
            code="not-supported",
            status=422,
        )
    if stored.get("status") == "inactive" and status == "active":
        raise ConsentError(
            "a withdrawn opt-out cannot be made active again: POST a new Consent",
            code="not-supported",
            status=422,
        )
    if not (status == "inactive" and stored.get("status") == "active"):
        return Withdrawal(False, DEFAULT_AUTHORITY)
    authority = None
    sent = _extension(consent, WITHDRAWAL_URL)
    if sent is not None:
        where = "Consent.extension:opt-out-withdrawal.authority"
        authority = _authority(_extension(sent, "authority"), where)
    return Withdrawal(True, authority or DEFAULT_AUTHORITY)


def patient_nhs_number(consent: Mapping[str, Any]) -> str:
    """The normalised NHS number of ``Consent.patient.identifier``; ``ConsentError`` naming the problem."""
    patient = consent.get("patient")
    ident = patient.get("identifier") if isinstance(patient, Mapping) else None
    if not isinstance(ident, Mapping) or ident.get("system") != NHS_NUMBER:
        raise ConsentError(f"Consent.patient.identifier with system {NHS_NUMBER} is required")
    value = ident.get("value")
    try:
        return nhs.normalise(value if isinstance(value, str) else None)
    except nhs.NhsNumberError as exc:
        raise ConsentError(
            f"Consent.patient.identifier.value is not a valid NHS number ({exc.code})"
        ) from None


def _consent(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping) or body.get("resourceType") != "Consent":
        raise ConsentError("the body must be a FHIR Consent resource (resourceType Consent)")
    return body


def _kind(consent: Mapping[str, Any], provision: Mapping[str, Any]) -> OptOutKind:
    declared: OptOutKind | None = None
    ext = _extension(consent, KIND_URL)
    if ext is not None:
        code = _code(ext, KIND_SYSTEM)
        try:
            declared = OptOutKind(code or "")
        except ValueError:
            raise ConsentError(
                f"Consent.extension:opt-out-kind must be local-scr or national ({KIND_SYSTEM})"
            ) from None
    inferred = _kind_of_purposes(provision.get("purpose"))
    if declared is not None and inferred is not None and declared is not inferred:
        raise ConsentError(
            f"Consent.extension:opt-out-kind {declared.value} contradicts provision.purpose "
            f"(which reads as {inferred.value})"
        )
    kind = declared or inferred
    if kind is None:
        raise ConsentError(
            "the opt-out kind is required: the opt-out-kind extension, or provision.purpose "
            "(TREAT: local-scr; HRESCH, HOPERAT, PUBHLTH: national)"
        )
    return kind


def _kind_of_purposes(purposes: Any) -> OptOutKind | None:
    """TREAT anywhere: local-scr (it denies every purpose, so it covers the others); else national."""
    if purposes is None:
        return None
    if not isinstance(purposes, list) or not purposes:
        raise ConsentError("Consent.provision.purpose must be a list of Codings")
    codes: set[str] = set()
    for coding in purposes:
        if not isinstance(coding, Mapping) or coding.get("system") != ACT_REASON:
            raise ConsentError(f"Consent.provision.purpose: every purpose must be coded in {ACT_REASON}")
        code = coding.get("code")
        if not isinstance(code, str) or code not in LOCAL_PURPOSES | NATIONAL_PURPOSES:
            raise ConsentError(
                "Consent.provision.purpose: only TREAT, HRESCH, HOPERAT and PUBHLTH are recorded as opt-outs"
            )
        codes.add(code)
    return OptOutKind.LOCAL if codes & LOCAL_PURPOSES else OptOutKind.NATIONAL


def _authority(ext: Mapping[str, Any] | None, where: str) -> Authority | None:
    if ext is None:
        return None
    code = _code(ext, AUTHORITY_SYSTEM)
    try:
        authority = Authority(code or "")
    except ValueError:
        allowed = ", ".join(sorted(a.value for a in API_AUTHORITIES))
        raise ConsentError(f"{where} must be one of {allowed} ({AUTHORITY_SYSTEM})") from None
    if authority not in API_AUTHORITIES:
        raise ConsentError(f"{where}: {authority.value} is set by the gateway's own imports, not the API")
    return authority


def _extension(element: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    found = [e for e in element.get("extension") or () if isinstance(e, Mapping) and e.get("url") == url]
    if len(found) > 1:
        name = url.rsplit("/", 1)[-1]
        raise ConsentError(f"extension {name} is repeated; send it once")
    return found[0] if found else None


def _code(ext: Mapping[str, Any], system: str) -> str | None:
    """The code of an extension's ``valueCoding`` (in ``system``, or with no system) or ``valueCode``."""
    coding = ext.get("valueCoding")
    if isinstance(coding, Mapping) and coding.get("system") in (system, None):
        code = coding.get("code")
        return code if isinstance(code, str) else None
    value = ext.get("valueCode")
    return value if isinstance(value, str) else None


def _has_coding(concept: Any, system: str, code: str) -> bool:
    if not isinstance(concept, Mapping):
        return False
    return any(
        isinstance(c, Mapping) and c.get("system") == system and c.get("code") == code
        for c in concept.get("coding") or ()
    )


def _comparable(consent: Mapping[str, Any]) -> dict[str, Any]:
    """The Consent without what the server sets, and without a withdrawal extension (server-set too)."""
    out = {k: v for k, v in consent.items() if k not in _SERVER_SET}
    if isinstance(out.get("extension"), list):
        kept = [
            e for e in out["extension"] if not (isinstance(e, Mapping) and e.get("url") == WITHDRAWAL_URL)
        ]
        if kept:
            out["extension"] = kept
        else:
            del out["extension"]
    # provision.period.end is set by the server when an opt-out is withdrawn.
    provision = out.get("provision")
    if isinstance(provision, Mapping) and isinstance(provision.get("period"), Mapping):
        period = {k: v for k, v in provision["period"].items() if k != "end"}
        out["provision"] = {**provision, "period": period}
    return out


def _first_difference(sent: Mapping[str, Any], stored: Mapping[str, Any]) -> str | None:
    """The first top-level element (sorted by name) that differs; None when they are the same.

    A name that is not a FHIR element name is not repeated (a key is client text: it could be anything).
    """
    for name in sorted(set(sent) | set(stored), key=str):
        if sent.get(name) != stored.get(name):
            return name if isinstance(name, str) and _ELEMENT.fullmatch(name) else "(an unknown element)"
    return None
