"""``concord clients add|list`` and ``concord token``: API client organisations and their tokens."""

from __future__ import annotations

import click


@click.group()
def clients() -> None:
    """Client organisations allowed to call the API (SMART Backend Services)."""
