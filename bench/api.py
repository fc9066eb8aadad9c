"""API speed: concord's FHIR searches against a bare FastAPI ceiling and a fhirstarter server, same run.

    python bench/api.py --people 10000 --seconds 20 --rounds 2   # as in RESULTS.md (the defaults)
    python bench/api.py --people 2000 --seconds 5        # a quick look
    python bench/api.py --stores sqlite --profile        # and py-spy profiles of concord under the load

What is measured, for two requests, each over loopback with wrk (one thread, 64 connections) cycling
through every stored person's NHS number in a shuffled order (so the consent cache and the store see
the spread of a real population):

- ``GET /fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{n}``
- ``GET /fhir/CarePlan?subject:identifier=https://fhir.nhs.uk/Id/nhs-number|{n}``

against three servers, each started as its own process with the same uvicorn settings (uvloop,
httptools, no uvicorn access log, no server header) and the same number of workers:

- ``concord serve``: authenticated (a bearer token from ``concord token`` on SQLite, from ``POST /token``
  with a signed client assertion on PostgreSQL), consent-checked and logged, as an operator runs it
  (log level info: one access-log line per request). SQLite with one worker and with two (the
  one-machine deployment of docs/operations.md; ``--sqlite-workers``); PostgreSQL + Redis with two.
  Each load checks that the audit log gained one ``search`` entry per request the access log
  shows answered;
- the ceiling: a bare FastAPI app whose two routes return fixed bytes (a real concord answer to the
  same request, captured first) through ``Response``, serialised once with orjson;
- fhirstarter (PyPI, the FastAPI FHIR framework) serving the same Patients and CarePlans from memory
  (validated into fhir.resources models once at start), searching Patients by identifier and
  CarePlans by ``subject=Patient/{id}`` (it has no ``:identifier`` modifier), with no authentication,
  consent or logging. fhirstarter pins an older FastAPI than concord, so it runs from its own virtual
  environment (``--fhirstarter-python``; made on first use under ``~/.cache/concord-bench``).

Each server is measured with as many workers as the concord run it is the baseline of, in the same
run: all three are up at once and loaded in turn, ``--rounds`` times, so ratios hold on a shared
machine whose absolute figures drift. Besides req/s and latency, each load reports the CPU time the
server's processes used per request, which a busy machine disturbs far less, and the CPU time the
machine's PostgreSQL and Redis server processes used per request (theirs, on a shared machine, includes
whatever else uses them at the time). Targets (issue):
concord ≥ 0.35x the bare ceiling, ≥ 5x fhirstarter, p99 < 25 ms at 64 connections.

The rate limiter (when present) runs with a limit too high to refuse anything: its cost is measured,
its 429s are not. Needs ``wrk`` (Debian package) and, for PostgreSQL, the services on 127.0.0.1.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

HERE = Path(__file__).resolve().parent
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
ID_KEY = "bench-id-key-0123456789abcdef0123456789"
CONNECTIONS = 64
SCOPES = "system/Patient.read system/CarePlan.read"
FHIRSTARTER = "fhirstarter==4.2.0"
FHIRSTARTER_VENV = Path.home() / ".cache" / "concord-bench" / "fhirstarter-venv"
#: The two requests; ``{n}`` is an NHS number, ``{id}`` the shared Patient's id.
QUERIES = {
    "Patient search by identifier": (
        "/fhir/Patient?identifier=" + quote(NHS_SYSTEM + "|", safe=":/") + "{n}",
        "/Patient?identifier=" + quote(NHS_SYSTEM + "|", safe=":/") + "{n}",
    ),
    "CarePlan search by subject:identifier": (
        "/fhir/CarePlan?subject:identifier=" + quote(NHS_SYSTEM + "|", safe=":/") + "{n}",
        "/CarePlan?subject=Patient/{id}",
    ),
}
#: wrk: cycle through the paths in BENCH_PATHS with BENCH_TOKEN; print the summary as one JSON line.
WRK_SCRIPT = r"""
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local token = os.getenv("BENCH_TOKEN") or ""
local headers = {}
if token ~= "" then headers["Authorization"] = "Bearer " .. token end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# ---------------------------------------------------------------------------------------------------
# The two baseline servers. They run in their own processes (``serve-bare``, ``serve-fhirstarter``):
# nothing here imports concord, so the fhirstarter environment can run this file.


