"""Faults acted out on the connection: a TCP reset, a late answer, headers now and the body later.

Each waits at most the time it is given and gives up early once the client has gone, so a test
server shuts down without waiting for a stalled handler.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Final

from aiohttp import web

log = logging.getLogger(__name__)

_POLL_SECONDS: Final = 0.05


def reset_connection(request: web.Request) -> web.Response:
    """Drop the connection with a TCP RST (linger 0), so the client reads ECONNRESET, not a reply."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never sent: the transport is gone


async def stall(request: web.Request, seconds: float) -> None:
    """Sleep up to ``seconds``; return early once the client has gone (so shutdown is not held up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(_POLL_SECONDS, deadline - time.monotonic()))


async def hang(request: web.Request, status: int, payload: bytes, seconds: float) -> web.StreamResponse:
    """Send the status line and headers now, the body after ``seconds``: a client needs sock_read."""
    response = web.StreamResponse(
        status=status, headers={"Content-Type": "application/fhir+json; charset=utf-8"}
    )
    response.content_length = len(payload)
    request_id = request.headers.get("X-Request-ID")
    if request_id:
        response.headers["X-Request-ID"] = request_id
    await response.prepare(request)
    await stall(request, seconds)
    try:
        await response.write(payload)
        await response.write_eof()
    except ConnectionError:
        log.info("hang: the client left before the body (request id %s)", request_id)
    return response
