"""``concord export``, ``view``, ``quality`` and ``db``: reading what the store holds."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from consent.model import Purpose
from gateway.bootstrap import Services
from gateway.cli.common import err, operator, request_id, run, write_json
from gateway.disclosure import Ask, DisclosureUnavailable
from gateway.report import EXIT_FAILED
from gateway.store.quality import QualityReport, quality_report
from gateway.store.resources import stream_type_by_person
from gateway.views import bundle, load_person
from mappings import nhs_number as nhs

EXPORT_TYPES = ("Patient", "CarePlan", "Provenance")


PURPOSES = [p.value for p in Purpose]


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--purpose",
    required=True,
    type=click.Choice(PURPOSES),
    help="Why the data is leaving: the opt-outs that apply depend on it (docs/consent.md).",
)
def export(out_dir: Path, purpose: str) -> None:
    """Write FHIR bulk-data NDJSON (Patient, CarePlan, Provenance) of everyone the register allows.

    People whose opt-out applies to PURPOSE are left out; every person screened is logged.
    The files appear only after the log has the decisions.
    """
    out_dir.mkdir(parents=True, exist_ok=True)

    async def body(services: Services) -> tuple[dict[str, int], int]:
        ask = Ask(operator(services.settings), purpose, "export", request_id())
        screen = await services.disclosure.bulk(ask)
        counts = {}
        parts = []
        async with services.engine.connect() as conn:
            for rtype in EXPORT_TYPES:
                tmp = out_dir / f"{rtype}.ndjson.part"
                n = 0
                with tmp.open("wb") as fh:
                    async for number, content in stream_type_by_person(conn, rtype):
                        if screen.allows(number, rtype):
                            fh.write(content + b"\n")
                            n += 1
                parts.append(tmp)
                counts[rtype] = n
        try:
            await screen.commit()
        except DisclosureUnavailable:
            for tmp in parts:
                tmp.unlink(missing_ok=True)
            raise click.ClickException("the audit log could not be written; nothing was exported") from None
        for tmp in parts:
            tmp.replace(tmp.with_suffix(""))
        return counts, sum(1 for d in screen.decisions.values() if not d.permitted)

    counts, withheld = run(body)
    for rtype, n in counts.items():
        click.echo(f"{out_dir / (rtype + '.ndjson')}: {n}")
    click.echo(f"people withheld for {purpose}: {withheld}")


@click.command()
@click.argument("nhs_number")
@click.option("--purpose", type=click.Choice(PURPOSES), default=Purpose.DIRECT_CARE.value, show_default=True)
def view(nhs_number: str, purpose: str) -> None:
    """Print one person's shared care view (a FHIR Bundle, JSON) by NHS number, if consent allows.

    An opted-out person gets the same answer as an unknown one; the request is logged either way.
    """
    try:
        number = nhs.normalise(nhs_number)
    except nhs.NhsNumberError:
        raise click.BadParameter("not a valid NHS number", param_hint="NHS_NUMBER") from None

    async def body(services: Services) -> bytes | None:
        ask = Ask(operator(services.settings), purpose, "view", request_id())
        try:
            disclosed = await services.disclosure.person(
                ask, number, lambda n: load_person(services.engine, n)
            )
        except DisclosureUnavailable:
            raise click.ClickException("the audit log could not be written; nothing was shown") from None
        return bundle(disclosed.resources) if disclosed.resources else None

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
