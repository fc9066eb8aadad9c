"""Ingest throughput and memory against a floor measured in the same run.

    python bench/ingest.py --people 100000            # throughput vs the validation floor
    python bench/ingest.py --memory 10000,1000000     # peak RSS of `concord ingest` by extract size

Throughput: a synthetic GP extract is ingested into a fresh SQLite store with
the real pipeline (adapter, mapping, validation, store, outbox), once in one
process and once as `concord ingest` runs a large extract (the next batches
validated in worker processes, gateway/prevalidate.py). The floor is
fhir.resources ``model_validate`` of exactly the resources that ingest stored
(read back from the store), with no I/O: ingest cannot be faster than
validating what it stores, so the ratio says how much the rest costs.
Memory: ``concord ingest`` runs in a child process per extract size and its
peak resident set size is compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/ingest.py`, this file's directory is first on sys.path and bench/consent.py
# would shadow the `consent` package: drop that entry before importing the project.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import orjson
from fhir.resources.R4B import get_fhir_model_class

from adapters.gp import GpAdapter
from gateway.bootstrap import bootstrap
from gateway.prevalidate import Prevalidator
from gateway.settings import Settings
from gateway.store.resources import stream_type
from gateway.synth.defects import DefectPlan
from gateway.synth.gp import write_gp
from gateway.synth.population import population


def write_extract(path: Path, people: int, seed: int = 7, defect_rate: float = 0.0) -> int:
    with path.open("w", encoding="utf-8", newline="") as out:
        return write_gp(population(people, seed), out, random.Random(seed), DefectPlan(defect_rate, seed))


async def ingest_and_floor(extract: Path, data_dir: Path, prevalidate: bool = True) -> dict[str, float]:
    services = await bootstrap(Settings(data_dir=data_dir, ingest_batch_size=500))
    try:
        started = time.perf_counter()
        # As `concord ingest` runs a large extract: the next batch validated in a worker process.
        key = services.settings.resolved_id_key()
        workers = services.settings.resolved_ingest_workers() if prevalidate else 0
        services.ingestor.prevalidator = Prevalidator(key, workers) if workers else None
        try:
            with extract.open("rb") as fh:
                report = await services.ingestor.run("gp", GpAdapter().read(fh), extract.name)
        finally:
            if services.ingestor.prevalidator:
                services.ingestor.prevalidator.close()
        ingest_s = time.perf_counter() - started
        stored: list[dict[str, object]] = []
        async with services.engine.connect() as conn:
            for rtype in ("Patient", "CarePlan", "Provenance"):
                stored.extend([orjson.loads(c) async for c in stream_type(conn, rtype)])
    finally:
        await services.close()
    models = {t: get_fhir_model_class(t) for t in ("Patient", "CarePlan", "Provenance")}
    started = time.perf_counter()
    for r in stored:
        models[str(r["resourceType"])].model_validate(r)
    floor_s = time.perf_counter() - started
    rows = report.records
    return {
        "rows": rows,
        "resources": len(stored),
        "ingest_s": ingest_s,
        "ingest_rows_per_s": rows / ingest_s,
        "floor_s": floor_s,
        "floor_rows_per_s": rows / floor_s,
        "ratio": floor_s / ingest_s,
    }


def peak_rss_of_ingest(extract: Path, data_dir: Path) -> float:
    """Peak RSS (MiB) of a child `concord ingest` (the CLI as people run it).

    Read from the child's own VmHWM: ru_maxrss would carry over the size of this benchmark
    process, which the child is forked from, across exec.
    """
    env = {**os.environ, "CONCORD_DATA_DIR": str(data_dir)}
    code = (
        "import sys\n"
        "from gateway.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv = ['concord', 'ingest', '--source', 'gp', sys.argv[1]]\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    print(int(status.split()[0]) / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(extract)], env=env, check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def report_throughput(people: int, work: Path) -> None:
    extract = work / "gp.csv"
    write_extract(extract, people)
    for prevalidate in (False, True):
        result = asyncio.run(ingest_and_floor(extract, work / f"store-{prevalidate}", prevalidate))
        how = "with validation workers" if prevalidate else "one process"
        print(
            f"ingest ({how}) {result['rows']:.0f} GP rows ({result['resources']:.0f} resources stored): "
            f"{result['ingest_rows_per_s']:.0f} rows/s; floor (model_validate only, one core) "
            f"{result['floor_rows_per_s']:.0f} rows/s; ingest/floor = {result['ratio']:.2f}x (target >= 0.5x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument(
        "--memory", default="", help="comma-separated extract sizes in people, e.g. 10000,1000000"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sizes = [int(s) for s in args.memory.split(",") if s.strip()]
        peaks = {}
        for size in sizes:
            extract = work / f"gp-{size}.csv"
            rows = write_extract(extract, size)
            peaks[size] = peak_rss_of_ingest(extract, work / f"store-{size}")
            print(f"peak RSS of `concord ingest`, {rows} rows ({size} people): {peaks[size]:.0f} MiB")
            extract.unlink()
        if len(sizes) >= 2:
            small, large = min(sizes), max(sizes)
            print(f"peak RSS {large}/{small} people = {peaks[large] / peaks[small]:.2f}x (target <= 1.2x)")
        if args.people:
            report_throughput(args.people, work)


if __name__ == "__main__":
    main()
