"""A region at scale: ingest, then mixed load on 2 API processes and 2 publishers while the HIE misbehaves.

    python bench/scale.py                                       # 909,091 people, 500 req/s for 300 s
    python bench/scale.py --people 20000 --rate 200 --duration 60

The issue asks for 1,000,000 people. Synthetic people only ever get NHS numbers from the 999 test
range, which holds 909,091 valid ones (999 and six digits, then a check digit that rules out one
in eleven), so that is the default and the most there can be.

Not part of the test run. Needs the PostgreSQL (127.0.0.1:5432, database ``test``) and Redis
(127.0.0.1:6379) services; ``CONCORD_TEST_POSTGRES_URL`` / ``CONCORD_TEST_REDIS_URL`` override them.
The topology is the integration test's (``tests/e2e/topology.py``): a scratch PostgreSQL schema and
Redis prefix (removed afterwards), ``--api-workers`` ``concord serve`` processes on ports of their own
(the client spreads requests over them as a load balancer would), ``--publishers`` ``concord publish``
processes and ``concord hie-stub`` injecting faults (``--faults``: 500s, 429s, resets, hangs and late
answers; the publishers' read timeout is shorter than the stub's delay, so a hang or a late answer is
a timeout after the HIE applied the transaction, and the retry must be idempotent).

1. Ingest: ``concord synth --sources gp`` then ``concord ingest --source gp`` (its validation workers)
   into PostgreSQL while the publishers run; rows/s = extract rows / the ingest command's wall time.
   Then the initial publication drains (deliveries/s reported).
2. Load: requests at a fixed arrival rate (``--rate``/s for ``--duration`` s) from one aiohttp client;
   request i is due at start + i/rate and its latency runs from that due time to the answer, so a
   slow server cannot slow the offered load (no coordinated omission). Mix: 90% reads (half Patient
   search by NHS number, half CarePlan search by ``subject:identifier``), 9% pushes (a FHIR
   transaction Bundle from a partner EPR with a new version of its care plan for an existing person),
   1% opt-outs (``POST /fhir/Consent``). People are drawn uniformly from those stored.
3. After the load the outbox drains; lag = ``sent_at - created_at`` of every outbox row the load
   created (change → delivered to the HIE, retries included).
4. End state: every shareable person at the HIE exactly once at the latest content, no opted-out
   person's data there, no NHS number in any process's log, and ``concord audit verify`` on the log
   after every process stopped.

To show what limited throughput, the report has every process's CPU seconds during the load, the
machine's busy share, what PostgreSQL's busy backends were waiting on (``pg_stat_activity`` sampled
twice a second) and how often the processes logged a refused connection, a withheld disclosure or
unreadable consent facts. Results: bench/RESULTS.md, "Scale run (issue 7)".
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/scale.py`, this file's directory is first on sys.path and bench/consent.py would
# shadow the `consent` package: drop that entry. The topology helpers live beside the e2e tests.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from reachable import POSTGRES_URL, REDIS_URL
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from topology import NHS, Client, Region, end_state, get, opt_out, region, wait_drained

from gateway.store.schema import audit_log, outbox, resources
from gateway.synth.population import MAX_PEOPLE

FAULTS = (
    "--error-rate 0.02 --throttle-rate 0.01 --retry-after 1 --reset-rate 0.01 "
    "--hang-rate 0.005 --delay-rate 0.005 --delay-seconds 3 --seed 7"
)
READ_TIMEOUT = "2"  # the publishers' HIE read timeout: shorter than the stub's --delay-seconds
TOKEN_REFRESH_SECONDS = 240  # access tokens live at most 300 s
#: An NHS number in a log line. Bounded by non-hex characters: a request id (32 hex digits) may hold
#: "999" and seven digits by chance, and is not patient data.
NUMBER = re.compile(rb"(?<![0-9A-Fa-f])999\d{7}(?![0-9A-Fa-f])")


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late_sends: list[float] = field(default_factory=list)
    opted_out: set[str] = field(default_factory=set)

    def record(self, kind: str, due: float, status: int | str) -> None:
        self.latencies.setdefault(kind, []).append(time.monotonic() - due)
        key = f"{kind} {status}"
        self.statuses[key] += 1
        if not (isinstance(status, int) and 200 <= status < 300):
            self.errors[key] += 1


class Tokens:
    """Access tokens for the load's clients, renewed before they expire."""

    def __init__(self, topology: Region, clients: dict[str, Client]) -> None:
        self.topology, self.clients = topology, clients
        self.values: dict[str, str] = {}
        self.at = float("-inf")

    def refresh_if_due(self) -> None:
        if time.monotonic() - self.at > TOKEN_REFRESH_SECONDS:
            self.values = {k: self.topology.token(c) for k, c in self.clients.items()}
            self.at = time.monotonic()

    def header(self, name: str, kind: str = "application/fhir+json") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.values[name]}", "Content-Type": kind}


