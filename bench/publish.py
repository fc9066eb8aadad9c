"""Publishing to the HIE: throughput against a plain aiohttp client, and outbox lag under load.

    python bench/publish.py                          # SQLite store (temp dir), Redis at 127.0.0.1:6379
    python bench/publish.py --postgres               # the store in a scratch PostgreSQL schema
    python bench/publish.py --steps --seconds 0      # where a delivery's time goes
    python bench/publish.py --repeats 0 --rate 10,25,50   # the lag alone, at several rates

N synthetic people (GP extract, opt-out codes stripped so everyone is shareable) are ingested
into a scratch store with the real pipeline. The HIE stub (``gateway.hie_stub.server.make_app``,
no access log) runs in a child process of its own, so that neither side shares an event loop or
a core's time slice with the other; both setups below talk to the same stub process.

1. Throughput, at concurrency 8 and 64:
   - baseline: the per-person transaction Bundles are built once, before timing, with
     ``bundle.publication`` from the stored resources, exactly as the publisher builds a first
     delivery; one aiohttp ``ClientSession`` (connection pool of the concurrency) POSTs them with
     that many requests in flight, reads each reply and checks it is a 200 transaction-response
     (orjson). No store, no outbox, no consent decision, no audit;
   - target: ``Publisher.run(until_idle=True)`` with ``publish_concurrency`` the same, after every
     person was queued with ``publisher.backfill`` and what the HIE holds was forgotten
     (``hie_people`` emptied), so it sends the same bytes as the baseline.
   The stub is reset before every run; every run must leave N Patients at the stub. Runs alternate
   baseline / publisher, and each figure is the best of ``--repeats``. Target: publisher >= 0.25x
   the baseline's bundles/s at both concurrencies. CPU seconds of this process and of the stub
   process are reported per run (where the time goes).
2. Outbox lag: a writer in a process of its own (as the API or an ingest would be) toggles
   people's local opt-outs through ``services.register`` (opt-out, later withdraw: a retraction,
   then a republication) at ``--rate`` changes/s for ``--seconds``, while a publisher runs here as
   ``concord publish`` runs it: Redis configured, ``services.signal.listen(publisher.wake)`` as a
   task, the default poll interval and concurrency. Lag = ``outbox.sent_at - outbox.created_at``
   of every row the writer created. Target: p99 < 1 s at 200 changes/s. Once those rows are all
   delivered, the people left opted out are withdrawn (so the next run starts with everyone
   shareable): that clean-up is not part of the measured load, nor of the reported CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/publish.py`, this file's directory is first on sys.path and bench/consent.py
# would shadow the `consent` package: drop that entry before importing the project.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import contextlib
import csv
import io
import math
import multiprocessing
import os
import random
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from typing import Any, Final

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.gp import GpAdapter
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.audit.keys import write_private_key
from gateway.bootstrap import Services, bootstrap
from gateway.cli.common import run_loop
from gateway.disclosure import Disclosure
from gateway.publish.batch import ClaimDecider, PersonLoader
from gateway.publish.bundle import publication
from gateway.publish.client import HieClient
from gateway.publish.publisher import Publisher, backfill
from gateway.settings import Settings, normalise_database_url
from gateway.store import outbox as box
from gateway.store.schema import hie_people, outbox
from gateway.synth.defects import DefectPlan
from gateway.synth.gp import write_gp
from gateway.synth.population import population
from gateway.views import load_person

FHIR_JSON = "application/fhir+json"
ACTOR = Requester(RequesterKind.OPERATOR, "CONCORD", "bench")
TICKS = os.sysconf("SC_CLK_TCK")

STUB_CODE = (
    "import sys\n"
    "from aiohttp import web\n"
    "from gateway.hie_stub.server import make_app\n"
    "web.run_app(make_app(), host='127.0.0.1', port=int(sys.argv[1]), access_log=None, print=None)\n"
)


@dataclass(frozen=True, slots=True)
class Run:
    """One timed throughput run."""

    who: str
    concurrency: int
    bundles: int
    seconds: float
    cpu_here: float
    cpu_stub: float

    @property
    def rate(self) -> float:
        return self.bundles / self.seconds


# --- the stub in its own process ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def stub_process() -> AsyncIterator[tuple[str, int]]:
    """The HIE stub in a child process: (base URL, pid)."""
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", STUB_CODE, str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/fhir/metadata") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the HIE stub did not start")
        yield base, child.pid
    finally:
        child.terminate()
        child.wait(10)


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def stub_call(base: str, method: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, base + path) as response:
        body = await response.read()
        return orjson.loads(body) if body else None


# --- the store ---------------------------------------------------------------------------------


@asynccontextmanager
async def scratch_settings(work: Path, postgres_url: str | None) -> AsyncIterator[Settings]:
    """Settings of a fresh store: a SQLite file in ``work``, or a scratch PostgreSQL schema dropped after."""
    data_dir = work / "store"
    data_dir.mkdir(parents=True, exist_ok=True)
    if postgres_url is None:
        yield Settings(data_dir=data_dir, ingest_batch_size=500)
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    key_file = data_dir / "audit-signing.key"
    write_private_key(key_file, Ed25519PrivateKey.generate())
    admin = create_async_engine(normalise_database_url(postgres_url))
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield Settings(
            data_dir=data_dir,
            database_url=postgres_url,
            database_schema=schema,
            audit_signing_key_file=key_file,
            token_secret=uuid.uuid4().hex * 2,
            id_key=uuid.uuid4().hex * 2,
            ingest_batch_size=500,
        )
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


def gp_extract(people: int, seed: int = 7) -> bytes:
    """A clean GP extract of ``people`` people, opt-out codes stripped (everyone shareable)."""
    buffer = io.StringIO()
    write_gp(population(people, seed), buffer, random.Random(seed), DefectPlan(0.0, seed))
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "opt_out_code": ""} for r in rows)
    return out.getvalue().encode()


async def load_people(services: Services, people: int) -> list[str]:
    """Ingest the extract; close the outbox rows it wrote (runs queue people themselves); the NHS numbers."""
    await services.ingestor.run("gp", GpAdapter().read(io.BytesIO(gp_extract(people))), "gp.csv")
    async with services.engine.begin() as conn:
        await conn.execute(update(outbox).values(status="sent", sent_at=datetime.now(UTC)))
        return await box.people_after(conn, "", 10 * people)


# --- 1. throughput -----------------------------------------------------------------------------


async def baseline(base: str, bundles: Sequence[bytes], concurrency: int) -> int:
    """POST every bundle with ``concurrency`` in flight on one session; how many the HIE took."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    todo = iter(bundles)
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for body in todo:
            headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "X-Request-ID": uuid.uuid4().hex}
            async with session.post(f"{base}/fhir", data=body, headers=headers) as response:
                reply = orjson.loads(await response.read())
                if response.status == 200 and reply.get("type") == "transaction-response":
                    ok += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ok


