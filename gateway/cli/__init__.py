"""The ``concord`` command line. Exit codes: 0 all accepted, 1 some records quarantined, 2 could not run."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click

from gateway.cli import (
    audit,
    clients,
    consent,
    data,
    demo,
    hie_stub,
    ingest,
    mappings,
    publish,
    quarantine,
    serve,
    synth,
)
from gateway.report import EXIT_FAILED


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="concord")
def cli() -> None:
    """concord: a FHIR R4 gateway for shared care records, keyed on the NHS number.

    Settings come from CONCORD_* environment variables: CONCORD_DATA_DIR (default ./.concord),
    CONCORD_DATABASE_URL (default: a SQLite file in the data dir; postgresql://... for PostgreSQL).
    """


cli.add_command(demo.demo)
cli.add_command(synth.synth)
cli.add_command(ingest.ingest)
cli.add_command(data.export)
cli.add_command(data.view)
cli.add_command(data.quality)
cli.add_command(data.db)
cli.add_command(mappings.mappings)
cli.add_command(quarantine.quarantine)
cli.add_command(consent.consent)
cli.add_command(audit.audit)
cli.add_command(hie_stub.hie_stub)
cli.add_command(serve.serve)
cli.add_command(clients.clients)
cli.add_command(clients.token)
cli.add_command(publish.publish)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_FAILED)
    except click.exceptions.Abort:
        sys.exit(EXIT_FAILED)
    except Exception as exc:  # noqa: BLE001 - a fault: exit code 2, its place shown, its text not
        if os.environ.get("CONCORD_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
            sys.exit(EXIT_FAILED)
        sys.exit(_could_not_run(exc))


def _could_not_run(exc: Exception) -> int:
    """A fault, not bad input: exit code 2 with where it happened, and no message or values
    (an exception's text may quote the data it failed on). CONCORD_DEBUG=1 shows the traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    click.echo(
        f"Error: concord could not run ({type(exc).__name__}{where}). Set CONCORD_DEBUG=1 for the traceback.",
        err=True,
    )
    return EXIT_FAILED
