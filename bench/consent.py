"""Consent decision and audit log speed against baselines measured in the same run.

    python bench/consent.py                # SQLite store (temp dir), Redis at 127.0.0.1:6379
    python bench/consent.py --postgres     # the log (3, 4) on PostgreSQL too, in scratch schemas
    python bench/consent.py --log-only --postgres --entries 100000 --first 30000   # 3 and 4 alone

1. A cached decision, ``LocalDecider.cached`` on a warm cache, against a plain dict
   lookup of the same key shape in a dict of the same size, called through a bound
   method of the same signature. Target <= 2x. The async ``decide()`` hit path is
   reported beside an async dict lookup, for information.
2. ``RedisDecider.decide`` cache hits against ``await client.get(key)`` of a small
   string on the same client, both as sequential awaits. Target <= 1.5x.
3. ``AuditLog.append`` of disclosure entries in batches (one transaction each,
   checkpoint every 1000) against a plain executemany INSERT of the same rows, one
   transaction per batch, into an identical table beside it (no hashing, no head lock,
   no signing). Target >= 20,000 entries/s at batches of 500, over 100,000 entries by
   default. Batches of 100, 500 and 1000 are also compared over the same number of entries
   (the first 30,000), each on a fresh log.
   The entries cycle through the same 10,000 people as 1.
4. ``verify_store`` over the log written in 3 (default workers: one process per two cores)
   against reading the same rows with ``stream_entries`` alone. Target >= 200,000 entries/s.
   ``verify_store`` with the other choice (2 workers in spans if the default is one pass, else
   one pass) is reported beside it.

1 and 2 run with the garbage collector off (as ``timeit`` does), each figure the best of
several repeats, target and baseline alternating. 3 and 4 run with it on, as the gateway
and `concord audit verify` do: verifying allocates an object per entry and collections
cost it about a third of its speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/consent.py`, this file's directory is first on sys.path and the file's own
# name would shadow the `consent` package: drop that entry before importing the project.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import gc
import random
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis
from sqlalchemy import Column, Index, MetaData, Table, func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from consent.chain import ENTRY_FIELDS, Entry, Kind, detail, timestamp
from consent.model import Decision, Facts, Reason, Requester, RequesterKind, Verdict
from gateway.audit.keys import write_private_key
from gateway.audit.verify import default_workers, verify_store
from gateway.bootstrap import Services, bootstrap
from gateway.decisions import CacheKey, LocalDecider, RedisDecider
from gateway.settings import Settings, normalise_database_url
from gateway.store.audit import stream_entries
from gateway.store.consents import read_facts_many
from gateway.store.schema import audit_log
from mappings.nhs_number import complete

PURPOSE = "direct-care"
PROVIDER = Requester(RequesterKind.PROVIDER, "RXX01", "community-epr")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; ``met`` is None for figures reported for information."""

    name: str
    target: str
    measured: str
    baseline: str
    ratio: float
    met: bool | None


def people(count: int, seed: int = 7) -> list[str]:
    """``count`` valid NHS numbers from the 999 test range, in random order."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[int] = set()
    while len(out) < count:
        k = rng.randrange(1_000_000)
        if k in seen:
            continue
        seen.add(k)
        number = complete(f"999{k:06d}")
        if number is not None:
            out.append(number)
    return out


def timed(fn: Callable[[], object]) -> float:
    gc.disable()
    try:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started
    finally:
        gc.enable()


async def atimed(fn: Callable[[], Awaitable[object]], gc_off: bool = True) -> float:
    if gc_off:
        gc.disable()
    try:
        started = time.perf_counter()
        await fn()
        return time.perf_counter() - started
    finally:
        gc.enable()


# --- 1. cached decision against a dict lookup -------------------------------------------------


class PlainLookup:
    """The baseline: the decider's cache key looked up in a plain dict, through the same call shape."""

    def __init__(self, d: dict[CacheKey, tuple[Decision, int, float]]) -> None:
        self._d = d

    def get(self, nhs_number: str, purpose: str, requester: Requester) -> tuple[Decision, int, float] | None:
        return self._d.get((nhs_number, purpose, requester.kind))

    async def aget(
        self, nhs_number: str, purpose: str, requester: Requester
    ) -> tuple[Decision, int, float] | None:
        return self._d.get((nhs_number, purpose, requester.kind))


