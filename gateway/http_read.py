"""Reading a stranger's HTTP answer without trusting its size (an HIE's, a JWK Set URL's, a token
endpoint's): at most a limit, however long the body or however far it inflates."""

from __future__ import annotations

import aiohttp


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body if it is at most ``limit`` bytes (decoded), else ``b""`` and True; the connection of
    an answer cut short is closed, not reused."""
    if (response.content_length or 0) > limit:
        response.close()
        return b"", True
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks), False
        size += len(chunk)
        if size > limit:
            response.close()
            return b"", True
        chunks.append(chunk)
