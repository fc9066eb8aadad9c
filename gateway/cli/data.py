"""``concord export``, ``view``, ``quality`` and ``db``: reading what the store holds."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from sqlalchemy import func, select

from gateway.bootstrap import Services
from gateway.cli.common import err, run, write_json
from gateway.report import EXIT_FAILED
from gateway.store import quarantine as quarantine_store
from gateway.store.resources import stream_type
from gateway.store.schema import conflicts, contributions, unknown_codes
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

    async def body(services: Services) -> dict[str, object]:
        async with services.engine.connect() as conn:
            conflict_rows = (
                await conn.execute(
                    select(conflicts.c.element, conflicts.c.sources, func.count())
                    .group_by(conflicts.c.element, conflicts.c.sources)
                    .order_by(conflicts.c.element, conflicts.c.sources)
                )
            ).all()
            codes = (
                (
                    await conn.execute(
                        select(unknown_codes).order_by(
                            unknown_codes.c.source, unknown_codes.c.occurrences.desc()
                        )
                    )
                )
                .mappings()
                .all()
            )
            people = (
                await conn.execute(
                    select(
                        contributions.c.source, func.count(func.distinct(contributions.c.nhs_number))
                    ).group_by(contributions.c.source)
                )
            ).all()
            held = await quarantine_store.counts(conn)
        return {
            "people_by_source": {s: n for s, n in people},
            "conflicts": [{"element": e, "sources": s.split(","), "people": n} for e, s, n in conflict_rows],
            "unknown_codes": [
                {
                    "source": r["source"],
                    "field": r["field"],
                    "detail": r["detail"],
                    "occurrences": r["occurrences"],
                }
                for r in codes
            ],
            "quarantine_open": [
                {"source": s, "reason": r, "records": n} for (s, r), n in sorted(held.items())
            ],
        }

    report = run(body)
    if as_json:
        write_json(report)
        return
    click.echo("People with a record, by source:")
    for source, n in report["people_by_source"].items():  # type: ignore[attr-defined]
        click.echo(f"  {source:<14} {n}")
    click.echo("Conflicting demographics (people; values are not shown here):")
    for c in report["conflicts"]:  # type: ignore[attr-defined]
        click.echo(f"  {c['element']:<12} between {' and '.join(c['sources']):<30} {c['people']}")
    click.echo("Unknown codes (kept as sent, reported):")
    for c in report["unknown_codes"]:  # type: ignore[attr-defined]
        click.echo(f"  {c['source']:<12} {c['field']:<14} {c['detail']:<48} {c['occurrences']}")
    click.echo("Quarantined, open:")
    for q in report["quarantine_open"]:  # type: ignore[attr-defined]
        click.echo(f"  {q['source']:<12} {q['reason']:<28} {q['records']}")


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
