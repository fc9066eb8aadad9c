"""``concord audit verify|public-key|new-key|checkpoint``: the tamper-evident log at the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from consent.chain import Checkpoint, KeyFormatError, key_id, load_public_key, public_key_pem
from gateway.audit.keys import SigningKeyError, signing_key, write_private_key
from gateway.audit.verify import PARALLEL_FROM, Verified, verify_store
from gateway.bootstrap import Services
from gateway.cli.common import err, run, write_json
from gateway.report import EXIT_FAILED
from gateway.settings import Settings

EXIT_TAMPERED = 1


@click.group()
def audit() -> None:
    """The log of every consent change and disclosure decision: verify it, print its key, sign it."""


def _expectation(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise click.BadParameter("expected SEQ:HASH (as `verify` prints for the last checkpoint)")
    return int(seq), digest.lower()


@audit.command()
@click.option(
    "--public-key",
    "key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A PEM public key the checkpoints may be signed with (repeat for keys before a rotation). "
    "Default: this gateway's own key, which proves less than a key the IG board keeps.",
)
@click.option(
    "--expect",
    "expect",
    multiple=True,
    metavar="SEQ:HASH",
    help="A checkpoint noted earlier outside the store: catches a truncation that also "
    "removed the checkpoints after it.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes to verify with, this one included (default: one per two CPU cores, as each "
    f"keeps about two busy). With 2 or more, a log of {PARALLEL_FROM:,} entries or more is cut "
    "into spans checked side by side; smaller logs, or 1, are read in one pass.",
)
@click.option("--json", "as_json", is_flag=True)
def verify(key_files: tuple[Path, ...], expect: tuple[str, ...], workers: int | None, as_json: bool) -> None:
    """Check the whole log offline: every entry's hash, the chain, every signed checkpoint, and
    that the chain's head names a stored entry.

    Names the first bad entry in sequence order whether or not the log was verified in spans.
    Exit code 0: intact. 1: the first bad entry is named. 2: could not run.
    """
    expectations = [_expectation(v) for v in expect]
    keys: dict[str, Ed25519PublicKey] = {}
    for path in key_files:
        try:
            key = load_public_key(path.read_bytes())
        except KeyFormatError as exc:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--public-key") from None
        keys[key_id(key)] = key

    async def body(services: Services) -> Verified:
        if not keys:
            own = services.log.key.public_key()
            keys[key_id(own)] = own
        return await verify_store(services.engine, keys, expectations, workers=workers)

    verified = run(body, sign_on_close=False)
    result = verified.result
    cp = result.last_checkpoint
    rate = result.entries / verified.seconds if verified.seconds > 0 else 0.0
    if as_json:
        write_json(
            {
                "intact": result.ok,
                "entries": result.entries,
                "last_seq": result.last_seq,
                "seconds": round(verified.seconds, 3),
                "workers": verified.workers,
                "checkpoints": result.checkpoints,
                "last_checkpoint": _checkpoint(cp),
                "unsigned_entries": result.unsigned if result.ok else None,
                "key_ids": sorted(keys),
                "problem": None
                if result.problem is None
                else {
                    "seq": result.problem.seq,
                    "code": result.problem.code,
                    "message": result.problem.message,
                },
            }
        )
    elif result.ok:
        click.echo(
            f"log intact: {result.entries} entries, {result.checkpoints} signed checkpoints "
            f"({verified.seconds:.2f} s, {rate:,.0f} entries/s, {verified.workers} "
            f"process{'es' if verified.workers > 1 else ''})"
        )
        if cp is not None:
            click.echo(f"last checkpoint: entry {cp.seq}, signed {cp.signed_at} by key {cp.key_id}")
            click.echo(f"  note it to check later with --expect {cp.seq}:{cp.entry_hash}")
        if result.unsigned:
            click.echo(f"{result.unsigned} entries after the last checkpoint await the next signature")
    else:
        assert result.problem is not None
        err.print(
            f"[bold red]LOG TAMPERED[/bold red]: first bad entry {result.problem.seq} "
            f"({result.problem.code}): {result.problem.message}"
        )
    if not result.ok:
        sys.exit(EXIT_TAMPERED)


def _checkpoint(cp: Checkpoint | None) -> dict[str, object] | None:
    if cp is None:
        return None
    return {"seq": cp.seq, "entry_hash": cp.entry_hash, "signed_at": cp.signed_at, "key_id": cp.key_id}


@audit.command("public-key")
def public_key() -> None:
    """Print the public key (PEM) that `concord audit verify --public-key` needs."""
    try:
        key = signing_key(Settings())
    except SigningKeyError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(EXIT_FAILED)
    click.echo(public_key_pem(key.public_key()), nl=False)


@audit.command("new-key")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (PEM, mode 0600); refuses to overwrite.",
)
def new_key(out: Path) -> None:
    """Generate an Ed25519 signing key for production or a rotation; prints its public key."""
    key = Ed25519PrivateKey.generate()
    try:
        write_private_key(out, key)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; not overwriting a signing key") from None
    click.echo(public_key_pem(key.public_key()), nl=False)
    click.echo(f"key id {key_id(key.public_key())}; set CONCORD_AUDIT_SIGNING_KEY_FILE={out}", err=True)


@audit.command()
def checkpoint() -> None:
    """Sign a checkpoint over every entry not yet signed (gateways also do this on an interval)."""

    async def body(services: Services) -> Checkpoint | None:
        return await services.log.checkpoint()

    cp = run(body)
    if cp is None:
        click.echo("nothing unsigned")
    else:
        click.echo(f"signed entry {cp.seq} with key {cp.key_id}")


from gateway.cli.audit_export import export as _export  # noqa: E402

audit.add_command(_export)
