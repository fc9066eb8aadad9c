"""``concord ingest``: read one source extract into the store."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from adapters.records import AdapterError, Item
from adapters.registry import ADAPTERS, adapter_for
from gateway.bootstrap import Services
from gateway.cli.common import err, run, write_json
from gateway.prevalidate import Prevalidator
from gateway.report import EXIT_FAILED, IngestReport


@click.command()
@click.option("--source", required=True, type=click.Choice(list(ADAPTERS)), help="Which source's format.")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
def ingest(source: str, path: Path, as_json: bool) -> None:
    """Ingest one extract file (or - for standard input).

    Good records are stored, bad ones quarantined with their reason (see `concord quarantine`).
    Inputs over 1 MiB are validated ahead in worker processes (CONCORD_INGEST_WORKERS; 0: none).
    Exit code: 0 all records accepted, 1 some quarantined, 2 the file could not be read.
    """
    adapter = adapter_for(source)
    try:
        stream = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    except OSError as exc:
        err.print(f"[red]cannot open {path}: {exc.strerror}[/red]")
        sys.exit(EXIT_FAILED)

    async def body(services: Services) -> IngestReport:
        with stream, _progress() as advance, _prevalidation(services, path):
            items: Iterator[Item] = adapter.read(stream)
            return await services.ingestor.run(source, items, path.name, advance)

    try:
        report = run(body)
    except AdapterError as exc:
        err.print(f"[red]{source} extract {path.name} cannot be read: {exc}[/red]")
        sys.exit(EXIT_FAILED)
    if as_json:
        write_json(report.as_dict())
    else:
        print_summary(report)
    sys.exit(report.exit_code)


@contextmanager
def _progress() -> Iterator[Callable[[int], None]]:
    """A live count of records on a terminal; nothing when output is redirected."""
    bar = Progress(
        TextColumn("ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task("records", total=None)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        bar.update(task, completed=done)

    with bar:
        yield advance


#: Below this an input is ingested in one process: starting a worker costs more than it saves.
PREVALIDATE_FROM_BYTES = 1024 * 1024


@contextmanager
def _prevalidation(services: Services, path: Path) -> Iterator[None]:
    """Validation of the next batch in a worker process, for large inputs (gateway.prevalidate)."""
    large = str(path) != "-" and path.stat().st_size >= PREVALIDATE_FROM_BYTES
    workers = services.settings.resolved_ingest_workers()
    if not (workers and large):
        yield
        return
    services.ingestor.prevalidator = Prevalidator(services.settings.resolved_id_key(), workers)
    try:
        yield
    finally:
        services.ingestor.prevalidator.close()
        services.ingestor.prevalidator = None


def print_summary(report: IngestReport) -> None:
    d = report.as_dict()
    lines = [
        f"{report.source}: {report.records} records from {report.input_name}",
        f"  accepted     {report.accepted}  (new {report.new}, changed {report.changed}, "
        f"unchanged {report.unchanged})",
        f"  quarantined  {report.quarantined_total}",
    ]
    lines += [f"    {reason:<28} {n}" for reason, n in d["quarantined_by_reason"].items()]
    if d["warnings_by_reason"]:
        lines.append("  warnings (accepted)")
        lines += [f"    {reason:<28} {n}" for reason, n in d["warnings_by_reason"].items()]
    if d["conflicts_by_element"]:
        lines.append("  people with conflicting demographics (see `concord quality`)")
        lines += [f"    {element:<28} {n}" for element, n in d["conflicts_by_element"].items()]
    lines.append(
        "  resources "
        + ", ".join(f"{t}: " + " ".join(f"{k} {v}" for k, v in c.items()) for t, c in d["resources"].items())
    )
    if report.quarantined_total:
        narrowed = f" --source {report.source}" if report.source in ADAPTERS else ""  # a replay spans sources
        lines.append(f"  see: concord quarantine list{narrowed}")
    click.echo("\n".join(lines))
