"""``concord hie-stub``: run the stand-in regional HIE (a small FHIR R4 server) with injected faults."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from aiohttp import web

from gateway.hie_stub import FaultPlanError, Faults, make_app
from gateway.hie_stub.server import AccessLog

RATE = click.FloatRange(0.0, 1.0)


@click.command("hie-stub")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8090, show_default=True, type=click.IntRange(1, 65535), help="Port.")
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON snapshot: loaded on start if it exists, written on shutdown. Default: memory only.",
)
@click.option("--error-rate", default=0.0, type=RATE, help="Share of transactions answered 500.")
@click.option("--throttle-rate", default=0.0, type=RATE, help="Share of transactions answered 429.")
@click.option(
    "--retry-after", default=1, show_default=True, type=click.IntRange(min=0), help="Retry-After of the 429s."
)
@click.option("--delay-rate", default=0.0, type=RATE, help="Share of transactions answered late.")
@click.option(
    "--hang-rate", default=0.0, type=RATE, help="Share of transactions whose headers come at once, body late."
)
@click.option(
    "--delay-seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="How late delayed answers and hung bodies are.",
)
@click.option("--reset-rate", default=0.0, type=RATE, help="Share of connections reset without an answer.")
@click.option(
    "--fail-entry-rate", default=0.0, type=RATE, help="Share of transactions rejected (400) on one entry."
)
@click.option(
    "--down-requests", default=0, type=click.IntRange(min=0), help="Answer 503 to the first N FHIR requests."
)
@click.option(
    "--down-seconds", default=0.0, type=click.FloatRange(min=0), help="Answer 503 for the first S seconds."
)
@click.option("--seed", type=int, help="Seed of the fault schedule (the same requests get the same faults).")
def hie_stub(
    host: str,
    port: int,
    data: Path | None,
    error_rate: float,
    throttle_rate: float,
    retry_after: int,
    delay_rate: float,
    hang_rate: float,
    delay_seconds: float,
    reset_rate: float,
    fail_entry_rate: float,
    down_requests: int,
    down_seconds: float,
    seed: int | None,
) -> None:
    """Serve a stand-in regional HIE: FHIR R4 transactions, reads and searches, in memory.

    Transaction POSTs to /fhir get the faults asked for (rates are shares of them and add up to at
    most 1); the down options refuse every FHIR request. GET /_stub/state shows what it holds and
    what it injected; POST /_stub/faults changes the plan while it runs (docs/hie-stub.md).
    For demos and tests only: it has no authentication. Ctrl-C or SIGTERM stops it.
    """
    try:
        faults = Faults(
            error_rate=error_rate,
            throttle_rate=throttle_rate,
            retry_after=retry_after,
            delay_rate=delay_rate,
            hang_rate=hang_rate,
            delay_seconds=delay_seconds,
            reset_rate=reset_rate,
            fail_entry_rate=fail_entry_rate,
            down_requests=down_requests,
            down_seconds=down_seconds,
            seed=seed,
        )
    except FaultPlanError as exc:
        raise click.BadParameter(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(
        make_app(faults, data),
        host=host,
        port=port,
        access_log_class=AccessLog,
        print=lambda *_: click.echo(f"hie-stub: FHIR base http://{host}:{port}/fhir (Ctrl-C to stop)"),
    )
