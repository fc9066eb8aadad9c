"""The reads behind every API search, run at the driver: statements compiled once, no engine per call.

A search answers from one or two indexed reads, and a consent decision that is not cached from
one more. Through SQLAlchemy's async engine each read costs far more than the database spends on
it: a pool checkout, a greenlet switch, statement caching, and on SQLite two thread handoffs to
aiosqlite's worker (measured: most of a search's 2.6 ms of CPU, bench/RESULTS.md). These readers
run the same statements, defined here with SQLAlchemy and compiled once for the store's dialect,
straight on a driver connection, and convert what comes back with the column types' own result
processors (a SQLite ``DateTime`` arrives as text and leaves as a ``datetime``):

- ``SqliteReads``: a read-only ``sqlite3`` connection of this process, used on the event loop's
  thread. WAL mode means a reader never waits for the writer, and an indexed read takes a few
  microseconds, far less than one handoff to a worker thread.
- ``PostgresReads``: an asyncpg pool of its own (``CONCORD_SEARCH_POOL_SIZE`` connections, made by
  ``open`` as a serving process starts and otherwise on first use, so commands that never search
  open none), asyncpg preparing each statement once per connection, and no reset round trip
  when a connection goes back to the pool.
- ``EngineReads``: the same statements through the engine, for a store the others cannot open
  (an in-memory SQLite database lives inside the engine's one connection).

These statements are the one definition of the searches: ``store.search`` keeps only the reads
the FHIR routes make by id, and ``tests/integration/test_search_plans.py`` checks these plans.

Content reads (``patient``, ``careplans``) are made, like every content read, only from a loader
handed to ``Disclosure.person`` after a permit; ``owner``, ``refs`` and ``facts`` read no content.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy import Integer, String, any_, bindparam, func, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select

from consent.model import Facts
from gateway.group_commit import GroupCommit
from gateway.settings import Settings
from gateway.store.consents import facts_from_rows
from gateway.store.database import asyncpg_target
from gateway.store.schema import consents, resources

#: One search match: resource type, id, the stored JSON.
Found = tuple[str, str, bytes]

#: How long a SQLite read waits on a lock (WAL readers wait only while a crashed writer's WAL is
#: recovered); beyond it the read fails like any other store outage (503).
SQLITE_BUSY_MS: Final = 2000


class HotReads(Protocol):
    async def owner(self, resource_type: str, rid: str) -> str | None:
        """The NHS number a current resource belongs to (no content read)."""
        ...

    async def facts(self, nhs_number: str) -> Facts:
        """Everything the opt-out register holds for one person (``store.consents.read_facts``)."""
        ...

    async def refs(self, nhs_number: str) -> list[str]:
        """``Type/id/_history/version`` of the person's current resources (no content read)."""
        ...

    async def patient(self, nhs_number: str) -> list[Found]:
        """The person's shared Patient (none or one)."""
        ...

    async def careplans(
        self, nhs_number: str, statuses: Collection[str], offset: int, limit: int
    ) -> tuple[int, list[Found]]:
        """(total, a page) of the person's CarePlans, optionally only those in ``statuses``."""
        ...

    async def open(self) -> None:
        """Connect and prepare now rather than on first use (a server does, before its first request)."""
        ...

    async def close(self) -> None: ...


_C = resources.c
_FOUND = (_C.resource_type, _C.id, _C.content)


def _owner_statement() -> Select[Any]:
    return select(_C.nhs_number).where(
        _C.resource_type == bindparam("resource_type"), _C.id == bindparam("rid")
    )


def _refs_statement() -> Select[Any]:
    """References (``Type/id/_history/version``) of a person's current resources, without content."""
    return (
        select(_C.resource_type, _C.id, _C.version_id)
        .where(_C.nhs_number == bindparam("nhs_number"))
        .order_by(_C.resource_type, _C.id)
    )


def _facts_statement() -> Select[Any]:
    return select(consents).where(consents.c.nhs_number == bindparam("nhs_number"))


def _patient_statement() -> Select[Any]:
    return select(*_FOUND).where(_C.nhs_number == bindparam("nhs_number"), _C.resource_type == "Patient")


