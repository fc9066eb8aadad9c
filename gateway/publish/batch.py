"""What the deliveries of one claim share: the store read and written once per claim, not per person.

- ``ClaimDecider``: the consent register read from the store for every person in a
  claim in one query, just after the claim committed, and decided with the same
  pure rules as every other decider. It is not a cache: it lives for one claim, it
  is read after the outbox rows it answers for were committed (a consent change
  commits its outbox row with it, so the facts read include that change), and a
  change committed after the read writes a row of its own, delivered after this
  one (the person stays leased meanwhile).
- ``PersonLoader``: the disclosure function's loader. It is still called per person
  and only after a permit; the calls made while the event loop runs one round
  are read in one query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from consent.decide import decide
from consent.model import Decision, Facts, Requester
from gateway.store.consents import read_facts_many
from gateway.store.schema import resources

log = logging.getLogger(__name__)

Loaded = list[tuple[str, str, bytes]]


class ClaimDecider:
    """Decisions for one claim's people from the register as the store holds it after the claim."""

    def __init__(self, facts: Mapping[str, Facts] | None) -> None:
        self.facts = facts

    @classmethod
    async def read(cls, engine: AsyncEngine, numbers: Iterable[str]) -> ClaimDecider:
        """Read everyone's facts in one query; an unreadable register denies everyone (facts unavailable)."""
        try:
            async with engine.connect() as conn:
                return cls(await read_facts_many(conn, numbers))
        except Exception:  # noqa: BLE001 - whatever stops the read, the answer is "facts unavailable": deny
            log.warning("consent facts could not be read from the store; denying")
            return cls(None)

    async def decide(self, nhs_number: str, purpose: str, requester: Requester) -> Decision:
        # A person the read did not cover gets no facts: deny, never a guess.
        facts = None if self.facts is None else self.facts.get(nhs_number)
        return decide(facts, nhs_number, purpose, requester)

    async def changed(self, epochs: Mapping[str, int]) -> bool:
        return True  # nothing outlives the claim, so there is nothing to tell

    async def close(self) -> None:
        return None


class PersonLoader:
    """``load(nhs_number)`` for the disclosure function; concurrent calls share one read."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._waiting: dict[str, list[asyncio.Future[Loaded]]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def load(self, nhs_number: str) -> Loaded:
        """One person's shared view as stored: the Patient first, then by type and id."""
        done: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(nhs_number, []).append(done)
        if self._flush is None:
            # Runs once every delivery already scheduled this round has asked: they share the read.
            self._flush = asyncio.get_running_loop().create_task(self._read())
        return await done

    async def _read(self) -> None:
        waiting, self._waiting, self._flush = self._waiting, {}, None
        try:
            found: dict[str, Loaded] = {n: [] for n in waiting}
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    select(
                        resources.c.nhs_number, resources.c.resource_type, resources.c.id, resources.c.content
                    )
                    .where(resources.c.nhs_number.in_(sorted(waiting)))
                    .order_by(
                        resources.c.nhs_number,
                        resources.c.resource_type != "Patient",
                        resources.c.resource_type,
                        resources.c.id,
                    )
                )
                for number, rtype, rid, content in rows:
                    found[number].append((rtype, rid, content.encode()))
        except Exception as exc:  # noqa: BLE001 - handed to every waiting delivery, not swallowed
            for futures in waiting.values():
                for done in futures:
                    if not done.done():
                        done.set_exception(exc)
            return
        for number, futures in waiting.items():
            for done in futures:
                if not done.done():
                    done.set_result(list(found[number]))