def bare_app() -> Any:
    """The ceiling: FastAPI answering each search path with fixed bytes (a captured concord answer)."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    bodies = Path(os.environ["BENCH_BARE_BODIES"])
    patient = orjson.dumps(orjson.loads((bodies / "Patient.json").read_bytes()))
    careplan = orjson.dumps(orjson.loads((bodies / "CarePlan.json").read_bytes()))
    app = FastAPI()

    @app.get("/fhir/Patient")
    async def patients() -> Response:
        return Response(patient, media_type="application/fhir+json")

    @app.get("/fhir/CarePlan")
    async def careplans() -> Response:
        return Response(careplan, media_type="application/fhir+json")

    return app


def fhirstarter_app() -> Any:
    """fhirstarter serving the exported Patients and CarePlans from memory (fhir.resources R4B models)."""
    os.environ.setdefault("FHIR_SEQUENCE", "R4B")
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.careplan import CarePlan
    from fhir.resources.R4B.patient import Patient
    from fhirstarter import FHIRProvider, FHIRStarter, InteractionContext  # type: ignore[import-not-found]

    data = Path(os.environ["BENCH_FHIRSTARTER_DATA"])
    patients: dict[str, Any] = {}
    for line in (data / "Patient.ndjson").open("rb"):
        patient = Patient.model_validate_json(line)
        for ident in patient.identifier or ():
            if ident.system == NHS_SYSTEM:
                patients[f"{NHS_SYSTEM}|{ident.value}"] = patient
    plans: dict[str, list[Any]] = defaultdict(list)
    for line in (data / "CarePlan.ndjson").open("rb"):
        plan = CarePlan.model_validate_json(line)
        plans[str(plan.subject.reference)].append(plan)

    def searchset(found: list[Any]) -> Any:
        entry = [{"resource": r, "search": {"mode": "match"}} for r in found]
        return Bundle.model_validate({"type": "searchset", "total": len(found), "entry": entry or None})

    async def patient_search(context: InteractionContext, identifier: str | None) -> Bundle:
        found = patients.get(identifier or "")
        bundle: Bundle = searchset([found] if found is not None else [])
        return bundle

    async def careplan_search(context: InteractionContext, subject: str | None) -> Bundle:
        bundle: Bundle = searchset(plans.get(subject or "", []))
        return bundle

    provider = FHIRProvider()
    provider.search_type(Patient)(patient_search)
    provider.search_type(CarePlan)(careplan_search)
    app = FHIRStarter(title="fhirstarter baseline")
    app.add_providers(provider)
    return app


def serve_baseline(factory: str, port: int, workers: int) -> None:
    """Run one baseline under uvicorn with the settings ``concord serve`` uses."""
    import uvicorn

    uvicorn.run(
        f"api:{factory}",
        factory=True,
        app_dir=str(HERE),
        host="127.0.0.1",
        port=port,
        workers=workers,
        loop="auto",
        http="auto",
        log_level="warning",
        access_log=False,
        server_header=False,
    )


# ---------------------------------------------------------------------------------------------------
# Orchestration (the benchmark process itself, in concord's environment).


@dataclass
class Store:
    """One concord deployment: its environment, its client, its audit log."""

    name: str
    workers: int
    env: dict[str, str]
    key_file: Path
    schema: str | None = None
    client_id: str = ""
    kid: str = ""
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Load:
    server: str
    workers: int
    query: str
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    #: Entries the audit log gained, and requests concord's access log shows answered 200 (wrk does not
    #: count the up to 64 requests still in flight when it stops; the server answers and logs them).
    audit_entries: int | None = None
    answered: int | None = None
    #: CPU time the server's processes (all workers) used during the load: robust to a busy machine.
    cpu_seconds: float = 0.0
    #: The machine's 1-minute load average as the load started (2 cores: above 2, others are busy too).
    load_average: float = 0.0
    #: CPU time PostgreSQL's and Redis's server processes used during the load (the whole machine's).
    services_cpu_seconds: float = 0.0
    #: The concord run this load belongs to (its server's name): baselines are compared within it.
    run: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Server CPU milliseconds per request (the store's own processes, PostgreSQL's, not counted)."""
        return 1000 * self.cpu_seconds / self.requests if self.requests else 0.0

    @property
    def services_cpu_ms(self) -> float:
        """PostgreSQL's and Redis's CPU milliseconds per request (other users of theirs included)."""
        return 1000 * self.services_cpu_seconds / self.requests if self.requests else 0.0


