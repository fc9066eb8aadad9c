"""Verifying in spans with worker processes, on SQLite and PostgreSQL: the same verdicts as one pass.

The tampering of ``test_audit_tamper`` is repeated with ``verify_store`` forced to cut even this
small log into spans checked by worker processes (``parallel_from=0``); every case must name the
same first bad entry, and an intact log the same counts and hashes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from integration.test_audit_tamper import CASES, ENTRIES, Built, built, restore, snapshot

from consent.chain import Span, Verifier, join_spans, plan_spans
from gateway.audit.spans import RawLog, check_span
from gateway.audit.verify import check_in_parallel, start_worker, verify_store, worker_source

__all__ = ["built"]  # the fixture, shared with the tamper tests


@pytest.mark.parametrize("workers", [2, 3])
async def test_the_untampered_log_verifies_in_spans_as_in_one_pass(built: Built, workers: int) -> None:
    engine = built.services.engine
    whole = (await verify_store(engine, built.keys, workers=1)).result
    verified = await verify_store(engine, built.keys, workers=workers, parallel_from=0)
    assert verified.workers == workers
    spans = verified.result
    assert spans.ok and whole.ok, (spans.problem, whole.problem)
    assert (spans.entries, spans.last_seq, spans.last_hash, spans.checkpoints, spans.last_checkpoint) == (
        whole.entries,
        whole.last_seq,
        whole.last_hash,
        whole.checkpoints,
        whole.last_checkpoint,
    )
    assert spans.entries == ENTRIES


@pytest.mark.parametrize("workers", [2, 3])
async def test_every_tampering_is_named_alike_in_spans(built: Built, workers: int) -> None:
    engine = built.services.engine
    saved = await snapshot(engine)
    found: dict[str, tuple[int, str, str] | None] = {}
    expected: dict[str, tuple[int, str, str] | None] = {}
    for name, case in CASES.items():
        async with engine.begin() as conn:
            await case.tamper(conn)
        noted = [(seq, built.hashes[seq]) for seq in case.noted]
        whole = (await verify_store(engine, built.keys, noted, workers=1)).result.problem
        verified = await verify_store(engine, built.keys, noted, workers=workers, parallel_from=0)
        assert verified.workers == workers
        problem = verified.result.problem
        found[name] = None if problem is None else (problem.seq, problem.code, problem.message)
        expected[name] = None if whole is None else (whole.seq, whole.code, whole.message)
        await restore(engine, saved)
    assert found == expected
    assert {name: (p[0], p[1]) if p else None for name, p in found.items()} == {
        name: case.problem for name, case in CASES.items()
    }


async def spans_here(log: RawLog, plan: list[tuple[int, int | None]], watched: frozenset[int]) -> list[Span]:
    return [await check_span(log, lo, hi, watched) for lo, hi in plan]


async def test_a_worker_process_finds_what_this_process_finds(built: Built) -> None:
    """The worker protocol end to end: the spans it answers equal those checked in this process."""
    engine = built.services.engine
    async with engine.begin() as conn:
        await CASES["update-detail"].tamper(conn)  # entry 8 altered: one span has a problem
    async with engine.connect() as conn:
        source = await worker_source(conn)
        assert source is not None
        log = RawLog((await conn.get_raw_connection()).driver_connection, conn.dialect.name == "postgresql")
        plan = plan_spans(await log.last_seq(), 4)
        watched = frozenset([3, 6, 9])
        here = await spans_here(log, plan, watched)
    lines = [orjson.dumps({"source": source, "watched": sorted(watched)})]
    lines += [orjson.dumps({"lo": lo, "hi": hi}) for lo, hi in plan]
    worker = await start_worker()
    out, _ = await worker.communicate(b"\n".join(lines) + b"\n")
    assert worker.returncode == 0
    there = [Span.from_json(orjson.loads(line)) for line in out.splitlines()]
    assert there == here
    assert [s.problem.seq if s.problem else None for s in there] == [None, None, 8, None]


async def test_a_worker_that_cannot_start_hands_its_spans_back(
    built: Built, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker pointed at a store it cannot open fails; this process checks its spans instead."""
    engine = built.services.engine
    async with engine.begin() as conn:
        await CASES["delete-entry"].tamper(conn)
    async with engine.connect() as conn:
        log = RawLog((await conn.get_raw_connection()).driver_connection, conn.dialect.name == "postgresql")
        verifier = Verifier([], built.keys)
        plan = plan_spans(await log.last_seq(), 4)
        nowhere = {"sqlite": str(Path(built.services.settings.data_dir) / "no-such.db")}
        with caplog.at_level(logging.WARNING, logger="gateway.audit.verify"):
            found = await check_in_parallel(log, nowhere, plan, verifier, helpers=2)
        expected = await spans_here(log, plan, verifier.watched)
    assert "an audit verify worker failed (OperationalError: unable to open database file)" in caplog.text
    # Spans after the one with the problem may be skipped; those up to it are all there and right.
    assert [found[lo] for lo, _ in plan[:2]] == expected[:2]
    assert expected[1].problem is not None and expected[1].problem.code == "missing"
    result = join_spans(Verifier([], built.keys), [found[lo] for lo in sorted(found)])
    assert result.problem is not None and (result.problem.seq, result.problem.code) == (5, "missing")