class Prefetched:
    """Facts read in bulk before the run, handed to ``decide()`` on a miss; counts the misses.

    Warming goes through ``decide()`` as the gateway does, without one store round trip per
    person; the count proves that the timed loops only ever hit the cache.
    """

    def __init__(self, facts: dict[str, Facts]) -> None:
        self.prefetched = facts
        self.reads = 0

    async def __call__(self, nhs_number: str) -> Facts | None:
        self.reads += 1
        return self.prefetched[nhs_number]


class PrefetchedLocal(LocalDecider):
    source: Prefetched

    async def facts(self, nhs_number: str) -> Facts | None:
        return await self.source(nhs_number)


class PrefetchedRedis(RedisDecider):
    source: Prefetched

    async def facts(self, nhs_number: str) -> Facts | None:
        return await self.source(nhs_number)


async def prefetch(services: Services, numbers: Sequence[str]) -> Prefetched:
    async with services.engine.connect() as conn:
        return Prefetched(await read_facts_many(conn, numbers))


def lookups(fn: Callable[[str, str, Requester], object], numbers: Sequence[str], passes: int) -> None:
    for _ in range(passes):
        for n in numbers:
            fn(n, PURPOSE, PROVIDER)


async def alookups(
    fn: Callable[[str, str, Requester], Awaitable[object]], numbers: Sequence[str], passes: int = 1
) -> None:
    for _ in range(passes):
        for n in numbers:
            await fn(n, PURPOSE, PROVIDER)


async def bench_cached(services: Services, numbers: list[str], repeats: int, passes: int) -> list[Row]:
    decider = services.decider
    assert isinstance(decider, LocalDecider)
    counting = PrefetchedLocal(services.engine, decider.fence, services.settings.consent_cache_seconds)
    counting.source = source = await prefetch(services, numbers)
    for n in numbers:  # warm: one miss per person
        await counting.decide(n, PURPOSE, PROVIDER)
    assert source.reads == len(numbers)
    assert all(counting.cached(n, PURPOSE, PROVIDER) is not None for n in numbers), "cache not warm"
    plain = PlainLookup(dict(counting._young))
    assert all(plain.get(n, PURPOSE, PROVIDER) is not None for n in numbers)
    ops = len(numbers) * passes
    base_s, target_s, abase_s, atarget_s = [], [], [], []
    for _ in range(repeats):
        base_s.append(timed(lambda: lookups(plain.get, numbers, passes)))
        target_s.append(timed(lambda: lookups(counting.cached, numbers, passes)))
        abase_s.append(await atimed(lambda: alookups(plain.aget, numbers, passes)))
        atarget_s.append(await atimed(lambda: alookups(counting.decide, numbers, passes)))
    assert source.reads == len(numbers), "a timed decision missed the cache"
    base, target = min(base_s) / ops * 1e9, min(target_s) / ops * 1e9
    abase, atarget = min(abase_s) / ops * 1e9, min(atarget_s) / ops * 1e9
    return [
        Row(
            f"1. LocalDecider.cached, warm ({len(numbers):,} people)",
            "<= 2x",
            f"{target:.0f} ns/op",
            f"{base:.0f} ns/op (dict.get via method)",
            target / base,
            target / base <= 2.0,
        ),
        Row(
            "   async decide(), cache hit (information)",
            "-",
            f"{atarget:.0f} ns/op",
            f"{abase:.0f} ns/op (async dict.get)",
            atarget / abase,
            None,
        ),
    ]


# --- 2. Redis-backed decision against a bare GET -----------------------------------------------