async def publisher_run(services: Services, concurrency: int) -> int:
    settings = services.settings.model_copy(update={"publish_concurrency": concurrency})
    async with HieClient(settings) as client:
        stats = await Publisher(replace(services, settings=settings), client).run(until_idle=True)
    return stats.published


async def requeue(services: Services) -> None:
    """A new HIE: forget what it holds and queue everyone (what ``concord publish --all`` does)."""
    async with services.engine.begin() as conn:
        await conn.execute(delete(hie_people))
    await backfill(services)


class Steps:
    """``--steps``: wall time spent in each step of a delivery, summed over a run (the calls are wrapped).

    Under concurrency the steps overlap, so the sums exceed the run's length; their shares of the
    delivery time say where a delivery waits. A write step includes waiting for the store's lock.
    """

    WRAPPED: Final = (
        ("claim + lease + ids, per claim (write txn)", Publisher, "_claim"),
        ("consent facts, per claim (read)", ClaimDecider, "read"),
        ("disclosure: decision + load + log", Disclosure, "person"),
        ("  load (read, shared)", PersonLoader, "load"),
        ("  audit log append (group commit)", Disclosure, "_append"),
        ("POST to the HIE", HieClient, "transaction"),
        ("finish (group commit)", Publisher, "_finish"),
        ("delivery, all steps", Publisher, "_deliver"),
    )

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        for label, owner, name in self.WRAPPED:
            setattr(owner, name, self._wrap(label, getattr(owner, name)))

    def _wrap(self, label: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        calls = self.calls.setdefault(label, [])

        async def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                calls.append(time.perf_counter() - started)

        return timed_call

    def report(self) -> None:
        whole = sum(self.calls["delivery, all steps"]) or 1.0
        claims = len(self.calls["claim + lease + ids, per claim (write txn)"])
        print(
            f"      {len(self.calls['delivery, all steps'])} deliveries, {claims} claim attempts", flush=True
        )
        for label, calls in self.calls.items():
            if calls:
                print(
                    f"      {label:<38} {len(calls):5} calls, mean {1000 * sum(calls) / len(calls):7.2f} ms, "
                    f"max {1000 * max(calls):7.0f} ms, {100 * sum(calls) / whole:5.1f}% of delivery time",
                    flush=True,
                )
        self.clear()

    def clear(self) -> None:
        for calls in self.calls.values():
            calls.clear()


async def timed(base: str, stub_pid: int, who: str, concurrency: int, coro: Any, expect: int) -> Run:
    await stub_call(base, "POST", "/_stub/reset")
    cpu_here, cpu_stub = time.process_time(), cpu_of(stub_pid)
    started = time.perf_counter()
    done = await coro
    seconds = time.perf_counter() - started
    run = Run(who, concurrency, done, seconds, time.process_time() - cpu_here, cpu_of(stub_pid) - cpu_stub)
    state = await stub_call(base, "GET", "/_stub/state")
    if done != expect or state["counts"].get("Patient") != expect:
        raise RuntimeError(f"{who}: {done} delivered, {state['counts']} at the HIE; expected {expect}")
    print(
        f"  {who:<9} c={concurrency:<3} {done} bundles in {seconds:6.2f}s = {run.rate:7.1f}/s; "
        f"CPU here {run.cpu_here:5.2f}s, stub {run.cpu_stub:5.2f}s",
        flush=True,
    )
    return run


async def throughput(
    services: Services,
    base: str,
    stub_pid: int,
    numbers: Sequence[str],
    levels: Sequence[int],
    repeats: int,
    steps: Steps | None,
) -> dict[tuple[str, int], Run]:
    bundles = []
    for number in numbers:
        bundles.append(publication(await load_person(services.engine, number), number, []))
    size = sum(len(b) for b in bundles) / len(bundles)
    print(f"{len(bundles)} bundles, {size / 1024:.1f} KiB on average", flush=True)
    best: dict[tuple[str, int], Run] = {}
    for _ in range(repeats):
        for c in levels:
            runs = [await timed(base, stub_pid, "baseline", c, baseline(base, bundles, c), len(numbers))]
            await requeue(services)
            runs.append(await timed(base, stub_pid, "publisher", c, publisher_run(services, c), len(numbers)))
            if steps is not None:
                steps.report()
            for run in runs:
                key = (run.who, c)
                if key not in best or run.rate > best[key].rate:
                    best[key] = run
    return best


# --- 2. outbox lag -----------------------------------------------------------------------------


def writer_main(settings_json: str, numbers: list[str], rate: float, seconds: float, out: Queue[Any]) -> None:
    """The writer process: toggle opt-outs at ``rate`` changes/s for ``seconds``."""
    settings = Settings.model_validate_json(settings_json)
    out.put(run_loop(write_changes(settings, numbers, rate, seconds)))  # the loop concord's commands run


async def write_changes(
    settings: Settings, numbers: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    services = await bootstrap(settings, run_migrations=False)
    opted_out: set[str] = set()
    gate = asyncio.Semaphore(32)
    latencies: list[float] = []
    errors = noops = 0

    async def change(k: int) -> None:
        nonlocal errors, noops
        number = numbers[k % len(numbers)]
        started = time.perf_counter()
        try:
            if number in opted_out:
                opted_out.discard(number)
                changed = bool(
                    await services.register.withdraw(number, None, Authority.LETTER, ACTOR, f"bench-{k}")
                )
            else:
                opted_out.add(number)
                result = await services.register.opt_out(
                    number, OptOutKind.LOCAL, Authority.LETTER, ACTOR, f"bench-{k}"
                )
                changed = result.changed
            if not changed:
                noops += 1
        except Exception:  # counted and reported
            errors += 1
        finally:
            latencies.append(time.perf_counter() - started)
            gate.release()

    try:
        total = int(rate * seconds)
        tasks = []
        cpu_before = time.process_time()
        started = time.perf_counter()
        for k in range(total):
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            tasks.append(asyncio.create_task(change(k)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        async with services.engine.connect() as conn:
            last_id = int((await conn.execute(select(func.max(outbox.c.id)))).scalar() or 0)
    finally:
        await services.close()
    latencies.sort()
    return {
        "changes": total,
        "last_id": last_id,
        "errors": errors,
        "noops": noops,
        "seconds": elapsed,
        "cpu": cpu,
        "write_p50": pick(latencies, 0.50),
        "write_p99": pick(latencies, 0.99),
        "opted_out": sorted(opted_out),
    }


def pick(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def outbox_lag(
    settings: Settings, stub_pid: int, numbers: list[str], rate: float, seconds: float, listen: bool
) -> dict[str, Any]:
    services = await bootstrap(settings)
    try:
        async with services.engine.connect() as conn:
            first_id = int((await conn.execute(select(func.max(outbox.c.id)))).scalar() or 0)
        stop = asyncio.Event()
        async with HieClient(settings) as client:
            publisher = Publisher(services, client)
            listener = asyncio.create_task(services.signal.listen(publisher.wake)) if listen else None
            running = asyncio.create_task(publisher.run(stop=stop))
            cpu_here, cpu_stub = time.process_time(), cpu_of(stub_pid)
            started = time.perf_counter()
            context = multiprocessing.get_context("spawn")
            results: Queue[Any] = context.Queue()
            writer = context.Process(
                target=writer_main, args=(settings.model_dump_json(), numbers, rate, seconds, results)
            )
            writer.start()
            while writer.is_alive() and results.empty():
                await asyncio.sleep(0.1)
            wrote: dict[str, Any] = results.get(timeout=60)
            writer.join(30)
            await drain(services)
            busy = time.perf_counter() - started
            cpu = (time.process_time() - cpu_here, cpu_of(stub_pid) - cpu_stub)
            measured = replace(publisher.stats, lags=[])

            # Only now, with every measured row delivered: withdraw what is still opted out, so a later
            # run starts with everyone shareable (not load offered during the measurement).
            async def withdraw(number: str) -> None:
                await services.register.withdraw(number, None, Authority.LETTER, ACTOR, "bench-end")

            for start in range(0, len(wrote["opted_out"]), 32):
                await asyncio.gather(*(withdraw(n) for n in wrote["opted_out"][start : start + 32]))
            await drain(services)
            stop.set()
            while not running.done():
                publisher.wake.set()
                await asyncio.wait({running}, timeout=0.05)
            running.result()
            stats = measured
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        async with services.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(outbox.c.created_at, outbox.c.sent_at, outbox.c.status).where(
                        outbox.c.id > first_id, outbox.c.id <= wrote["last_id"]
                    )
                )
            ).all()
    finally:
        await services.close()
    lags = sorted(
        (as_utc(sent) - as_utc(created)).total_seconds()
        for created, sent, status in rows
        if status == "sent" and sent is not None
    )
    return {
        **wrote,
        "rows": len(rows),
        "unsent": len(rows) - len(lags),
        "p50": pick(lags, 0.50),
        "p99": pick(lags, 0.99),
        "max": lags[-1] if lags else math.nan,
        "published": stats.published,
        "retracted": stats.retracted,
        "skipped": stats.skipped,
        "retried": stats.retried,
        "busy": stats.busy,
        "wall": busy,
        "cpu_here": cpu[0],
        "cpu_stub": cpu[1],
    }


async def drain(services: Services) -> None:
    """Until nothing is due or waiting to retry, for at most a minute."""
    for _ in range(600):
        async with services.engine.connect() as conn:
            if await box.due_or_waiting(conn) == 0:
                return
        await asyncio.sleep(0.1)


def print_lag(label: str, lag: dict[str, Any]) -> None:
    print(
        f"  {label}: {lag['changes']} changes in {lag['seconds']:.1f}s "
        f"= {lag['changes'] / lag['seconds']:.0f}/s "
        f"({lag['errors']} errors, {lag['noops']} no-ops; "
        f"a change took p50 {lag['write_p50'] * 1000:.0f} ms, "
        f"p99 {lag['write_p99'] * 1000:.0f} ms; writer CPU {lag['cpu']:.1f}s)\n"
        f"    {lag['rows']} outbox rows, {lag['unsent']} unsent; lag p50 {lag['p50'] * 1000:.0f} ms, "
        f"p99 {lag['p99'] * 1000:.0f} ms, max {lag['max'] * 1000:.0f} ms\n"
        f"    deliveries: {lag['published']} published, {lag['retracted']} retracted, {lag['skipped']} "
        f"skipped, {lag['retried']} retried, {lag['busy']} busy; publisher CPU {lag['cpu_here']:.1f}s, "
        f"stub CPU {lag['cpu_stub']:.1f}s over {lag['wall']:.1f}s "
        f"({(lag['published'] + lag['retracted']) / lag['wall']:.0f} deliveries/s)",
        flush=True,
    )


# --- main --------------------------------------------------------------------------------------


def print_throughput(best: dict[tuple[str, int], Run], levels: Sequence[int]) -> None:
    print("throughput (best of each)")
    for c in levels:
        b, p = best[("baseline", c)], best[("publisher", c)]
        ratio = p.rate / b.rate
        print(
            f"  c={c:<3} baseline {b.rate:7.1f}/s  publisher {p.rate:7.1f}/s  ratio {ratio:.2f}x "
            f"(target >= 0.25x: {'met' if ratio >= 0.25 else 'MISSED'}); CPU ms per bundle: "
            f"client {1000 * b.cpu_here / b.bundles:.2f} vs publisher {1000 * p.cpu_here / p.bundles:.2f}; "
            f"stub {1000 * b.cpu_stub / b.bundles:.2f} vs {1000 * p.cpu_stub / p.bundles:.2f}",
            flush=True,
        )


async def run(args: argparse.Namespace, work: Path) -> None:
    levels = [int(c) for c in args.concurrency.split(",")]
    async with stub_process() as (base, stub_pid), scratch_settings(work, args.postgres_url) as settings:
        settings = settings.model_copy(update={"hie_url": f"{base}/fhir"})
        services = await bootstrap(settings)
        try:
            started = time.perf_counter()
            numbers = await load_people(services, args.people)
            print(f"ingested {len(numbers)} people in {time.perf_counter() - started:.1f}s", flush=True)
            steps = Steps() if args.steps else None
            if args.repeats > 0:
                best = await throughput(services, base, stub_pid, numbers, levels, args.repeats, steps)
                print()
                print_throughput(best, levels)
            else:
                await requeue(services)  # everyone at the HIE before the lag run, as after a throughput run
                await publisher_run(services, 8)
                if steps is not None:
                    steps.clear()
        finally:
            await services.close()
        lag_people = numbers[: args.lag_people] if args.lag_people else numbers
        for rate in [float(r) for r in args.rate.split(",") if float(r) > 0] if args.seconds > 0 else []:
            lag_settings = settings.model_copy(
                update={"redis_url": args.redis_url, "redis_prefix": f"bench-{uuid.uuid4().hex[:12]}:"}
            )
            print()
            print(f"outbox lag at {rate:.0f} changes/s for {args.seconds:.0f}s over {len(lag_people)} people")
            lag = await outbox_lag(lag_settings, stub_pid, lag_people, rate, args.seconds, listen=True)
            print_lag("Redis wake-ups", lag)
            if steps is not None:
                steps.report()
            p99_ok = lag["p99"] < 1.0 and lag["unsent"] == 0
            print(f"  lag p99 {lag['p99'] * 1000:.0f} ms (target < 1000 ms: {'met' if p99_ok else 'MISSED'})")
            if args.poll_too:
                polled = await outbox_lag(
                    lag_settings, stub_pid, lag_people, rate, args.seconds, listen=False
                )
                print_lag("polling only (no listener)", polled)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=2_000)
    parser.add_argument("--concurrency", default="8,64", help="comma-separated levels")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="alternating runs per level, best reported (0: skip throughput)",
    )
    parser.add_argument(
        "--rate", default="200", help="changes/s written in the lag run (comma-separated: one run each)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag run (0: skip it)")
    parser.add_argument("--lag-people", type=int, default=0, help="people the writer toggles (0: all)")
    parser.add_argument("--poll-too", action="store_true", help="also the lag run without the Redis listener")
    parser.add_argument("--steps", action="store_true", help="time each step of the publisher's deliveries")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", action="store_true", help="the store on PostgreSQL (scratch schema)")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if not args.postgres:
        args.postgres_url = None
    started = time.perf_counter()
    print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_loop(run(args, Path(tmp)))  # uvloop, as `concord publish` runs
    print("load average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
