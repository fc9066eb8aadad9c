"""The outbox as publishers use it: claim rows, lease people, finish, retry later, dead-letter.

Every resource change and consent change wrote an outbox row in its own
transaction; a row says "this person's shared view changed". Publishers claim
rows (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so several publishers never wait
for each other), group them by person, and take a lease on each person so
that one publisher at a time talks to the HIE about that person. A claim or a
lease left by a crashed publisher lapses after ``publish_lease_seconds``.

Every step works on many people at once (a claim's worth, or the finishes of
concurrent deliveries), so a statement's cost is shared, not paid per person.
Delivered rows are pruned after a while (``prune_sent``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Select, and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.dialect import upsert
from gateway.store.schema import dead_letters, hie_people, outbox, resources


@dataclass(frozen=True, slots=True)
class PersonState:
    nhs_number: str
    state: str
    published: list[str]
    delivery_id: str | None
    attempts: int


def _claimable(now: datetime) -> Any:
    """Due rows. Each arm names one unsent status, so PostgreSQL reads them through the partial
    index ``ix_outbox_unsent`` in id order, never walking the delivered rows before them."""
    return or_(
        and_(
            outbox.c.status == "pending", or_(outbox.c.available_at.is_(None), outbox.c.available_at <= now)
        ),
        and_(outbox.c.status == "claimed", outbox.c.claimed_until < now),
    )


def claim_candidates(now: datetime, limit: int, skip_people: Collection[str] = ()) -> Select[tuple[int]]:
    """The ids a claim takes: due rows, oldest first (read through ``ix_outbox_unsent``)."""
    due = _claimable(now)
    if skip_people:
        due = and_(due, or_(outbox.c.nhs_number.is_(None), outbox.c.nhs_number.not_in(sorted(skip_people))))
    return select(outbox.c.id).where(due).order_by(outbox.c.id).limit(limit)


async def claim(
    conn: AsyncConnection,
    owner: str,
    now: datetime,
    until: datetime,
    limit: int,
    skip_people: Collection[str] = (),
) -> dict[str, list[int]]:
    """Claim up to ``limit`` rows that are due; their ids by person (rows with no person are closed).

    Rows of ``skip_people`` (those this publisher is delivering now) stay where they are.
    """
    candidates = claim_candidates(now, limit, skip_people)
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    rows = (
        await conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(candidates.scalar_subquery()))
            .values(status="claimed", claimed_by=owner, claimed_until=until)
            .returning(outbox.c.id, outbox.c.nhs_number)
        )
    ).all()
    by_person: dict[str, list[int]] = {}
    orphans = []
    for rid, number in rows:
        if number is None:
            orphans.append(rid)
        else:
            by_person.setdefault(number, []).append(rid)
    if orphans:
        await conn.execute(update(outbox).where(outbox.c.id.in_(orphans)).values(status="sent", sent_at=now))
    return by_person


async def lease_people(
    conn: AsyncConnection,
    numbers: Iterable[str],
    owner: str,
    now: datetime,
    until: datetime,
    new_delivery_ids: Mapping[str, str],
) -> dict[str, PersonState]:
    """Take these people for this publisher, except those another holds a live lease on.

    One statement leases them all and gives each a delivery id (kept from an earlier attempt
    of the same delivery, else the one from ``new_delivery_ids``); it answers with each leased
    person's state. People are locked in NHS number order, the same for every publisher, and
    on PostgreSQL a person another publisher is leasing at this moment is skipped, not waited for.
    """
    wanted = sorted(set(numbers))
    if not wanted:
        return {}
    await conn.execute(
        upsert(conn, hie_people, ["nhs_number"], []),
        [{"nhs_number": n, "state": "none", "published": "[]", "attempts": 0} for n in wanted],
    )
    free = or_(
        hie_people.c.lease_until.is_(None), hie_people.c.lease_until < now, hie_people.c.lease_owner == owner
    )
    candidates = (
        select(hie_people.c.nhs_number)
        .where(hie_people.c.nhs_number.in_(wanted), free)
        .order_by(hie_people.c.nhs_number)
    )
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    new_id = case({n: new_delivery_ids[n] for n in wanted}, value=hie_people.c.nhs_number)
    rows = await conn.execute(
        update(hie_people)
        .where(hie_people.c.nhs_number.in_(candidates.scalar_subquery()), free)
        .values(
            lease_owner=owner, lease_until=until, delivery_id=func.coalesce(hie_people.c.delivery_id, new_id)
        )
        .returning(
            hie_people.c.nhs_number,
            hie_people.c.state,
            hie_people.c.published,
            hie_people.c.delivery_id,
            hie_people.c.attempts,
        )
    )
    return {
        number: PersonState(number, state, orjson.loads(published), delivery_id, attempts)
        for number, state, published, delivery_id, attempts in rows
    }


async def claim_rest(
    conn: AsyncConnection, numbers: Iterable[str], owner: str, now: datetime, until: datetime
) -> dict[str, list[int]]:
    """Once people are leased, take all their due rows too: one delivery covers every change so far."""
    wanted = sorted(set(numbers))
    if not wanted:
        return {}
    candidates = select(outbox.c.id).where(outbox.c.nhs_number.in_(wanted), _claimable(now))
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    rows = await conn.execute(
        update(outbox)
        .where(outbox.c.id.in_(candidates.scalar_subquery()))
        .values(status="claimed", claimed_by=owner, claimed_until=until)
        .returning(outbox.c.id, outbox.c.nhs_number)
    )
    by_person: dict[str, list[int]] = {}
    for rid, number in rows:
        by_person.setdefault(number, []).append(rid)
    return by_person


async def release_people(
    conn: AsyncConnection, numbers: Sequence[str], ids: Sequence[int], owner: str
) -> None:
    """Give back people this publisher leased but did not send to, and their rows, due at once."""
    await release_rows(conn, ids, None)
    await conn.execute(
        update(hie_people)
        .where(hie_people.c.nhs_number.in_(list(numbers)), hie_people.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )


async def release_rows(conn: AsyncConnection, ids: Sequence[int], available_at: datetime | None) -> None:
    await conn.execute(
        update(outbox)
        .where(outbox.c.id.in_(list(ids)))
        .values(status="pending", claimed_by=None, claimed_until=None, available_at=available_at)
    )


@dataclass(frozen=True, slots=True)
class Finished:
    """A delivery the HIE took: the person's rows, and what the HIE now holds for them."""

    nhs_number: str
    ids: Sequence[int]
    state: str
    published: list[str]