def care_plan_push(number: str, version: int) -> bytes:
    """The EPR's care plan for a person, a new version each push (CarePlans only: no demographics)."""
    plan = {
        "resourceType": "CarePlan",
        "id": f"epr-plan-{number}",
        "status": "active",
        "intent": "plan",
        "title": f"Community nursing plan, review {version}",
        "subject": {"identifier": {"system": NHS, "value": number}},
    }
    entry = {"resource": plan, "request": {"method": "PUT", "url": f"CarePlan/{plan['id']}"}}
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]}).encode()


async def send(
    session: aiohttp.ClientSession,
    tally: Tally,
    kind: str,
    due: float,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> None:
    try:
        async with session.request(method, url, data=body, headers=headers) as answer:
            await answer.read()
            tally.record(kind, due, answer.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.record(kind, due, type(exc).__name__)


async def load(
    topology: Region, tokens: Tokens, people: list[str], rate: float, duration: float, seed: int
) -> Tally:
    """Open-loop load: request i is sent at start + i/rate whatever became of the earlier ones."""
    rng = random.Random(seed)
    tally = Tally()
    pushes: Counter[str] = Counter()
    total = int(rate * duration)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=2000, limit_per_host=1000)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic() + 0.5
        for i in range(total):
            due = start + i / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            tally.late_sends.append(time.monotonic() - due)
            tokens.refresh_if_due()
            base = topology.apis[i % len(topology.apis)]
            number = rng.choice(people)
            draw = rng.random()
            if draw < 0.45:
                kind, method, url = "read Patient", "GET", f"{base}/fhir/Patient?identifier={NHS}%7C{number}"
                call = send(session, tally, kind, due, method, url, tokens.header("reader"))
            elif draw < 0.90:
                url = f"{base}/fhir/CarePlan?subject:identifier={NHS}%7C{number}"
                call = send(session, tally, "read CarePlan", due, "GET", url, tokens.header("reader"))
            elif draw < 0.99:
                pushes[number] += 1
                body = care_plan_push(number, pushes[number])
                call = send(session, tally, "push", due, "POST", f"{base}/fhir", tokens.header("epr"), body)
            else:
                tally.opted_out.add(number)
                body = json.dumps(opt_out(number)).encode()
                call = send(
                    session,
                    tally,
                    "opt-out",
                    due,
                    "POST",
                    f"{base}/fhir/Consent",
                    tokens.header("reader"),
                    body,
                )
            task = asyncio.create_task(call)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    return tally


async def outbox_lag(
    engine: AsyncEngine, since: datetime, until: datetime
) -> tuple[list[float], Counter[str]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(outbox.c.status, outbox.c.created_at, outbox.c.sent_at).where(
                    outbox.c.created_at >= since, outbox.c.created_at <= until
                )
            )
        ).all()
    lags = [(sent - created).total_seconds() for status, created, sent in rows if status == "sent" and sent]
    return lags, Counter(status for status, _, _ in rows)


async def sample_waits(engine: AsyncEngine, samples: Counter[str], stop: asyncio.Event) -> None:
    """What PostgreSQL's busy backends are doing, twice a second: ``wait event | statement start``.

    Every database ``test`` backend is counted (other clients of the service too; they are few).
    """
    query = text(
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'on CPU'), left(query, 40) "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND state NOT IN ('idle')"
    )
    async with engine.connect() as conn:
        while not stop.is_set():
            for wait, statement in (await conn.execute(query)).all():
                samples[f"{wait} | {' '.join(str(statement).split()[:4])}"] += 1
            await conn.rollback()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


def log_messages(topology: Region, pattern: str) -> int:
    return sum(log.read_text().count(pattern) for log in (topology.root / "logs").glob("*.log"))