async def bench_redis(services: Services, redis_url: str, numbers: list[str], repeats: int) -> list[Row]:
    client: Redis = Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    prefix = f"bench-{uuid.uuid4().hex[:12]}:"
    decider = PrefetchedRedis(services.engine, client, ttl=600, prefix=f"{prefix}consent:")
    decider.source = source = await prefetch(services, numbers)
    plain_keys = [f"{prefix}plain:{n}" for n in numbers]
    try:
        for n in numbers:  # warm: a miss (MGET, then the scripted write) per person
            await decider.decide(n, PURPOSE, PROVIDER)
        assert source.reads == len(numbers)
        small = "0|permit|no-objection|direct-care|"  # what a cached decision holds
        await client.mset(dict.fromkeys(plain_keys, small))

        async def gets() -> None:
            for key in plain_keys:
                await client.get(key)

        async def decides() -> None:
            await alookups(decider.decide, numbers)

        await gets()  # settle the connection pool
        base_s, target_s = [], []
        for _ in range(repeats):
            base_s.append(await atimed(gets))
            target_s.append(await atimed(decides))
        assert source.reads == len(numbers), "a timed Redis decision missed the cache"
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        await decider.close()
    base = min(base_s) / len(numbers) * 1e6
    target = min(target_s) / len(numbers) * 1e6
    return [
        Row(
            f"2. RedisDecider.decide, cache hit ({len(numbers):,} people)",
            "<= 1.5x",
            f"{target:.1f} us/op",
            f"{base:.1f} us/op (await client.get)",
            target / base,
            target / base <= 1.5,
        )
    ]


# --- 3 and 4. the log: append and verify -------------------------------------------------------