async def finish(conn: AsyncConnection, done: Sequence[Finished], now: datetime) -> None:
    """The HIE took these deliveries: close their rows, remember what it holds, release the people.

    Two statements however many deliveries: one UPDATE of the rows, one executemany of the people.
    """
    if not done:
        return
    ids = [rid for d in done for rid in d.ids]
    for start in range(0, len(ids), 500):
        await conn.execute(
            update(outbox).where(outbox.c.id.in_(ids[start : start + 500])).values(status="sent", sent_at=now)
        )
    await conn.execute(
        update(hie_people)
        .where(hie_people.c.nhs_number == bindparam("person"))
        .values(
            state=bindparam("new_state"),
            published=bindparam("held"),
            delivery_id=None,
            attempts=0,
            last_error=None,
            lease_owner=None,
            lease_until=None,
            changed_at=now,
        ),
        [
            {"person": d.nhs_number, "new_state": d.state, "held": orjson.dumps(d.published).decode()}
            for d in done
        ],
    )


async def prune_sent(conn: AsyncConnection, before: datetime) -> int:
    """Delete rows delivered before ``before``: they are done with (dead and waiting rows stay)."""
    result = await conn.execute(delete(outbox).where(outbox.c.status == "sent", outbox.c.sent_at < before))
    return int(result.rowcount or 0)


async def retry_later(
    conn: AsyncConnection,
    nhs_number: str,
    ids: Sequence[int],
    at: datetime,
    error: str,
    published: Sequence[str] | None = None,
) -> None:
    """Not this time: the rows wait until ``at``; the delivery keeps its id for the retry.

    ``published``: what the HIE may hold for the person now (what it confirmed, and what an
    unanswered request may have applied), when that grew.
    """
    held = {} if published is None else {"published": orjson.dumps(list(published)).decode()}
    await conn.execute(
        update(outbox)
        .where(outbox.c.id.in_(list(ids)))
        .values(
            status="pending",
            claimed_by=None,
            claimed_until=None,
            available_at=at,
            attempts=outbox.c.attempts + 1,
        )
    )
    await conn.execute(
        update(hie_people)
        .where(hie_people.c.nhs_number == nhs_number)
        .values(
            attempts=hie_people.c.attempts + 1,
            last_error=error[:255],
            lease_owner=None,
            lease_until=None,
            **held,
        )
    )