async def stored_people(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        query = select(resources.c.nhs_number).where(resources.c.resource_type == "Patient")
        return sorted(n for (n,) in (await conn.execute(query)).all() if n)


async def audit_entries(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())


def numbers_in_logs(topology: Region) -> int:
    return sum(len(NUMBER.findall(log.read_bytes())) for log in (topology.root / "logs").glob("*.log"))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


#: Tables that grow with the population and are read by key (analyzed as autovacuum would).
GROWING = ("resources", "contributions", "consents", "conflicts", "quarantine")


class QueueVacuum:
    """VACUUM (ANALYZE) of the queue tables and ANALYZE of the growing ones every ``every`` seconds.

    Only where the server runs with ``autovacuum = off`` (as this project's test server does), on a
    thread of its own. In production autovacuum visits the outbox and hie_people after about 1,000
    dead rows (migration 0007); without it claims read through every dead index entry. It also
    analyzes a table once a tenth of it is new, which makes every connection plan its prepared
    statements afresh. Without that, a generic plan made while ``resources`` was small (a sequential
    scan) stayed in use as it grew: at 60,000 people the ingest's PostgreSQL backend had read 224
    million rows in 5,000 scans, and ingest had slowed to 175 rows/s (measured).
    """

    def __init__(self, schema: str, every: float = 15.0) -> None:
        self.schema, self.every, self.runs = schema, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    async def __aenter__(self) -> QueueVacuum:
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)

    async def _loop(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(
            POSTGRES_URL.replace("+asyncpg", ""), server_settings={"search_path": self.schema}
        )
        try:
            if await conn.fetchval("SHOW autovacuum") == "on":
                return
            while not self._stop.wait(0):
                for table in ("outbox", "hie_people"):
                    await conn.execute(f"VACUUM (ANALYZE) {table}")
                for table in GROWING:
                    await conn.execute(f"ANALYZE {table}")
                self.runs += 1
                await asyncio.to_thread(self._stop.wait, self.every)
        finally:
            await conn.close()


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"args": vars(args), "load_average_before": os.getloadavg()}
    extra = {
        "CONCORD_HIE_READ_TIMEOUT": READ_TIMEOUT,
        "CONCORD_PUBLISH_BACKOFF_SECONDS": "0.2",
        "CONCORD_PUBLISH_BACKOFF_CAP_SECONDS": "5",
        "CONCORD_PUBLISH_LEASE_SECONDS": "15",
    }
    async with (
        region(
            work,
            postgres_url=POSTGRES_URL,
            redis_url=REDIS_URL,
            apis=args.api_workers,
            publishers=args.publishers,
            stub_options=args.faults.split(),
            extra_env=extra,
        ) as topology,
        QueueVacuum(str(topology.settings.database_schema)) as vacuum,
    ):
        engine = topology.engine()
        try:
            extracts = work / "extracts"
            made = topology.cli(
                "synth",
                "--people",
                str(args.people),
                "--seed",
                str(args.seed),
                "--sources",
                "gp",
                "--out",
                str(extracts),
                timeout=36000,
            )
            assert made.returncode == 0, made.stderr
            started = time.monotonic()
            ingested = topology.cli(
                "ingest", "--source", "gp", "--json", str(extracts / "gp.csv"), timeout=36000
            )
            ingest_seconds = time.monotonic() - started
            assert ingested.returncode in (0, 1), ingested.stderr
            summary = json.loads(ingested.stdout)
            report["ingest"] = {
                "rows": summary["records"],
                "accepted": summary["accepted"],
                "quarantined": summary["quarantined"],
                "seconds": round(ingest_seconds, 1),
                "rows_per_second": round(summary["records"] / ingest_seconds),
            }
            print(f"ingest: {summary['records']:,} rows in {ingest_seconds:.1f} s", flush=True)
            drained = await wait_drained(topology, engine, args.drain_timeout)
            published = time.monotonic() - started
            people = await stored_people(engine)
            report["initial_publication"] = {
                "people": len(people),
                "seconds_after_ingest_started": round(published, 1),
                "drain_after_ingest_seconds": round(drained, 1),
                "deliveries_per_second": round(len(people) / published, 1),
            }
            print(
                f"initial publication: {len(people):,} people, done {published:.1f} s after the ingest began",
                flush=True,
            )

            clients = {
                "reader": topology.add_client(
                    "reader",
                    "RAT",
                    "provider",
                    "system/Patient.read system/CarePlan.read system/Consent.write",
                ),
                "epr": topology.add_client("epr", "Y90002", "source", "system/CarePlan.write", source="fhir"),
            }
            tokens = Tokens(topology, clients)
            pids = {name: p.pid for name, p in topology.processes.items()}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {
                "client": time.process_time()
            }
            busy_before = machine_busy()
            since = datetime.now(UTC)
            load_started = time.monotonic()
            waits: Counter[str] = Counter()
            sampling = asyncio.Event()
            sampler = asyncio.create_task(sample_waits(engine, waits, sampling))
            tally = await load(topology, tokens, people, args.rate, args.duration, args.seed)
            sampling.set()
            await sampler
            load_seconds = time.monotonic() - load_started
            until = datetime.now(UTC)
            busy_after = machine_busy()
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            cpu["client"] = time.process_time() - cpu_before["client"]
            all_latencies = [v for values in tally.latencies.values() for v in values]
            report["load"] = {
                "offered": int(args.rate * args.duration),
                "seconds": round(load_seconds, 1),
                "answered_per_second": round(len(all_latencies) / load_seconds, 1),
                "p50_ms": round(percentile(all_latencies, 0.5) * 1000, 1),
                "p99_ms": round(percentile(all_latencies, 0.99) * 1000, 1),
                "by_kind": {
                    kind: {
                        "count": len(v),
                        "p50_ms": round(percentile(v, 0.5) * 1000, 1),
                        "p99_ms": round(percentile(v, 0.99) * 1000, 1),
                    }
                    for kind, v in sorted(tally.latencies.items())
                },
                "errors": dict(tally.errors),
                "statuses": dict(tally.statuses),
                "client_late_send_p99_ms": round(percentile(tally.late_sends, 0.99) * 1000, 1),
                "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
                "machine_busy_share": round(
                    (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]), 2
                ),
                "load_average_after": os.getloadavg(),
                "postgres_busy_backends_top": dict(waits.most_common(12)),
                "postgres_samples": sum(waits.values()),
            }
            print(json.dumps(report["load"], indent=1), flush=True)
            drain = await wait_drained(topology, engine, args.drain_timeout)
            lags, by_status = await outbox_lag(engine, since, until)
            report["outbox"] = {
                "rows_created_during_load": sum(by_status.values()),
                "by_status": dict(by_status),
                "drained_seconds_after_load": round(drain, 1),
                "lag_p50_ms": round(percentile(lags, 0.5) * 1000, 1),
                "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1),
                "lag_max_ms": round(max(lags, default=float("nan")) * 1000, 1),
            }
            state = await end_state(topology, engine)
            stub_state = await asyncio.to_thread(_stub_state, topology)
            report["end_state"] = {
                "people": state.people,
                "shareable": state.shareable,
                "opted_out": state.opted_out,
                "opted_out_during_load": len(tally.opted_out),
                "at_hie": state.at_hie,
                "problems": state.problems[:20],
                "problem_count": len(state.problems),
                "faults_injected": stub_state["faults"],
                "hie_transactions": stub_state["transactions"],
                "audit_entries": await audit_entries(engine),
            }
        finally:
            await engine.dispose()
        exits = topology.stop_all()
        report["exit_codes"] = exits
        report["queue_vacuums_by_the_bench"] = vacuum.runs  # 0: the server's autovacuum was on
        report["nhs_numbers_in_logs"] = numbers_in_logs(topology)
        report["log_lines_too_many_clients"] = log_messages(topology, "too many clients")
        report["log_lines_audit_withheld"] = log_messages(topology, "the audit log could not be written")
        report["log_lines_facts_unavailable"] = log_messages(topology, "consent facts could not be read")
        started = time.monotonic()
        verified = topology.cli("audit", "verify", "--json", timeout=36000)
        result = json.loads(verified.stdout) if verified.stdout else {}
        report["audit_verify"] = {
            "exit_code": verified.returncode,
            "intact": result.get("intact"),
            "entries": result.get("entries"),
            "seconds": round(time.monotonic() - started, 1),
        }
    return report


def _stub_state(topology: Region) -> Any:
    return get(f"{topology.stub}/_stub/state?brief", timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--people",
        type=int,
        default=MAX_PEOPLE,
        help=f"synthetic people (default and most: {MAX_PEOPLE:,}, every valid number of the 999 test range)",
    )
    parser.add_argument("--rate", type=float, default=500, help="requests/s offered during the load")
    parser.add_argument("--duration", type=float, default=300, help="seconds of load")
    parser.add_argument("--api-workers", type=int, default=2, help="concord serve processes")
    parser.add_argument("--publishers", type=int, default=2, help="concord publish processes")
    parser.add_argument("--faults", default=FAULTS, help="concord hie-stub options")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drain-timeout", type=float, default=7200, help="seconds to wait for the outbox")
    parser.add_argument("--work", type=Path, help="where logs and extracts go (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="also write the report here as JSON")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="concord-scale-"))
    report = asyncio.run(run(args, work))
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"logs in {work / 'logs'}", file=sys.stderr)


if __name__ == "__main__":
    main()