def disclosure_entries(numbers: Sequence[str], count: int, seed: int = 11) -> list[Entry]:
    """Disclosures as the gateway logs them: mostly permits returning three resources, some denies."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 24, 9, tzinfo=UTC)
    out: list[Entry] = []
    for i in range(count):
        refs = [f"{t}/{rng.getrandbits(128):032x}" for t in ("Patient", "CarePlan", "Provenance")]
        denied = i % 25 == 0
        out.append(
            Entry(
                at=timestamp(start + timedelta(milliseconds=i)),
                kind=Kind.DISCLOSURE,
                action="view" if i % 3 else "read",
                request_id=f"{rng.getrandbits(128):032x}",
                requester_kind=PROVIDER.kind.value,
                org_ods=PROVIDER.ods_code,
                client_id=PROVIDER.client_id,
                nhs_number=numbers[i % len(numbers)],
                purpose=PURPOSE,
                decision=(Verdict.DENY if denied else Verdict.PERMIT).value,
                reason=(Reason.LOCAL_OPT_OUT if denied else Reason.NO_OBJECTION).value,
                consent_id=f"{rng.getrandbits(128):032x}" if denied else None,
                detail=detail(withheld=refs) if denied else detail(returned=refs),
            )
        )
    return out


def plain_table() -> Table:
    """A copy of ``audit_log`` under another name (indexes renamed: SQLite index names are per database)."""
    columns = [
        Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, autoincrement=False)
        for c in audit_log.columns
    ]
    indexes = [Index(f"bench_plain_{ix.name}", *[c.name for c in ix.columns]) for ix in audit_log.indexes]
    return Table("bench_plain_log", MetaData(), *columns, *indexes)


@asynccontextmanager
async def fresh_store(work: Path, name: str, postgres_url: str | None) -> AsyncIterator[Services]:
    """A migrated empty store: a SQLite file in ``work``, or a scratch PostgreSQL schema dropped after."""
    data_dir = work / name
    if postgres_url is None:
        services = await bootstrap(Settings(data_dir=data_dir, redis_url=None, consent_cache_seconds=600))
        try:
            yield services
        finally:
            await services.close(sign=False)
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    key_file = data_dir / "audit-signing.key"
    write_private_key(key_file, Ed25519PrivateKey.generate())
    admin = create_async_engine(normalise_database_url(postgres_url))
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        settings = Settings(
            data_dir=data_dir,
            database_url=postgres_url,
            database_schema=schema,
            audit_signing_key_file=key_file,
            id_key=uuid.uuid4().hex,
            redis_url=None,
        )
        services = await bootstrap(settings)
        try:
            yield services
        finally:
            await services.close(sign=False)
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


async def append_and_plain(
    services: Services, entries: list[Entry], batch: int, marks: Sequence[int]
) -> dict[int, tuple[float, float]]:
    """Seconds to append ``entries`` through the log, and to INSERT the same rows plainly, as they
    stood once each of ``marks`` entries were written (multiples of ``batch``).

    The two alternate batch by batch, so both see the same database size, cache and WAL state.
    """
    plain = plain_table()
    async with services.engine.begin() as conn:
        await conn.run_sync(plain.metadata.create_all)
    log = services.log
    seq = 0

    async def insert(b: Sequence[Entry]) -> None:
        nonlocal seq
        rows: list[dict[str, Any]] = []
        for entry in b:
            seq += 1
            row: dict[str, Any] = {name: getattr(entry, name) for name in ENTRY_FIELDS}
            row["seq"] = seq
            row["entry_hash"] = "0" * 64
            rows.append(row)
        async with services.engine.begin() as conn:
            await conn.execute(plain.insert(), rows)

    chain_s = plain_s = 0.0
    seen: dict[int, tuple[float, float]] = {}
    for start in range(0, len(entries), batch):
        b = entries[start : start + batch]
        started = time.perf_counter()
        await log.append(b)
        appended = time.perf_counter()
        await insert(b)
        chain_s += appended - started
        plain_s += time.perf_counter() - appended
        if start + len(b) in marks:
            seen[start + len(b)] = (chain_s, plain_s)
    async with services.engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
        copied = (await conn.execute(select(func.count()).select_from(plain))).scalar_one()
    assert stored == copied == len(entries), (stored, copied)
    assert set(seen) == set(marks), (seen, marks)
    return seen


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children (verify workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def verify_and_stream(
    services: Services, count: int, repeats: int, other: int
) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Best (seconds, CPU seconds) of ``verify_store`` over the log as configured by default, and with
    ``other`` workers; best seconds of reading the log with ``stream_entries`` alone. CPU time is
    this process's and its workers' (a PostgreSQL server's is not counted): under load it says
    more than the wall clock."""
    keys = {services.log.key_id: services.log.key.public_key()}

    async def verify(workers: int | None) -> None:
        verified = await verify_store(services.engine, keys, workers=workers)
        assert verified.result.ok and verified.result.entries == count, verified.result.problem

    async def stream() -> None:
        seen = 0
        async with services.engine.connect() as conn:
            async for chunk in stream_entries(conn):
                seen += len(chunk)
        assert seen == count

    await stream()  # warm the page cache for both

    async def both(workers: int | None) -> tuple[float, float]:
        started = cpu_seconds()
        seconds = await atimed(lambda: verify(workers), gc_off=False)
        return seconds, cpu_seconds() - started

    verify_s, other_s, stream_s = [], [], []
    for _ in range(repeats):
        stream_s.append(await atimed(stream, gc_off=False))
        verify_s.append(await both(None))
        other_s.append(await both(other))
    return min(verify_s), min(other_s), min(stream_s)


