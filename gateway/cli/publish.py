"""``concord publish``: deliver shared care views to the HIE; ``status``, ``dead-letters``, ``retry``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import signal
import sys

import click

from gateway.audit.batcher import BatchedAppender
from gateway.bootstrap import Services
from gateway.cli.common import err, run, write_json
from gateway.cli.serve import log_config
from gateway.publish.client import HieClient
from gateway.publish.publisher import Publisher, backfill, utcnow
from gateway.report import EXIT_FAILED, EXIT_QUARANTINED
from gateway.store import outbox as box


@click.group(invoke_without_command=True)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit once nothing is due or waiting to retry (batch use, tests): exit code 1 if the HIE "
    "refused any delivery for good (a dead letter), as ingest's 1 for quarantined records.",
)
@click.option(
    "--all",
    "backfill_all",
    is_flag=True,
    help="First queue every person's current view (a new HIE, or after an outage); resumable.",
)
@click.pass_context
def publish(ctx: click.Context, until_idle: bool, backfill_all: bool) -> None:
    """Publish shared care views to the HIE at CONCORD_HIE_URL until stopped (Ctrl-C or SIGTERM).

    Every change to a person's view is sent as one FHIR transaction; an opt-out retracts what the
    HIE holds; a withdrawal republishes. Several publishers may run against PostgreSQL.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not logging.getLogger().handlers:
        # As ``serve`` logs (its child runs this): JSON lines, tracebacks without exception messages.
        logging.config.dictConfig(log_config("warning"))

    async def body(services: Services) -> dict[str, int]:
        if not services.settings.hie_url:
            raise click.ClickException("CONCORD_HIE_URL is not set: publishing is off")
        if backfill_all:
            queued = await backfill(services)
            err.print(f"queued {queued} people for publication")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Deliveries in flight log their decisions in shared transactions (one head lock per group).
        services.disclosure.log = BatchedAppender(services.log)
        async with HieClient(services.settings) as client:
            publisher = Publisher(services, client)
            listener = asyncio.create_task(services.signal.listen(publisher.wake))
            try:
                stats = await publisher.run(until_idle=until_idle, stop=stop)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        return stats.as_dict()

    result = run(body)
    write_json(result)
    if until_idle and result.get("dead_letters"):
        sys.exit(EXIT_QUARANTINED)  # a batch run whose deliveries were refused: not a success


@publish.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """What is waiting, what the HIE holds (people published or retracted), open dead letters."""

    async def body(services: Services) -> dict[str, object]:
        async with services.engine.connect() as conn:
            return await box.summary(conn)

    summary = run(body, sign_on_close=False)
    if as_json:
        write_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")


@publish.command("dead-letters")
@click.option("--limit", default=100, show_default=True)
def dead_letters(limit: int) -> None:
    """Deliveries the HIE refused for good, with its OperationOutcome (one JSON object a line)."""

    async def body(services: Services) -> list[dict[str, object]]:
        async with services.engine.connect() as conn:
            return await box.open_dead_letters(conn, limit)

    for letter in run(body, sign_on_close=False):
        # No NHS number on a terminal: `retry ID` needs only the id.
        outcome = str(letter["outcome"])[:300]
        click.echo(
            f"{letter['id']}  HTTP {letter['status_code']}  {letter['created_at']}  "
            f"delivery {letter['delivery_id']}  {outcome}"
        )


@publish.command()
@click.argument("letter_id", type=int)
def retry(letter_id: int) -> None:
    """Close dead letter LETTER_ID and queue that person's current view again."""

    async def body(services: Services) -> str | None:
        async with services.engine.begin() as conn:
            return await box.resolve_dead_letter(conn, letter_id, utcnow())

    if run(body) is None:
        err.print("no open dead letter with that id")
        sys.exit(EXIT_FAILED)
    click.echo(f"dead letter {letter_id} queued again")