async def dead_letter(
    conn: AsyncConnection,
    nhs_number: str,
    ids: Sequence[int],
    delivery_id: str,
    status_code: int,
    outcome: str,
    now: datetime,
    published: Sequence[str] | None = None,
) -> None:
    """The HIE refused for good: keep its reason; later changes to the person are delivered afresh.

    ``published``: what the HIE may hold for the person now, when that grew (an answer that does
    not say the request failed as a whole: what it carried may have been applied).
    """
    held = {} if published is None else {"published": orjson.dumps(list(published)).decode()}
    await conn.execute(update(outbox).where(outbox.c.id.in_(list(ids))).values(status="dead", sent_at=now))
    await conn.execute(
        insert(dead_letters).values(
            nhs_number=nhs_number,
            delivery_id=delivery_id,
            status_code=status_code,
            outcome=outcome,
            created_at=now,
        )
    )
    await conn.execute(
        update(hie_people)
        .where(hie_people.c.nhs_number == nhs_number)
        .values(
            delivery_id=None,
            attempts=0,
            last_error=f"dead letter: HTTP {status_code}",
            lease_owner=None,
            lease_until=None,
            **held,
        )
    )


async def enqueue_person(
    conn: AsyncConnection, nhs_numbers: Sequence[str], now: datetime, reason: str
) -> None:
    """Queue a delivery of these people's current views (a backfill, or a dead letter's retry)."""
    if nhs_numbers:
        await conn.execute(
            outbox.insert(),
            [
                {
                    "nhs_number": n,
                    "resource_type": "Person",
                    "resource_id": reason,
                    "version_id": 0,
                    "created_at": now,
                }
                for n in nhs_numbers
            ],
        )


async def people_after(conn: AsyncConnection, after: str, limit: int) -> list[str]:
    """NHS numbers holding a shared Patient, in order, after ``after`` (a resumable backfill's cursor)."""
    rows = await conn.execute(
        select(resources.c.nhs_number)
        .where(resources.c.resource_type == "Patient", resources.c.nhs_number > after)
        .order_by(resources.c.nhs_number)
        .limit(limit)
    )
    return [r[0] for r in rows]


async def due_or_waiting(conn: AsyncConnection) -> int:
    """Rows still to send, now or after a backoff (dead letters are not counted)."""
    value = (
        await conn.execute(select(func.count()).where(outbox.c.status.in_(("pending", "claimed"))))
    ).scalar()
    return int(value or 0)


async def summary(conn: AsyncConnection) -> dict[str, Any]:
    by_status: dict[str, int] = dict(
        (await conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))).all()
    )
    by_state: dict[str, int] = dict(
        (await conn.execute(select(hie_people.c.state, func.count()).group_by(hie_people.c.state))).all()
    )
    oldest = (
        await conn.execute(
            select(func.min(outbox.c.created_at)).where(outbox.c.status.in_(("pending", "claimed")))
        )
    ).scalar()
    open_dead = (
        await conn.execute(select(func.count()).where(dead_letters.c.resolved_at.is_(None)))
    ).scalar()
    return {
        "outbox": {k: int(v) for k, v in by_status.items()},
        "people_at_hie": {k: int(v) for k, v in by_state.items()},
        "oldest_waiting": oldest.isoformat() if oldest else None,
        "dead_letters_open": int(open_dead or 0),
    }


async def open_dead_letters(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(dead_letters)
        .where(dead_letters.c.resolved_at.is_(None))
        .order_by(dead_letters.c.id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


async def resolve_dead_letter(conn: AsyncConnection, letter_id: int, now: datetime) -> str | None:
    """Close a dead letter and queue its person again; the NHS number, or None if there was none open."""
    row = (
        await conn.execute(
            select(dead_letters.c.nhs_number).where(
                dead_letters.c.id == letter_id, dead_letters.c.resolved_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    await conn.execute(update(dead_letters).where(dead_letters.c.id == letter_id).values(resolved_at=now))
    await enqueue_person(conn, [row[0]], now, "retry")
    return str(row[0])