def _careplan_statements(statuses: int) -> tuple[Select[Any], Select[Any]]:
    """(count, page) of a person's CarePlans, with ``statuses`` status parameters, both ranges of
    ``ix_resources_person``; the page carries the total in each row (a window count, taken before
    the limit), so a page with rows needs no second statement."""
    where = (_C.nhs_number == bindparam("nhs_number")) & (_C.resource_type == "CarePlan")
    if statuses:
        where = where & _C.status.in_([bindparam(f"status_{i}", type_=String) for i in range(statuses)])
    count = select(func.count()).select_from(resources).where(where)
    page = (
        select(*_FOUND, func.count().over())
        .where(where)
        .order_by(_C.id)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )
    return count, page


Row = tuple[Any, ...]


class Compiled:
    """One statement as the driver's SQL text: its parameters in placeholder order, and how to turn
    a driver row into the values SQLAlchemy would have returned."""

    __slots__ = ("fixed", "keys", "names", "processors", "sql", "statement")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        #: Literals of the statement (``resource_type = 'Patient'``) are parameters with a value.
        self.fixed: dict[str, Any] = {k: v for k, v in compiled.params.items() if v is not None}
        self.keys: tuple[str, ...] = tuple(c.key or "" for c in statement.selected_columns)
        processors: list[Callable[[Any], Any] | None] = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in statement.selected_columns
        ]
        self.processors = processors if any(processors) else None

    def args(self, values: dict[str, Any]) -> tuple[Any, ...]:
        fixed = self.fixed
        return tuple(values[name] if name in values else fixed[name] for name in self.names)

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[Row]:
        if self.processors is None:
            return [tuple(r) for r in raw]
        return [tuple(v if p is None else p(v) for p, v in zip(self.processors, r, strict=True)) for r in raw]


class Statements:
    """Every hot statement compiled for one dialect; CarePlan pages per number of statuses asked."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.owner = Compiled(_owner_statement(), dialect)
        self.facts = Compiled(_facts_statement(), dialect)
        self.refs = Compiled(_refs_statement(), dialect)
        self.patient = Compiled(_patient_statement(), dialect)
        self._careplans: dict[int, tuple[Compiled, Compiled]] = {}

    def careplans(self, statuses: int) -> tuple[Compiled, Compiled]:
        found = self._careplans.get(statuses)
        if found is None:
            count, page = _careplan_statements(statuses)
            found = self._careplans[statuses] = (Compiled(count, self.dialect), Compiled(page, self.dialect))
        return found


def careplan_values(nhs_number: str, statuses: Collection[str], offset: int, limit: int) -> dict[str, Any]:
    values: dict[str, Any] = {"nhs_number": nhs_number, "offset": offset, "limit": limit}
    for i, status in enumerate(sorted(statuses)):
        values[f"status_{i}"] = status
    return values


def _found(rows: Sequence[Row]) -> list[Found]:
    return [(r[0], r[1], _bytes(r[2])) for r in rows]


def _bytes(content: str | bytes) -> bytes:
    return content.encode() if isinstance(content, str) else content


class DriverReads:
    """The reads over ``_run`` (a statement and its values to processed rows), for either driver."""

    statements: Statements

    async def _run(self, statement: Compiled, values: dict[str, Any]) -> list[Row]:
        raise NotImplementedError

    async def open(self) -> None:
        return None  # nothing to make ahead: SQLite's connection is made with the reader

    async def owner(self, resource_type: str, rid: str) -> str | None:
        rows = await self._run(self.statements.owner, {"resource_type": resource_type, "rid": rid})
        return rows[0][0] if rows else None

    async def facts(self, nhs_number: str) -> Facts:
        statement = self.statements.facts
        rows = await self._run(statement, {"nhs_number": nhs_number})
        return facts_from_rows(nhs_number, [dict(zip(statement.keys, r, strict=True)) for r in rows])

    async def refs(self, nhs_number: str) -> list[str]:
        rows = await self._run(self.statements.refs, {"nhs_number": nhs_number})
        return [f"{t}/{i}/_history/{v}" for t, i, v in rows]

    async def patient(self, nhs_number: str) -> list[Found]:
        return _found(await self._run(self.statements.patient, {"nhs_number": nhs_number}))

    async def careplans(
        self, nhs_number: str, statuses: Collection[str], offset: int, limit: int
    ) -> tuple[int, list[Found]]:
        count, page = self.statements.careplans(len(statuses))
        values = careplan_values(nhs_number, statuses, offset, limit)
        rows = await self._run(page, values) if limit > 0 else []
        if rows:
            return rows[0][-1], _found(rows)
        if offset == 0 and limit > 0:
            return 0, []  # no page from the start: nothing matches
        return (await self._run(count, values))[0][0], []


class SqliteReads(DriverReads):
    """The reads on a read-only ``sqlite3`` connection, run on the calling thread."""

    def __init__(self, path: Path) -> None:
        self.statements = Statements(sqlite_dialect.dialect(paramstyle="qmark"))
        self.conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        self.conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")

    async def _run(self, statement: Compiled, values: dict[str, Any]) -> list[Row]:
        return statement.rows(self.conn.execute(statement.sql, statement.args(values)).fetchall())

    async def close(self) -> None:
        self.conn.close()


@dataclass(slots=True)
class _Wanted:
    """One person asked for in a shared read, and once read, their rows."""

    nhs_number: str
    rows: list[Row] = field(default_factory=list)


def _numbers() -> Any:
    """The array parameter ``numbers``: many people's NHS numbers in one statement."""
    return any_(bindparam("numbers", type_=ARRAY(String)))


