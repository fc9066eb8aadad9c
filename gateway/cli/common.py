"""Shared pieces of the CLI commands: settings, running a coroutine with services, output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from rich.console import Console

from gateway.bootstrap import Services, bootstrap
from gateway.settings import Settings

T = TypeVar("T")
err = Console(stderr=True)


def run(body: Callable[[Services], Awaitable[T]]) -> T:
    """Bootstrap services from the environment, run ``body``, close everything."""

    async def main() -> T:
        services = await bootstrap(Settings())
        try:
            return await body(services)
        finally:
            await services.close()

    return asyncio.run(main())


def write_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()
