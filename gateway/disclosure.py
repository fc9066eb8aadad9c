"""The one way patient data leaves concord: decide, log, then release.

Every outbound path (the command line's view and export, the API, the HIE
publisher) asks here, and nothing else reads care records for sending. For
each person it:

1. asks the decider (cached; deny when the register cannot be read),
2. loads the person's resources only when permitted,
3. appends the decision to the log (permit or deny, what was returned or
   withheld, by reference only) and
4. only then hands the data back. When the log cannot be written nothing is
   released: ``DisclosureUnavailable``.

``bulk`` screens many people at once for exports: one snapshot of the register,
the same pure decision per person, one log entry per person before the export
is released.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from consent.chain import Entry, Kind, detail, timestamp
from consent.decide import decide
from consent.model import Decision, Facts, Reason, Requester, Verdict
from gateway.decisions import Decider
from gateway.store.consents import people_with_opt_outs
from gateway.store.hot_reads import EngineReads, HotReads

log = logging.getLogger(__name__)

Loaded = list[tuple[str, str, bytes]]


#: A number no person has (it fails the check digit rule): what ``nobody`` decides and reads for.
NO_ONE: Final = "0000000001"


class Appender(Protocol):
    """Where decisions are logged: the ``AuditLog`` itself, or a ``BatchedAppender`` in a server."""

    async def append(self, entries: Sequence[Entry]) -> Any: ...


class DisclosureUnavailable(RuntimeError):
    """The decision could not be logged, so nothing may be released (the API answers 503)."""


@dataclass(frozen=True, slots=True)
class Ask:
    """Who wants data, why, through which action, under which request id."""

    requester: Requester
    purpose: str
    action: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Disclosed:
    decision: Decision
    resources: Loaded

    @property
    def permitted(self) -> bool:
        return self.decision.permitted


def utcnow() -> datetime:
    return datetime.now(UTC)


class Underway:
    """A count of the disclosures between their start and the log (``with`` it around that part)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *_: object) -> None:
        self.count -= 1


class Disclosure:
    def __init__(
        self,
        engine: AsyncEngine,
        decider: Decider,
        log: Appender,
        clock: Callable[[], datetime] = utcnow,
        reads: HotReads | None = None,
    ) -> None:
        self.engine = engine  # reads only (the register): ``store.database.reader``
        self.decider = decider
        self.log = log
        self.clock = clock
        #: A withheld person's refs are read here (``store.hot_reads``; through the engine if not given).
        self.reads = reads if reads is not None else EngineReads(engine)
        #: Disclosures deciding or loading, not yet at the log: a batching log waits for them.
        self.underway = Underway()

    async def person(self, ask: Ask, nhs_number: str, load: Callable[[str], Awaitable[Loaded]]) -> Disclosed:
        """One person's data for ``ask``: the decision, and ``load(nhs_number)``'s result if permitted.

        ``load`` is called only after a permit. Raises ``DisclosureUnavailable`` if the log
        cannot be written (and then returns nothing).
        """
        with self.underway:
            decision = await self.decider.decide(nhs_number, ask.purpose, ask.requester)
            loaded: Loaded = []
            if decision.permitted:
                loaded = await load(nhs_number)
                what = detail(returned=[f"{t}/{i}" for t, i, _ in loaded])
            else:
                what = detail(withheld=await self._withheld(nhs_number))
        await self._append([self._entry(ask, nhs_number, decision, what)])
        return Disclosed(decision, loaded)

    async def nobody(self, ask: Ask) -> None:
        """Log a request that names no one concord holds (an unknown id): nothing is disclosed.

        A deny with reason ``no-person`` and no NHS number, after the steps a withheld answer takes
        (a decision and a read of the refs withheld, for ``NO_ONE``), so that the time an answer
        takes does not tell "not held" from "opted out". Raises ``DisclosureUnavailable`` as
        ``person`` does.
        """
        # The steps a withheld answer takes (a decision, the refs withheld), for a number no one has.
        with self.underway:
            await self.decider.decide(NO_ONE, ask.purpose, ask.requester)
            await self._withheld(NO_ONE)
        decision = Decision(Verdict.DENY, Reason.NO_PERSON, ask.purpose)
        await self._append([self._entry(ask, None, decision, detail(withheld=[]))])

    async def _withheld(self, nhs_number: str) -> list[str]:
        try:
            return await self.reads.refs(nhs_number)
        except Exception:  # noqa: BLE001 - the deny stands; only its detail is lost
            return []

    async def _append(self, entries: list[Entry]) -> None:
        try:
            await self.log.append(entries)
        except Exception as exc:
            log.error("the audit log could not be written; withholding the disclosure")
            raise DisclosureUnavailable("the audit log could not be written") from exc

    def _entry(self, ask: Ask, nhs_number: str | None, decision: Decision, what: str) -> Entry:
        return Entry(
            at=timestamp(self.clock()),
            kind=Kind.DISCLOSURE,
            action=ask.action,
            request_id=ask.request_id,
            requester_kind=ask.requester.kind.value,
            org_ods=ask.requester.ods_code,
            client_id=ask.requester.client_id,
            nhs_number=nhs_number,
            purpose=decision.purpose,
            decision=decision.verdict.value,
            reason=decision.reason.value,
            consent_id=decision.consent_id,
            detail=what,
        )

    async def bulk(self, ask: Ask) -> BulkScreen:
        """A screen for an export: the register read once now, the same rules per person."""
        try:
            async with self.engine.connect() as conn:
                facts: Mapping[str, Facts] | None = await people_with_opt_outs(conn)
        except Exception:  # noqa: BLE001 - an unreadable register denies everyone
            log.warning("consent register unreadable; the export will withhold everyone")
            facts = None
        return BulkScreen(self, ask, facts)


@dataclass(slots=True)
class BulkScreen:
    """Decides per person during an export and logs every decision before the export is released."""

    disclosure: Disclosure
    ask: Ask
    facts: Mapping[str, Facts] | None
    decisions: dict[str, Decision] = field(default_factory=dict)
    returned: dict[str, Counter[str]] = field(default_factory=dict)
    withheld: dict[str, Counter[str]] = field(default_factory=dict)
    unattributed: int = 0

    def allows(self, nhs_number: str | None, resource_type: str) -> bool:
        """Whether this resource may go into the export; counts it either way."""
        if nhs_number is None:
            self.unattributed += 1  # a resource we cannot tie to a person cannot be screened: withheld
            return False
        decision = self.decisions.get(nhs_number)
        if decision is None:
            if self.facts is None:
                decision = Decision(Verdict.DENY, Reason.FACTS_UNAVAILABLE, self.ask.purpose)
            else:
                found = self.facts.get(nhs_number) or Facts(nhs_number)
                decision = decide(found, nhs_number, self.ask.purpose, self.ask.requester)
            self.decisions[nhs_number] = decision
        tally = self.returned if decision.permitted else self.withheld
        tally.setdefault(nhs_number, Counter())[resource_type] += 1
        return decision.permitted

    async def commit(self, batch: int = 5000) -> None:
        """Log one entry per person screened. Call before releasing the export; raises if it cannot."""
        entries: list[Entry] = []
        for number, decision in self.decisions.items():
            counts = self.returned.get(number) if decision.permitted else self.withheld.get(number)
            key = "returned" if decision.permitted else "withheld"
            entries.append(
                self.disclosure._entry(
                    self.ask, number, decision, detail(**{key: dict(sorted((counts or {}).items()))})
                )
            )
            if len(entries) >= batch:
                await self.disclosure._append(entries)
                entries = []
        if entries:
            await self.disclosure._append(entries)