def _patients_statement() -> Select[Any]:
    """Everyone in ``numbers``'s Patient, each row led by the person's NHS number."""
    return select(_C.nhs_number, *_FOUND).where(_C.nhs_number == _numbers(), _C.resource_type == "Patient")


def _careplans_statement() -> Select[Any]:
    """Every CarePlan of everyone in ``numbers`` (NHS number, status, then the found columns), in id
    order: a person holds a handful, so a page is cut from them here rather than by the server."""
    return (
        select(_C.nhs_number, _C.status, *_FOUND)
        .where(_C.nhs_number == _numbers(), _C.resource_type == "CarePlan")
        .order_by(_C.nhs_number, _C.id)
    )


def _facts_many_statement() -> Select[Any]:
    return select(consents).where(consents.c.nhs_number == _numbers())


class PostgresReads(DriverReads):
    """The reads on an asyncpg pool of their own, made on first use.

    Patients, CarePlans and register facts asked for at the same moment (the searches and decisions
    in flight) are read together: one statement for all of them (``nhs_number = ANY($1)``), then
    shared out, and a CarePlan page is cut from the person's plans here. A round trip through
    asyncpg costs a request more CPU than the read costs the server.
    """

    def __init__(self, url: str, schema: str | None, size: int) -> None:
        self.statements = Statements(PGDialect_asyncpg())  # type: ignore[no-untyped-call]  # $1, $2 ...
        dialect = self.statements.dialect
        self._patients_of = Compiled(_patients_statement(), dialect)
        self._facts_of = Compiled(_facts_many_statement(), dialect)
        self._careplans_of = Compiled(_careplans_statement(), dialect)
        self._patients: GroupCommit[_Wanted] = GroupCommit(self._read_patients, max_batch=256)
        self._facts: GroupCommit[_Wanted] = GroupCommit(self._read_facts, max_batch=256)
        self._careplans: GroupCommit[_Wanted] = GroupCommit(self._read_careplans, max_batch=256)
        self.dsn, self.server_settings = asyncpg_target(url, schema, "concord search")
        self.size = size
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def _read_many(self, statement: Compiled, wanted: list[_Wanted], key: int) -> None:
        rows = await self._run(statement, {"numbers": sorted({w.nhs_number for w in wanted})})
        by_person: dict[str, list[Row]] = {}
        for row in rows:
            by_person.setdefault(row[key], []).append(row)
        for want in wanted:
            want.rows = by_person.get(want.nhs_number, [])

    async def _read_patients(self, wanted: list[_Wanted]) -> None:
        await self._read_many(self._patients_of, wanted, 0)

    async def _read_facts(self, wanted: list[_Wanted]) -> None:
        await self._read_many(self._facts_of, wanted, self._facts_of.keys.index("nhs_number"))

    async def _read_careplans(self, wanted: list[_Wanted]) -> None:
        await self._read_many(self._careplans_of, wanted, 0)

    async def careplans(
        self, nhs_number: str, statuses: Collection[str], offset: int, limit: int
    ) -> tuple[int, list[Found]]:
        want = _Wanted(nhs_number)
        await self._careplans.submit(want)
        matching = [r[2:] for r in want.rows if not statuses or r[1] in statuses]
        return len(matching), _found(matching[offset : offset + limit])

    async def patient(self, nhs_number: str) -> list[Found]:
        want = _Wanted(nhs_number)
        await self._patients.submit(want)
        return _found([r[1:] for r in want.rows])

    async def facts(self, nhs_number: str) -> Facts:
        want = _Wanted(nhs_number)
        await self._facts.submit(want)
        keys = self._facts_of.keys
        return facts_from_rows(nhs_number, [dict(zip(keys, r, strict=True)) for r in want.rows])

    async def open(self) -> None:
        """Every connection of the pool made now, and every hot statement prepared on each.

        Otherwise the pool grows under the first burst of requests, a connection at a time, and each
        new connection prepares each statement on first use (its backend reading the catalogue),
        while the batch of requests sharing that read waits. Measured (two workers, the first load
        after a start, four alternating runs each): p99 28.7-48.7 ms, and 19.6-22.0 ms made ahead.
        """
        pool = self._pool or await self._open()
        held: list[Any] = []
        try:
            for _ in range(self.size):  # all held at once, so each is a connection of its own
                held.append(await pool.acquire())
            for conn in held:
                for statement, values in self._warming:
                    await conn.fetch(statement.sql, *statement.args(values))
        finally:
            for conn in held:
                await pool.release(conn)

    @property
    def _warming(self) -> list[tuple[Compiled, dict[str, Any]]]:
        """Each statement a search or decision runs here, with values that match nothing."""
        none: list[str] = []
        return [
            (self._patients_of, {"numbers": none}),
            (self._careplans_of, {"numbers": none}),
            (self._facts_of, {"numbers": none}),
            (self.statements.owner, {"resource_type": "", "rid": ""}),
            (self.statements.refs, {"nhs_number": ""}),
        ]

    async def _open(self) -> Any:
        async with self._opening:
            if self._pool is None:
                import asyncpg

                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self.size,
                    server_settings=self.server_settings,
                    reset=_nothing_to_reset,
                )
        return self._pool

    async def _run(self, statement: Compiled, values: dict[str, Any]) -> list[Row]:
        pool = self._pool or await self._open()
        async with pool.acquire() as conn:
            raw = await conn.fetch(statement.sql, *statement.args(values))
        return statement.rows(raw)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _nothing_to_reset(conn: Any) -> None:
    """The pool's reset for these connections: none. By default asyncpg resets every connection it
    takes back (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, releasing advisory locks): a round trip
    for each read (without it, 6,348 -> 6,664 searches a second, bench/RESULTS.md). These
    connections only ever run one read at a time outside a transaction, changing no session state;
    asyncpg still rolls back a transaction left open before calling this."""


class EngineReads(DriverReads):
    """The same statements through the engine: for stores the driver readers cannot open (an
    in-memory SQLite database lives inside the engine's one connection)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.statements = Statements(engine.dialect)

    async def _run(self, statement: Compiled, values: dict[str, Any]) -> list[Row]:
        async with self.engine.connect() as conn:
            result = await conn.execute(statement.statement, values)
            return [tuple(r) for r in result]

    async def close(self) -> None:
        return None


def open_hot_reads(settings: Settings, engine: AsyncEngine) -> HotReads:
    """The fastest reader this store allows (after migrating: SQLite's file must exist). Nothing
    connects to PostgreSQL until the first read."""
    path = settings.sqlite_path()
    if path is not None:
        return SqliteReads(path)
    if engine.dialect.name == "postgresql":
        return PostgresReads(
            settings.resolved_database_url(), settings.database_schema, settings.search_pool_size
        )
    return EngineReads(engine)
