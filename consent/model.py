"""The consent domain: purposes, requesters, opt-outs and decisions. Plain values, no I/O.

A person's *facts* are what the register holds for them (their opt-outs, active
or withdrawn, and the register's epoch for them). A *request* is who asks, for
what purpose. ``consent.decide.decide`` turns the two into a ``Decision``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class Purpose(StrEnum):
    """Why data would leave. Direct care is one purpose; the rest are secondary uses."""

    DIRECT_CARE = "direct-care"
    PLANNING = "planning"
    COMMISSIONING = "commissioning"
    RESEARCH = "research"

    @property
    def secondary(self) -> bool:
        return self is not Purpose.DIRECT_CARE


class RequesterKind(StrEnum):
    """Who is asking, as the decision sees them (the API maps client roles onto these)."""

    #: Another organisation's clinical system reading for the care it gives (a community EPR).
    PROVIDER = "provider"
    #: The regional Health Information Exchange, receiving publications.
    HIE = "hie"
    #: A system that sends records to concord (social care) reading what it sent and what is shared.
    SOURCE = "source"
    #: Commissioners, planners and approved researchers: secondary uses only.
    ANALYST = "analyst"
    #: The Information Governance board: reads the log and register, never a care record.
    IG_AUDITOR = "ig-auditor"
    #: The gateway's own operators at the command line (view, export).
    OPERATOR = "operator"


class OptOutKind(StrEnum):
    #: The borough's shared-care-record opt-out: no sharing through concord for direct care.
    LOCAL = "local-scr"
    #: The national data opt-out (and GP Type 1 dissent): secondary uses only.
    NATIONAL = "national"


class Authority(StrEnum):
    """On whose say-so an opt-out or withdrawal was recorded."""

    PATIENT_AT_GP = "patient-request-at-gp"
    LETTER = "letter"
    PORTAL = "portal"
    TELEPHONE = "telephone"
    GP_EXTRACT = "gp-extract"
    NATIONAL_SERVICE = "national-opt-out-service"


class Verdict(StrEnum):
    PERMIT = "permit"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Requester:
    """The party data would go to: an organisation (ODS code), the client acting for it, its kind."""

    kind: RequesterKind
    ods_code: str
    client_id: str

    @property
    def label(self) -> str:
        return f"{self.kind.value}:{self.ods_code}:{self.client_id}"


@dataclass(frozen=True, slots=True)
class OptOut:
    """One opt-out as the register holds it. ``withdrawn_at`` set: no longer in force."""

    id: str
    nhs_number: str
    kind: OptOutKind
    authority: Authority
    recorded_by: str
    recorded_by_ods: str
    recorded_at: datetime
    source: str
    withdrawn_at: datetime | None = None
    withdrawn_by: str | None = None
    withdrawal_authority: Authority | None = None
    #: The GP practice and code it came from, when the GP extract recorded it.
    source_ref: str | None = None

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None

    def withdrawn(self, when: datetime, by: str, authority: Authority) -> OptOut:
        """This opt-out, withdrawn."""
        return replace(self, withdrawn_at=when, withdrawn_by=by, withdrawal_authority=authority)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the register knows about one person, read in one go.

    ``epoch`` rises with every consent change for the person; cached decisions
    carry the epoch they were made at and are trusted only while it is current.
    """

    nhs_number: str
    opt_outs: tuple[OptOut, ...] = ()
    epoch: int = 0

    def active(self, kind: OptOutKind) -> OptOut | None:
        """The earliest opt-out of ``kind`` still in force, if any (stable across calls)."""
        found = [o for o in self.opt_outs if o.active and o.kind is kind]
        return min(found, key=lambda o: (o.recorded_at, o.id)) if found else None


class Reason(StrEnum):
    """Stable codes for why a decision went the way it did (in the log and in docs/consent.md)."""

    NO_OBJECTION = "no-objection"
    LOCAL_OPT_OUT = "local-opt-out"
    NATIONAL_OPT_OUT = "national-opt-out"
    REQUESTER_NOT_PERMITTED = "requester-not-permitted-for-purpose"
    UNKNOWN_PURPOSE = "unknown-purpose"
    INVALID_NHS_NUMBER = "invalid-nhs-number"
    FACTS_UNAVAILABLE = "facts-unavailable"
    FACTS_MISMATCH = "facts-for-another-person"
    ERROR = "decision-error"
    #: Not a rule's: the request named no one concord holds (a read of an unknown id), so nothing
    #: was decided about anyone; logged so that it costs what a withheld answer costs.
    NO_PERSON = "no-person"


@dataclass(frozen=True, slots=True)
class Decision:
    """Immutable outcome: permit or deny, why, and the Consent (opt-out id) that caused a deny."""

    verdict: Verdict
    reason: Reason
    purpose: str
    epoch: int = 0
    consent_id: str | None = None

    @property
    def permitted(self) -> bool:
        return self.verdict is Verdict.PERMIT