@dataclass
class Results:
    loads: list[Load] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median(self, server: str, workers: int, query: str, run: str) -> Load | None:
        """The median round (by throughput) of one server, request and worker count in the concord run
        ``run``; of two, the slower."""
        rounds = sorted(
            (x for x in self.loads if (x.server, x.workers, x.query, x.run) == (server, workers, query, run)),
            key=lambda x: x.rps,
        )
        return rounds[(len(rounds) - 1) // 2] if rounds else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCORD_", "PROMETHEUS_"))}
    # The rate limiter's code runs, but with a bucket this size it never refuses.
    env["CONCORD_RATE_LIMIT_PER_SECOND"] = "1000000"
    env["CONCORD_RATE_LIMIT_BURST"] = "1000000"
    return env


def concord(env: Mapping[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode not in ok:
        raise SystemExit(f"concord {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


SERVICES = frozenset({"postgres", "redis-server"})


def services_cpu_seconds() -> float:
    """User + system CPU seconds so far of every PostgreSQL and Redis server process (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            name, _, rest = stat.read_text().partition(" (")[2].rpartition(")")
            if name in SERVICES:
                fields = rest.split()
                total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited {process.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server was not ready in {seconds} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def running(
    command: list[str], env: Mapping[str, str], ready_url: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(process, ready_url, log)
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wrk(url: str, paths: Path, token: str, seconds: float, script: Path, threads: int = 1) -> dict[str, int]:
    env = {**os.environ, "BENCH_PATHS": str(paths), "BENCH_TOKEN": token}
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    summary: dict[str, int] = json.loads(line.removeprefix("BENCH "))
    return summary


def to_load(server: str, workers: int, query: str, summary: Mapping[str, int]) -> Load:
    errors = {k: summary[k] for k in ("connect", "read", "write", "status", "timeout") if summary[k]}
    return Load(
        server=server,
        workers=workers,
        query=query,
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
        errors=errors,
    )


# --- preparing the data --------------------------------------------------------------------------------


def prepare_extracts(work: Path, people: int) -> Path:
    extracts = work / "extracts"
    concord(base_env(), "synth", "--people", str(people), "--out", str(extracts), "--sources", "gp,community")
    return extracts


def ingest(store: Store, extracts: Path) -> None:
    for source, name in (("gp", "gp.csv"), ("community", "community.jsonl")):
        started = time.perf_counter()
        concord(store.env, "ingest", "--source", source, str(extracts / name), ok=(0, 1))
        print(f"  {store.name}: ingested {name} in {time.perf_counter() - started:.0f} s", flush=True)


def register_client(store: Store) -> None:
    pem = store.key_file
    concord(
        store.env,
        *("clients", "add", "--name", "bench", "--ods-code", "RAT", "--role", "provider"),
        *("--scopes", SCOPES, "--generate-key", str(pem)),
    )
    listed = json.loads(concord(store.env, "clients", "list", "--json"))
    client = next(c for c in listed if c["name"] == "bench")
    store.client_id, store.kid = client["client_id"], client["key_ids"][0]


def sqlite_store(work: Path) -> Store:
    data = work / "sqlite"
    env = {**base_env(), "CONCORD_DATA_DIR": str(data), "CONCORD_ID_KEY": ID_KEY}
    return Store("SQLite", 1, env, work / "sqlite-client.pem")


def postgres_store(work: Path) -> Store:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_postgres(f'CREATE SCHEMA "{schema}"'))
    key = work / "audit-signing.key"
    env = {
        **base_env(),
        "CONCORD_DATA_DIR": str(work / "postgres"),
        "CONCORD_DATABASE_URL": POSTGRES_URL,
        "CONCORD_DATABASE_SCHEMA": schema,
        "CONCORD_AUDIT_SIGNING_KEY_FILE": str(key),
        "CONCORD_TOKEN_SECRET": secrets.token_urlsafe(48),
        "CONCORD_ID_KEY": ID_KEY,
        "CONCORD_REDIS_URL": REDIS_URL,
        "CONCORD_REDIS_PREFIX": f"{schema}:",
    }
    concord(env, "audit", "new-key", "--out", str(key))
    return Store("PostgreSQL + Redis", 2, env, work / "postgres-client.pem", schema=schema)


async def _postgres(statement: str) -> int:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        value = await conn.fetchval(statement)
        return int(value or 0)
    finally:
        await conn.close()


def drop_postgres(store: Store) -> None:
    import redis

    if store.schema is None:
        return
    asyncio.run(_postgres(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE'))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{store.schema}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def audit_entries(store: Store) -> int:
    """Search entries the bench client has in the store's audit log (one per request it made)."""
    query = "SELECT count(*) FROM {table} WHERE action = 'search' AND client_id = '{client}'"
    if store.schema is None:
        path = Path(store.env["CONCORD_DATA_DIR"]) / "concord.db"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute(query.format(table="audit_log", client=store.client_id)).fetchone()
        return int(row[0])
    table = f'"{store.schema}".audit_log'
    return asyncio.run(_postgres(query.format(table=table, client=store.client_id)))


def population(store: Store, out: Path) -> list[tuple[str, str]]:
    """(NHS number, Patient id) of every stored Patient; every Patient and CarePlan as NDJSON in ``out``."""
    out.mkdir(exist_ok=True)
    path = Path(store.env["CONCORD_DATA_DIR"]) / "concord.db"
    people: list[tuple[str, str]] = []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        for rtype in ("Patient", "CarePlan"):
            with (out / f"{rtype}.ndjson").open("wb") as fh:
                rows = conn.execute(
                    "SELECT id, nhs_number, content FROM resources WHERE resource_type = ? ORDER BY id",
                    (rtype,),
                )
                for rid, number, content in rows:
                    fh.write(content.encode() + b"\n")
                    if rtype == "Patient":
                        people.append((number, rid))
    return people


def write_paths(work: Path, people: list[tuple[str, str]], seed: int) -> dict[tuple[str, str], Path]:
    """For each query and each server kind (concord and the ceiling, or fhirstarter), a shuffled URL list."""
    order = list(people)
    random.Random(seed).shuffle(order)
    files: dict[tuple[str, str], Path] = {}
    for query, (ours, theirs) in QUERIES.items():
        for kind, template in (("concord", ours), ("fhirstarter", theirs)):
            path = work / f"paths-{kind}-{len(files)}.txt"
            path.write_text("".join(template.format(n=n, id=rid) + "\n" for n, rid in order))
            files[(kind, query)] = path
    return files


# --- tokens --------------------------------------------------------------------------------------------


def token_for(store: Store) -> str:
    """SQLite: ``concord token``. PostgreSQL: ``POST /token`` with an ES384 client assertion."""
    if store.schema is None:
        return concord(store.env, "token", "--client", "bench").strip()
    import httpx
    import jwt
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(store.key_file.read_bytes(), password=None)
    now = int(time.time())
    claims = {
        "iss": store.client_id,
        "sub": store.client_id,
        "aud": f"{store.base}/token",
        "iat": now,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    assertion = jwt.encode(claims, key, algorithm="ES384", headers={"kid": store.kid})  # type: ignore[arg-type]
    answer = httpx.post(
        f"{store.base}/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": SCOPES,
        },
        timeout=10,
    )
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


# --- the runs ------------------------------------------------------------------------------------------


def check_answers(base: str, token: str, paths: Path, want_entries: bool) -> bytes:
    """Ask the first few URLs once: all 200, and at least one with a match; a sample body."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sample = b""
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        for url in paths.read_text().splitlines()[:50]:
            answer = client.get(url)
            if answer.status_code != 200:
                raise SystemExit(f"GET {url}: {answer.status_code} {answer.text[:500]}")
            if answer.json().get("entry") and not sample:
                sample = answer.content
    if want_entries and not sample:
        raise SystemExit(f"none of the first 50 searches of {paths.name} found anything")
    return sample


@dataclass
class Server:
    """One server under test: how to start it, which URL list it takes, how it authenticates."""

    name: str
    command: list[str]
    env: dict[str, str]
    kind: str  # which URL lists: "concord" (concord and the ceiling) or "fhirstarter"
    ready: str
    port: int
    log: Path
    store: Store | None = None
    pid: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answered(self, query: str) -> int:
        """Requests of ``query``'s route answered 200, by concord's access log (one JSON line each)."""
        route = '"route":"' + QUERIES[query][0].partition("?")[0] + '"'
        with self.log.open(encoding="utf-8", errors="replace") as lines:
            return sum(1 for line in lines if route in line and '"status":200' in line)


def concord_server(store: Store, log: Path) -> Server:
    store.port = free_port()
    store.env["CONCORD_PUBLIC_URL"] = store.base
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(store.port)]
    command += ["--workers", str(store.workers)]
    name = f"concord ({store.name})"
    return Server(name, command, store.env, "concord", "/readyz", store.port, log, store)


def baseline_servers(workers: int, work: Path, fhirstarter: Path | None) -> list[Server]:
    env = {**base_env(), "BENCH_BARE_BODIES": str(work / "bare-bodies")}
    env["BENCH_FHIRSTARTER_DATA"] = str(work / "fhirstarter-data")
    found = [("bare FastAPI (fixed bytes)", sys.executable, "bare_app", "concord", "/fhir/metadata")]
    if fhirstarter is not None:
        found.append(("fhirstarter", str(fhirstarter), "fhirstarter_app", "fhirstarter", "/metadata"))
    servers = []
    for name, python, factory, kind, ready in found:
        port = free_port()
        command = [python, str(Path(__file__).resolve()), "serve", factory, "--port", str(port)]
        command += ["--workers", str(workers)]
        servers.append(Server(name, command, env, kind, ready, port, work / f"{factory}-{workers}.log"))
    return servers


def measure(
    workers: int,
    store: Store,
    paths: Mapping[tuple[str, str], Path],
    args: argparse.Namespace,
    results: Results,
) -> None:
    """concord on ``store`` and the baselines, all up at once, loaded in turn, ``--rounds`` times each."""
    work: Path = args.work
    slug = re.sub(r"\W+", "-", store.name).strip("-").lower()
    ours = concord_server(store, work / f"serve-{slug}-{workers}.log")
    with contextlib.ExitStack() as stack:
        ours.pid = stack.enter_context(running(ours.command, ours.env, ours.base + ours.ready, ours.log)).pid
        bodies = work / "bare-bodies"
        bodies.mkdir(exist_ok=True)
        for query in QUERIES:
            sample = check_answers(ours.base, token_for(store), paths[("concord", query)], want_entries=True)
            (bodies / f"{query.split()[0]}.json").write_bytes(sample)
        servers = [ours, *baseline_servers(workers, work, args.fhirstarter_python)]
        for server in servers[1:]:
            started = running(server.command, server.env, server.base + server.ready, server.log)
            server.pid = stack.enter_context(started).pid
        for query in QUERIES:
            for server in servers[1:]:
                check_answers(server.base, "", paths[(server.kind, query)], want_entries=True)
            for _ in range(args.rounds):
                for server in servers:
                    results.loads.append(replace(load(server, query, workers, paths, args), run=ours.name))
            if args.profile:
                profile(stack, ours, paths[("concord", query)], args, query)


def load(
    server: Server, query: str, workers: int, paths: Mapping[tuple[str, str], Path], args: argparse.Namespace
) -> Load:
    work: Path = args.work
    path = paths[(server.kind, query)]
    token = token_for(server.store) if server.store else ""
    if server.store is not None:
        time.sleep(1.0)  # the access log of the checks before is written
        logged, answered = audit_entries(server.store), server.answered(query)
    busy, cpu, services = os.getloadavg()[0], cpu_seconds(server.pid), services_cpu_seconds()
    summary = wrk(server.base, path, token, args.seconds, work / "paths.lua")
    result = to_load(server.name, workers, query, summary)
    result.load_average, result.cpu_seconds = busy, cpu_seconds(server.pid) - cpu
    result.services_cpu_seconds = services_cpu_seconds() - services
    if server.store is not None:
        time.sleep(2.0)  # requests still in flight when wrk stopped are answered and logged
        result.audit_entries = audit_entries(server.store) - logged
        result.answered = server.answered(query) - answered
    print(f"  {describe(result)}", flush=True)
    return result


def profile(
    stack: contextlib.ExitStack, server: Server, paths: Path, args: argparse.Namespace, query: str
) -> None:
    """A py-spy profile of the server's workers under the same load (not a measured run).

    Two profiles (py-spy raw, collapsed stacks): every thread while it runs (``active``: idle threads
    are not sampled), and only the thread holding the GIL (``gil``: where the Python CPU goes).
    """
    work: Path = args.work
    assert server.store is not None
    for mode in ("active", "gil"):
        slug = re.sub(r"\W+", "-", f"{server.name}-{server.store.workers}-{query}-{mode}").strip("-").lower()
        out = work / f"profile-{slug}.txt"
        command = ["py-spy", "record", "--pid", str(server.pid), "--subprocesses", "--format", "raw"]
        command += [
            "--rate",
            "200",
            "--duration",
            str(int(args.seconds)),
            "--output",
            str(out),
            "--nonblocking",
        ]
        if mode == "gil":
            command.append("--gil")
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        wrk(server.base, paths, token_for(server.store), args.seconds, work / "paths.lua")
        spy.wait(timeout=args.seconds + 60)
        print(f"  profile ({mode}): {out}", flush=True)


def describe(load: Load) -> str:
    audit = "" if load.audit_entries is None else f", answered {load.answered}, audit +{load.audit_entries}"
    errors = f", errors {load.errors}" if load.errors else ""
    return (
        f"{load.server}, {load.workers} worker(s), {load.query}: {load.rps:,.0f} req/s, "
        f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, {load.cpu_ms:.3f} CPU ms/request "
        f"(PostgreSQL and Redis {load.services_cpu_ms:.3f}) "
        f"({load.requests:,} requests{audit}{errors}; load average {load.load_average:.1f})"
    )


def fhirstarter_python(args: argparse.Namespace) -> Path | None:
    if args.no_fhirstarter:
        return None
    if args.fhirstarter_python is not None:
        return Path(args.fhirstarter_python)
    python = FHIRSTARTER_VENV / "bin" / "python"
    if not python.exists():
        print(f"making {FHIRSTARTER_VENV} for {FHIRSTARTER} (it pins an older FastAPI)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(FHIRSTARTER_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", FHIRSTARTER, "uvicorn[standard]"], check=True
        )
    return python


def table(results: Results) -> str:
    """Markdown: each concord run (median round) against the baselines with its number of workers; then
    every round."""
    lines = [
        "| store (workers) | request | concord req/s | p50 ms | p99 ms | bare req/s | concord / bare "
        "| fhirstarter req/s | concord / fhirstarter | CPU ms/request: concord, bare, fhirstarter "
        "| audit entries / answered (wrk completed) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    seen = dict.fromkeys(
        (x.server, x.workers, x.query) for x in results.loads if x.server.startswith("concord")
    )
    for server, workers, query in seen:
        ours = results.median(server, workers, query, server)
        bare = results.median("bare FastAPI (fixed bytes)", workers, query, server)
        other = results.median("fhirstarter", workers, query, server)
        assert ours is not None and bare is not None
        rounds = [
            x
            for x in results.loads
            if (x.server, x.workers, x.query, x.run) == (server, workers, query, server)
        ]
        logged = sum(x.audit_entries or 0 for x in rounds)
        answered = sum(x.answered or 0 for x in rounds)
        completed = sum(x.requests for x in rounds)
        store = server.removeprefix("concord (").removesuffix(")")
        versus = f"{other.rps:,.0f} | {ours.rps / other.rps:.1f}x" if other else "- | -"
        cpu = f"{ours.cpu_ms:.2f}, {bare.cpu_ms:.2f}, " + (f"{other.cpu_ms:.2f}" if other else "-")
        lines.append(
            f"| {store} ({workers}) | {query} | {ours.rps:,.0f} | {ours.p50_ms:.1f} | {ours.p99_ms:.1f} | "
            f"{bare.rps:,.0f} | {ours.rps / bare.rps:.2f}x | {versus} | {cpu} | "
            f"{logged:,} / {answered:,} ({completed:,}) |"
        )
    lines += [
        "",
        "| server (workers) | request | req/s | p50 ms | p90 ms | p99 ms | max ms | CPU ms/request "
        "| PostgreSQL + Redis CPU ms/request | non-2xx, socket errors | load average |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in results.loads:
        errors = ", ".join(f"{k} {v}" for k, v in x.errors.items()) or "-"
        lines.append(
            f"| {x.server} ({x.workers}) | {x.query} | {x.rps:,.0f} | {x.p50_ms:.1f} | {x.p90_ms:.1f} | "
            f"{x.p99_ms:.1f} | {x.max_ms:.1f} | {x.cpu_ms:.3f} | {x.services_cpu_ms:.3f} | {errors} | "
            f"{x.load_average:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serving = argparse.ArgumentParser(prog="api.py serve")
        serving.add_argument("factory", choices=["bare_app", "fhirstarter_app"])
        serving.add_argument("--port", type=int, required=True)
        serving.add_argument("--workers", type=int, default=1)
        opts = serving.parse_args(sys.argv[2:])
        serve_baseline(opts.factory, opts.port, opts.workers)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each load")
    parser.add_argument("--rounds", type=int, default=2, help="loads of each server, taken in turn")
    parser.add_argument("--stores", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument(
        "--sqlite-workers",
        default="1,2",
        help="worker counts to measure SQLite at, comma-separated (PostgreSQL + Redis runs 2)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--work", type=Path, help="keep the data, logs and profiles here (default: a temp dir)"
    )
    parser.add_argument("--fhirstarter-python", type=Path, help="python of an environment with fhirstarter")
    parser.add_argument("--no-fhirstarter", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also record py-spy profiles of concord")
    parser.add_argument("--json", type=Path, help="write every load here as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    args.fhirstarter_python = fhirstarter_python(args)
    with tempfile.TemporaryDirectory(prefix="concord-bench-api-") as tmp:
        args.work = args.work or Path(tmp)
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / "paths.lua").write_text(WRK_SCRIPT)
        results = Results()
        started = time.perf_counter()
        extracts = prepare_extracts(args.work, args.people)
        sqlite = sqlite_store(args.work)
        ingest(sqlite, extracts)
        register_client(sqlite)
        people = population(sqlite, args.work / "fhirstarter-data")
        paths = write_paths(args.work, people, args.seed)
        print(
            f"{len(people):,} Patients stored; prepared in {time.perf_counter() - started:.0f} s", flush=True
        )
        if "sqlite" in stores:
            for workers in (int(w) for w in args.sqlite_workers.split(",") if w.strip()):
                measure(workers, replace(sqlite, workers=workers), paths, args, results)
        if "postgres" in stores:
            pg = postgres_store(args.work)
            try:
                ingest(pg, extracts)
                register_client(pg)
                measure(2, pg, paths, args, results)
            finally:
                drop_postgres(pg)
        print()
        print(table(results))
        if args.json:
            rows = [{**vars(x), "rps": x.rps, "cpu_ms": x.cpu_ms} for x in results.loads]
            args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
