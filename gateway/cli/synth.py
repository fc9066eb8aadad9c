"""``concord synth``: write the four sources' extracts for one synthetic population."""

from __future__ import annotations

import random
from pathlib import Path

import click
import orjson

from gateway.synth.defects import EFFECTS, DefectPlan
from gateway.synth.population import MAX_PEOPLE, population

FILES = {
    "gp": "gp.csv",
    "acute": "acute.hl7",
    "community": "community.jsonl",
    "social-care": "social_care.json",
}


@click.command()
@click.option(
    "--people",
    default=10_000,
    show_default=True,
    type=click.IntRange(0, MAX_PEOPLE),
    help=f"How many synthetic people (at most {MAX_PEOPLE}: the 999 test range).",
)
@click.option("--seed", default=7, show_default=True, help="Same seed, same extracts.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--defect-rate", default=0.02, show_default=True, help="Share of records with a defect.")
@click.option("--sources", default=",".join(FILES), show_default=True, help="Which extracts to write.")
def synth(people: int, seed: int, out_dir: Path, defect_rate: float, sources: str) -> None:
    """Write gp.csv, acute.hl7, community.jsonl and social_care.json for the same synthetic people.

    NHS numbers are from the 999 test range with valid check digits. Defects are mixed in at
    --defect-rate and tallied in manifest.json (with what ingest should do with each).
    """
    from gateway.synth.writers import WRITERS

    out_dir.mkdir(parents=True, exist_ok=True)
    plan = DefectPlan(defect_rate, seed)
    counts = {}
    for source in [s.strip() for s in sources.split(",") if s.strip()]:
        if source not in FILES:
            raise click.BadParameter(f"unknown source {source!r}", param_hint="--sources")
        rng = random.Random(f"{seed}:{source}")  # noqa: S311 (synthetic data, not security)
        path = out_dir / FILES[source]
        with path.open("w", encoding="utf-8", newline="") as out:
            counts[source] = WRITERS[source](population(people, seed), out, rng, plan)
        click.echo(f"{path}: {counts[source]} records")
    manifest = {
        "people": people,
        "seed": seed,
        "defect_rate": defect_rate,
        "records": counts,
        "defects": plan.report(),
        "defect_effects": EFFECTS,
    }
    (out_dir / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
