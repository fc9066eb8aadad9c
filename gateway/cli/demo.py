"""``concord demo``: the whole ingest flow on the embedded default, in one command."""

from __future__ import annotations

import random
from pathlib import Path

import click

from adapters.registry import adapter_for
from gateway.bootstrap import Services
from gateway.cli.common import run
from gateway.cli.ingest import print_summary
from gateway.cli.synth import FILES
from gateway.report import IngestReport
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population
from gateway.synth.writers import WRITERS


@click.command()
@click.option("--people", default=2000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--out", "out_dir", default="demo", show_default=True, type=click.Path(path_type=Path))
def demo(people: int, seed: int, out_dir: Path) -> None:
    """Synthesise four extracts, ingest them all, export NDJSON and show one shared care view.

    Uses CONCORD_DATA_DIR (default ./.concord) for the SQLite store. Safe to run twice:
    the second run changes nothing.
    """
    extracts = out_dir / "extracts"
    extracts.mkdir(parents=True, exist_ok=True)
    plan = DefectPlan(0.02, seed)
    for source, name in FILES.items():
        with (extracts / name).open("w", encoding="utf-8", newline="") as fh:
            WRITERS[source](population(people, seed), fh, random.Random(f"{seed}:{source}"), plan)  # noqa: S311

    async def body(services: Services) -> list[IngestReport]:
        reports = []
        for source, name in FILES.items():
            with (extracts / name).open("rb") as fh:
                reports.append(await services.ingestor.run(source, adapter_for(source).read(fh), name))
        return reports

    for report in run(body):
        print_summary(report)
    click.echo(
        "\nNext:\n"
        f"  concord view 9990000018            # one person's shared care view (FHIR Bundle)\n"
        f"  concord export --out {out_dir}/export --purpose direct-care  # NDJSON, opt-outs applied\n"
        "  concord consent opt-out 9990000018 # record an opt-out; `view` then shows nothing\n"
        "  concord audit verify               # check the tamper-evident log of every decision\n"
        "  concord quality                    # conflicts, unknown codes, quarantine by reason\n"
        "  concord quarantine list            # every record not accepted, and why\n"
        "  concord mappings show --source gp  # which source field lands where"
    )
