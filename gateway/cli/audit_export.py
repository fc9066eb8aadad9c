"""``concord audit export``: the log (or the entries matching filters) as FHIR AuditEvent NDJSON or CSV."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from consent.chain import Kind
from gateway.audit.export import AuditFilter, matching, since_bound, until_bound, write_csv, write_ndjson
from gateway.bootstrap import Services
from gateway.cli.common import run
from mappings import nhs_number as nhs


def _nhs_number(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return nhs.normalise(value)
    except nhs.NhsNumberError as exc:
        raise click.BadParameter(f"not a valid NHS number ({exc.code})") from None


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            since_bound(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _until(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            until_bound(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[IO[bytes]]:
    """Standard output, or ``out`` written as ``out.part`` and renamed once complete."""
    if out is None:
        stdout = sys.stdout.buffer
        yield stdout
        stdout.flush()
        return
    part = out.with_name(out.name + ".part")
    try:
        with part.open("wb") as fh:
            yield fh
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(out)


@click.command("export")
@click.option(
    "--nhs-number",
    "nhs_number",
    metavar="NUMBER",
    callback=_nhs_number,
    help="Only entries about this person.",
)
@click.option("--org", "org_ods", metavar="ODS", help="Only entries for this requesting organisation.")
@click.option("--since", callback=_since, help="Only entries at or after this ISO date or date-time (UTC).")
@click.option(
    "--until", callback=_until, help="Only entries at or before this ISO date (the whole day) or date-time."
)
@click.option("--decision", type=click.Choice(["permit", "deny"]), help="Only disclosures so decided.")
@click.option(
    "--kind",
    type=click.Choice([Kind.CONSENT_CHANGE, Kind.DISCLOSURE]),
    help="Only opt-outs and withdrawals, or only disclosure decisions.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ndjson", "csv"]),
    default="ndjson",
    show_default=True,
    help="ndjson: one FHIR R4 AuditEvent a line (IHE BALP style); csv: one row an entry.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="File to write (appears only once complete). Default: standard output.",
)
def export(
    nhs_number: str | None,
    org_ods: str | None,
    since: str | None,
    until: str | None,
    decision: str | None,
    kind: str | None,
    fmt: str,
    out: Path | None,
) -> None:
    """Export log entries, in sequence order, each with its sequence number and chain hash.

    Filters combine (all must match). Reading the log appends nothing to it; check the
    export against the chain with `concord audit verify`.
    """
    where = AuditFilter(nhs_number, org_ods, since, until, decision, kind)

    async def body(services: Services) -> int:
        with _output(out) as fh:
            async with services.engine.connect() as conn:
                pages = matching(conn, where)
                if fmt == "csv":
                    return await write_csv(pages, fh)
                return await write_ndjson(pages, fh, services.settings.organisation_ods)

    count = run(body, sign_on_close=False)
    click.echo(f"{count} entries exported" + (f" to {out}" if out else ""), err=True)
