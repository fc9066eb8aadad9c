"""``concord consent opt-out|withdraw|show|import``: the opt-out register at the command line.

Every change is written with its log entry in one transaction, and the command
returns only once no gateway process can still serve what the change forbids.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from consent.model import Authority, Facts, OptOutKind
from gateway.bootstrap import Services
from gateway.cli.common import err, operator, request_id, run, write_json
from gateway.register import Change, ImportReport
from gateway.report import EXIT_QUARANTINED as EXIT_PARTIAL
from mappings import nhs_number as nhs

KINDS = [k.value for k in OptOutKind]
AUTHORITIES = [a.value for a in Authority]


def _number(value: str) -> str:
    try:
        return nhs.normalise(value)
    except nhs.NhsNumberError as exc:
        raise click.BadParameter(f"not a valid NHS number ({exc.code})", param_hint="NHS_NUMBER") from None


@click.group()
def consent() -> None:
    """Opt-outs: record, withdraw, show, import a file from the national opt-out service."""


@consent.command("opt-out")
@click.argument("nhs_number")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default=OptOutKind.LOCAL.value,
    show_default=True,
    help="local-scr: no sharing through concord; national: no secondary use (never blocks direct care).",
)
@click.option(
    "--authority",
    type=click.Choice(AUTHORITIES),
    default=Authority.PATIENT_AT_GP.value,
    show_default=True,
    help="On whose say-so it is recorded.",
)
def opt_out(nhs_number: str, kind: str, authority: str) -> None:
    """Record an opt-out for NHS_NUMBER (nothing changes if one of that kind is already in force)."""
    number = _number(nhs_number)

    async def body(services: Services) -> Change:
        return await services.register.opt_out(
            number, OptOutKind(kind), Authority(authority), operator(services.settings), request_id()
        )

    change = run(body)
    state = "recorded" if change.changed else "already in force"
    click.echo(f"opt-out {state}: Consent/{change.opt_out.id} ({change.opt_out.kind.value})")


@consent.command()
@click.argument("nhs_number")
@click.option("--kind", type=click.Choice(KINDS), help="Only opt-outs of this kind (default: all in force).")
@click.option(
    "--authority",
    type=click.Choice(AUTHORITIES),
    default=Authority.PATIENT_AT_GP.value,
    show_default=True,
    help="On whose say-so the withdrawal is recorded.",
)
def withdraw(nhs_number: str, kind: str | None, authority: str) -> None:
    """Withdraw NHS_NUMBER's opt-outs: sharing resumes (and the HIE is republished to)."""
    number = _number(nhs_number)

    async def body(services: Services) -> list[Change]:
        return await services.register.withdraw(
            number,
            OptOutKind(kind) if kind else None,
            Authority(authority),
            operator(services.settings),
            request_id(),
        )

    changes = run(body)
    if not changes:
        err.print("no opt-out in force to withdraw")
        sys.exit(EXIT_PARTIAL)
    for change in changes:
        click.echo(f"withdrawn: Consent/{change.opt_out.id} ({change.opt_out.kind.value})")


@consent.command()
@click.argument("nhs_number")
@click.option("--fhir", "as_fhir", is_flag=True, help="Print the FHIR Consent resources (a Bundle).")
def show(nhs_number: str, as_fhir: bool) -> None:
    """The register's entries for NHS_NUMBER: every opt-out, in force or withdrawn."""
    number = _number(nhs_number)

    async def body(services: Services) -> tuple[Facts, list[dict[str, object]]]:
        return await services.register.facts(number), await services.register.resources(number)

    facts, resources = run(body)
    if as_fhir:
        write_json(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"fullUrl": f"Consent/{r['id']}", "resource": r} for r in resources],
            }
        )
        return
    if not facts.opt_outs:
        click.echo("no opt-out recorded")
        return
    for o in sorted(facts.opt_outs, key=lambda o: o.recorded_at):
        state = "in force" if o.active else f"withdrawn {o.withdrawn_at:%Y-%m-%d %H:%M} by {o.withdrawn_by}"
        click.echo(
            f"Consent/{o.id}  {o.kind.value:<9} recorded {o.recorded_at:%Y-%m-%d %H:%M} by {o.recorded_by} "
            f"({o.recorded_by_ods}, {o.authority.value}, via {o.source})  {state}"
        )


@consent.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(KINDS), default=OptOutKind.NATIONAL.value, show_default=True)
@click.option(
    "--authority", type=click.Choice(AUTHORITIES), default=Authority.NATIONAL_SERVICE.value, show_default=True
)
@click.option(
    "--replace",
    "replace_all",
    is_flag=True,
    help="The file is the complete list: withdraw imported opt-outs of this kind that it no longer has "
    "(refused while any line is invalid).",
)
@click.option("--json", "as_json", is_flag=True)
def import_(path: Path, kind: str, authority: str, replace_all: bool, as_json: bool) -> None:
    """Record an opt-out for each NHS number in PATH (one a line). Invalid lines are reported by number.

    Exit code 1 when some lines were invalid, 0 when every line was read.
    """

    async def body(services: Services) -> ImportReport:
        with path.open(encoding="utf-8-sig", errors="replace") as fh:
            return await services.register.import_numbers(
                fh,
                OptOutKind(kind),
                Authority(authority),
                operator(services.settings),
                request_id(),
                replace_all=replace_all,
            )

    report = run(body)
    if as_json:
        write_json(report.as_dict())
    else:
        click.echo(
            f"{report.lines} lines: {report.recorded} recorded, {report.already} already in force, "
            f"{report.withdrawn} withdrawn, {len(report.invalid)} invalid"
        )
        for line, reason in report.invalid:
            click.echo(f"  line {line}: {reason}")
        if report.replace_refused:
            click.echo("--replace not applied: fix the invalid lines first (nothing was withdrawn)")
    if report.invalid:
        sys.exit(EXIT_PARTIAL)
