"""The API's hot searches are answered from an index on both stores, never by scanning a resource type.

The statements checked are the ones ``store.hot_reads`` runs: per person on SQLite, and on
PostgreSQL the batched ones too (many people in one ``nhs_number = ANY(...)``).

SQLite keeps no statistics, so its plan does not depend on the data: ``EXPLAIN QUERY PLAN`` must
search ``ix_resources_person`` and never scan the table. PostgreSQL plans from statistics, and on a
near-empty test table a sequential scan is cheapest, so there the index must be *usable*: with
sequential scans priced out and a population analysed (rolled back afterwards), the plan reads
``ix_resources_person``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.bootstrap import Services
from gateway.store import hot_reads, outbox
from gateway.store.schema import resources

NUMBER = "9990000018"


async def _plan(conn: AsyncConnection, statement: Select[object]) -> str:
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
        return "\n".join(str(row[-1]) for row in rows)
    await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    rows = await conn.exec_driver_sql(f"EXPLAIN {sql}")
    return "\n".join(str(row[0]) for row in rows)


def _statements(dialect: str) -> dict[str, Select[Any]]:
    one = {"nhs_number": NUMBER}
    count, page = hot_reads._careplan_statements(0)
    status_count, status_page = hot_reads._careplan_statements(1)
    paged = {**one, "limit": 20, "offset": 0}
    statements = {
        "Patient by NHS number": hot_reads._patient_statement().params(one),
        "CarePlan count by subject": count.params(one),
        "CarePlan page by subject": page.params(paged),
        "CarePlan count by subject and status": status_count.params(one, status_0="active"),
        "CarePlan page by subject and status": status_page.params(paged, status_0="active", offset=20),
        "a person's refs": hot_reads._refs_statement().params(one),
    }
    if dialect == "postgresql":
        many = {"numbers": [NUMBER, "9990000026"]}
        statements["Patients of many people"] = hot_reads._patients_statement().params(many)
        statements["CarePlans of many people"] = hot_reads._careplans_statement().params(many)
    return statements


async def _populate(conn: AsyncConnection, people: int = 2000) -> None:
    """PostgreSQL: a population and its statistics, inside the test's transaction (rolled back).

    On a near-empty table every index costs the same, and for many people's Patients at once the
    planner may as well walk all Patients through ``ix_resources_subject``; with a population it
    weighs the indexes as it would in service."""
    now = datetime(2026, 11, 24, tzinfo=UTC)
    await conn.execute(
        resources.insert(),
        [
            {
                "resource_type": rtype,
                "id": f"{rtype}-{n}",
                "version_id": 1,
                "last_updated": now,
                "nhs_number": f"{n:010d}",
                "source": "gp",
                "status": "active",
                "subject_id": f"Patient-{n}",
                "content_hash": "0" * 64,
                "content": "{}",
            }
            for n in range(people)
            for rtype in ("Patient", "CarePlan")
        ],
    )
    await conn.exec_driver_sql("ANALYZE resources")


async def test_searches_by_person_use_the_person_index(services: Services) -> None:
    async with services.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await _populate(conn)
        for name, statement in _statements(conn.dialect.name).items():
            plan = await _plan(conn, statement)
            assert "ix_resources_person" in plan, f"{name}: {plan}"
            # Sorting the one person's matches is fine; reading the table is not.
            assert "SCAN resources" not in plan and "Seq Scan" not in plan, f"{name} scans: {plan}"


async def test_a_claim_reads_unsent_outbox_rows_only(services: Services) -> None:
    """Delivered rows stay an hour (and can be most of the outbox): a claim must not walk them."""
    statement = outbox.claim_candidates(datetime(2026, 11, 24, tzinfo=UTC), 128, skip_people=[NUMBER])
    async with services.engine.connect() as conn:
        plan = await _plan(conn, statement)  # type: ignore[arg-type]
    if services.engine.dialect.name == "postgresql":
        # Without the partial index PostgreSQL walks the primary key in id order and filters out
        # every delivered row first (measured: 300,000 rows removed, 42 ms a claim; with it 0.1 ms).
        assert "ix_outbox_unsent" in plan, plan
    else:  # SQLite searches each unsent status's rows through ix_outbox_status_id, then sorts them
        assert plan.count("ix_outbox_status_id (status=?)") == 2 or "ix_outbox_unsent" in plan, plan
    assert "SCAN outbox" not in plan and "Seq Scan" not in plan and "outbox_pkey" not in plan, plan
