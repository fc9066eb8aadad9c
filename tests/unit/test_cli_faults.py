"""A fault in a command exits 2 ("could not run") without the exception's text, which may quote data."""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import click
import pytest

from gateway import cli
from gateway.report import EXIT_FAILED

NHS_NUMBER = "9990000018"


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A command that raises; yields the line it raises at."""

    @click.command("explode")
    def explode() -> None:
        raise RuntimeError(f"row for {NHS_NUMBER} would not save")

    try:
        explode.callback()  # type: ignore[misc]
    except RuntimeError as exc:
        raised_at = traceback.extract_tb(exc.__traceback__)[-1].lineno
    cli.cli.add_command(explode)
    monkeypatch.setattr("sys.argv", ["concord", "explode"])
    yield raised_at
    cli.cli.commands.pop("explode")


def test_a_fault_exits_2_naming_its_type_and_place_but_not_its_text(
    failing: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONCORD_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == (
        f"Error: concord could not run (RuntimeError at test_cli_faults.py:{failing}). "
        "Set CONCORD_DEBUG=1 for the traceback.\n"
    )
    assert NHS_NUMBER not in err


@pytest.mark.usefixtures("failing")
def test_concord_debug_shows_the_traceback_and_still_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCORD_DEBUG", "1")
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "RuntimeError: row for" in err
