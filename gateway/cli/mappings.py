"""``concord mappings show``: which source field lands in which FHIR element, as a table."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from mappings.engine import ResourceSpec, Rule
from mappings.specs import load_specs


@click.group()
def mappings() -> None:
    """The mapping specs (mappings/specs/*.json) an analyst can read."""


@mappings.command()
@click.option("--source", required=True, help="gp, acute, community, social-care or fhir.")
@click.option("--resource", type=click.Choice(["Patient", "CarePlan"]), help="Only one resource type.")
def show(source: str, resource: str | None) -> None:
    """Print the source-field → FHIR-element table for a source."""
    specs = load_specs().get(source)
    if specs is None:
        raise click.BadParameter(f"no mapping spec for {source!r}", param_hint="--source")
    console = Console()
    for spec in (specs.patient, specs.care_plan):
        if spec is None or (resource and spec.resource_type != resource):
            continue
        console.print(spec_table(spec))


def spec_table(spec: ResourceSpec) -> Table:
    table = Table(title=spec.title, caption=spec.profile, show_lines=False)
    for column in ("source field", "FHIR element", "transform", "required", "note"):
        table.add_column(column)
    prefix = f"{spec.resource_type}."
    for rule in spec.rules:
        _add_rows(table, rule, prefix, spec.for_each)
    return table


def _add_rows(table: Table, rule: Rule, prefix: str, scope: str | None) -> None:
    if rule.each:
        base = prefix + rule.element.replace("[]", "[n]") + "."
        table.add_row(_origin(rule, scope), base[:-1], "for each item", "", rule.note)
        for sub in rule.each:
            _add_rows(table, sub, base, f"{_origin(rule, scope)}[n]")
        return
    table.add_row(
        _origin(rule, scope),
        prefix + rule.element,
        ", ".join(rule.transform),
        "yes" if rule.required else "",
        rule.note,
    )


def _origin(rule: Rule, scope: str | None) -> str:
    if rule.field is not None:
        if rule.field.startswith("^") or rule.field.startswith("$"):
            return rule.field.lstrip("^")
        return f"{scope}.{rule.field}" if scope else rule.field
    if rule.template is not None:
        return f"template: {rule.template}"
    return f"fixed: {rule.value}"
