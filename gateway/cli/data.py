"""``concord export``, ``view``, ``quality`` and ``db``: reading what the store holds."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.bootstrap import Services
from gateway.cli.common import err, run, write_json
from gateway.report import EXIT_FAILED
from gateway.store.quality import QualityReport, quality_report
from gateway.store.resources import stream_type
from gateway.views import shared_view

EXPORT_TYPES = ("Patient", "CarePlan", "Provenance")


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def export(out_dir: Path) -> None:
    """Write FHIR bulk-data NDJSON: Patient.ndjson, CarePlan.ndjson, Provenance.ndjson."""
    out_dir.mkdir(parents=True, exist_ok=True)

    async def body(services: Services) -> dict[str, int]:
        counts = {}
        async with services.engine.connect() as conn:
            for rtype in EXPORT_TYPES:
                path = out_dir / f"{rtype}.ndjson"
                tmp = path.with_suffix(".ndjson.part")
                n = 0
                with tmp.open("wb") as fh:
                    async for content in stream_type(conn, rtype):
                        fh.write(content + b"\n")
                        n += 1
                tmp.replace(path)
                counts[rtype] = n
        return counts

    counts = run(body)
    for rtype, n in counts.items():
        click.echo(f"{out_dir / (rtype + '.ndjson')}: {n}")


@click.command()
@click.argument("nhs_number")
def view(nhs_number: str) -> None:
    """Print one person's shared care view (a FHIR Bundle, JSON) by NHS number."""

    async def body(services: Services) -> bytes | None:
        async with services.engine.connect() as conn:
            return await shared_view(conn, nhs_number)

    result = run(body)
    if result is None:
        err.print("[red]no shared record for that NHS number[/red]")
        sys.exit(EXIT_FAILED)
    sys.stdout.buffer.write(result + b"\n")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
def quality(as_json: bool) -> None:
    """The data-quality report: conflicting demographics, unknown codes, quarantine by source and reason."""

    async def body(services: Services) -> QualityReport:
        async with services.engine.connect() as conn:
            return await quality_report(conn)

    report = run(body)
    if as_json:
        write_json(report.as_dict())
        return
    click.echo("People with a record, by source:")
    for source, n in report.people_by_source.items():
        click.echo(f"  {source:<14} {n}")
    click.echo("Conflicting demographics (people; values are not shown here):")
    for c in report.conflicts:
        click.echo(f"  {c.element:<12} between {' and '.join(c.sources):<30} {c.people}")
    click.echo("Unknown codes (kept as sent, reported):")
    for u in report.unknown_codes:
        click.echo(f"  {u.source:<12} {u.field:<14} {u.detail:<48} {u.occurrences}")
    click.echo("Quarantined, open:")
    for q in report.quarantine_open:
        click.echo(f"  {q.source:<12} {q.reason:<28} {q.records}")


@click.group()
def db() -> None:
    """The store's schema."""


@db.command()
def upgrade() -> None:
    """Apply migrations (every command does this on start; this only migrates)."""

    async def body(services: Services) -> None:
        return None

    run(body)
    click.echo("schema is current")
