"""``concord quarantine list|show|replay``: the records that were not accepted, and why."""

from __future__ import annotations

import sys

import click

from adapters.registry import ADAPTERS, all_adapters
from gateway.bootstrap import Services
from gateway.cli.common import err, run, write_json
from gateway.cli.ingest import print_summary
from gateway.report import EXIT_FAILED, IngestReport
from gateway.store import quarantine as store
from gateway.store.quarantine import Quarantined


@click.group()
def quarantine() -> None:
    """Records that could not be read or mapped: list them, look at one, replay them after a fix."""


@quarantine.command("list")
@click.option("--source", type=click.Choice(list(ADAPTERS)))
@click.option("--reason", help="Only this reason code (e.g. nhs-number-missing).")
@click.option("--all", "include_closed", is_flag=True, help="Include records already replayed.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_(source: str | None, reason: str | None, include_closed: bool, limit: int, as_json: bool) -> None:
    """One line per quarantined record: id, source, where in the input, field, reason."""

    async def body(services: Services) -> list[Quarantined]:
        async with services.engine.connect() as conn:
            return await store.listing(
                conn, source=source, reason=reason, status=None if include_closed else "open", limit=limit
            )

    rows = run(body)
    if as_json:
        write_json([_summary(r) for r in rows])
        return
    for r in rows:
        click.echo(
            f"{r.id:>7}  {r.source:<11} {r.location:<14} {r.field or '-':<18} {r.reason:<26} {r.status}"
            + (f"  {r.detail}" if r.detail else "")
        )


@quarantine.command()
@click.argument("qid", type=int)
def show(qid: int) -> None:
    """Everything kept about one quarantined record, including the raw record as received."""

    async def body(services: Services) -> Quarantined | None:
        async with services.engine.connect() as conn:
            return await store.get(conn, qid)

    row = run(body)
    if row is None:
        err.print(f"[red]no quarantined record {qid}[/red]")
        sys.exit(EXIT_FAILED)
    write_json({**_summary(row), "raw": row.raw})


@quarantine.command()
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every open record (optionally of --source).")
@click.option("--source", type=click.Choice(list(ADAPTERS)))
def replay(ids: tuple[int, ...], replay_all: bool, source: str | None) -> None:
    """Read quarantined records again and ingest those that now pass (after a fix to a map or the data).

    A record that fails again stays quarantined with its latest reason. Exit code 1 if any did.
    """
    if not ids and not replay_all:
        raise click.UsageError("give record ids or --all")

    async def body(services: Services) -> IngestReport:
        chosen = list(ids)
        if replay_all:
            async with services.engine.connect() as conn:
                chosen = [r.id for r in await store.listing(conn, source=source, limit=1_000_000)]
        return await services.ingestor.replay(chosen, all_adapters())

    report = run(body)
    print_summary(report)
    sys.exit(report.exit_code)


def _summary(r: Quarantined) -> dict[str, object]:
    return {
        "id": r.id,
        "run_id": r.run_id,
        "source": r.source,
        "location": r.location,
        "field": r.field,
        "reason": r.reason,
        "detail": r.detail,
        "status": r.status,
        "created_at": r.created_at.isoformat() if r.created_at else None,
    }