async def bench_log(
    work: Path, label: str, postgres_url: str | None, numbers: list[str], count: int, first: int
) -> list[Row]:
    """3 at batches of 500 up to ``count`` entries, then 4 over that log. For information, batches of
    100, 500 and 1000 compared over their ``first`` entries, each on a fresh log."""
    entries = disclosure_entries(numbers, count)
    by_batch: dict[int, tuple[float, float]] = {}
    rows: list[Row] = []
    for batch in (100, 500, 1000):
        async with fresh_store(work, f"{label}-log-{batch}", postgres_url) as services:
            if batch != 500:
                by_batch[batch] = (await append_and_plain(services, entries[:first], batch, [first]))[first]
                continue
            seen = await append_and_plain(services, entries, batch, sorted({first, count}))
            by_batch[batch] = seen[first]
            chain_s, plain_s = seen[count]
            rate, plain_rate = count / chain_s, count / plain_s
            rows.append(
                Row(
                    f"3. {label}: AuditLog.append, {count:,} in batches of 500",
                    ">= 20,000/s",
                    f"{rate:,.0f} entries/s",
                    f"{plain_rate:,.0f}/s (plain executemany)",
                    rate / plain_rate,
                    rate >= 20_000,
                )
            )
            workers = default_workers()
            other = 2 if workers == 1 else 1
            (verify_s, verify_cpu), (other_s, other_cpu), stream_s = await verify_and_stream(
                services, count, 3, other
            )
            rate, other_rate, plain_rate = count / verify_s, count / other_s, count / stream_s
            rows.append(
                Row(
                    f"4. {label}: verify_store, {count:,} entries, workers={workers} (default)",
                    ">= 200,000/s",
                    f"{rate:,.0f} entries/s ({verify_cpu / count * 1e6:.1f} us CPU each)",
                    f"{plain_rate:,.0f}/s (stream_entries only)",
                    rate / plain_rate,
                    rate >= 200_000,
                )
            )
            rows.append(
                Row(
                    f"   {label}: verify_store, workers={other}",
                    "(information)",
                    f"{other_rate:,.0f} entries/s ({other_cpu / count * 1e6:.1f} us CPU each)",
                    f"{plain_rate:,.0f}/s (stream_entries only)",
                    other_rate / plain_rate,
                    None,
                )
            )
    for batch, (chain_s, plain_s) in by_batch.items():
        rate, plain_rate = first / chain_s, first / plain_s
        rows.insert(
            -2,
            Row(
                f"   {label}: append, first {first:,}, batches of {batch}",
                "(information)",
                f"{rate:,.0f} entries/s",
                f"{plain_rate:,.0f}/s (plain executemany)",
                rate / plain_rate,
                None,
            ),
        )
    return rows


# --- the table ---------------------------------------------------------------------------------


def print_table(rows: Sequence[Row]) -> None:
    header = ("benchmark", "target", "measured", "baseline (same run)", "ratio", "result")
    lines = [
        (
            r.name,
            r.target,
            r.measured,
            r.baseline,
            f"{r.ratio:.2f}x",
            "-" if r.met is None else ("met" if r.met else "MISSED"),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *lines]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print(
        "ratio: target time / baseline time for 1-2 (lower is better); "
        "target rate / baseline rate for 3-4 (higher is better)"
    )


async def bench_decisions(args: argparse.Namespace, work: Path, numbers: list[str]) -> list[Row]:
    """1 and 2."""
    rows: list[Row] = []
    async with fresh_store(work, "decisions", None) as services:
        started = time.perf_counter()
        rows += await bench_cached(services, numbers, repeats=7, passes=20)
        print(f"[1 done in {time.perf_counter() - started:.1f}s]", flush=True)
        if not args.no_redis:
            started = time.perf_counter()
            rows += await bench_redis(services, args.redis_url, numbers[: args.redis_people], repeats=5)
            print(f"[2 done in {time.perf_counter() - started:.1f}s]", flush=True)
    return rows


async def run(args: argparse.Namespace, work: Path) -> list[Row]:
    numbers = people(args.people)
    rows: list[Row] = []
    if not args.log_only:
        rows += await bench_decisions(args, work, numbers)
    stores: list[tuple[str, str | None]] = [("SQLite", None)]
    if args.postgres:
        stores.append(("PostgreSQL", args.postgres_url))
    for label, url in stores:
        started = time.perf_counter()
        rows += await bench_log(work, label, url, numbers, args.entries, args.first)
        print(f"[3-4 on {label} done in {time.perf_counter() - started:.1f}s]", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=10_000, help="people in the decision cache")
    parser.add_argument("--redis-people", type=int, default=2_000, help="people in the Redis loop")
    parser.add_argument("--entries", type=int, default=100_000, help="log entries, batches of 500 (3, 4)")
    parser.add_argument(
        "--first",
        type=int,
        default=30_000,
        help="entries (a multiple of 1000) over which batches of 100, 500, 1000 are compared",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true", help="skip 2")
    parser.add_argument("--log-only", action="store_true", help="skip 1 and 2: only the log (3, 4)")
    parser.add_argument("--postgres", action="store_true", help="also run 3 and 4 on PostgreSQL")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(run(args, Path(tmp)))
    print()
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
