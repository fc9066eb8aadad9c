"""The access log's block writer: lines are held, then written whole, in chunks a pipe keeps atomic."""

from __future__ import annotations

import logging
import os
import select

import pytest

from gateway.cli.serve import AccessLogHandler


def record(n: int) -> logging.LogRecord:
    message = f'{{"request_id":"r{n}","route":"/fhir/Patient","pad":"{"x" * (n % 300)}"}}'
    return logging.LogRecord("concord.access", logging.INFO, __file__, 1, message, None, None)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    written: list[bytes] = []

    def write(_fd: int, data: bytes) -> int:
        written.append(bytes(data))
        return len(data)

    monkeypatch.setattr(os, "write", write)
    return written


def test_lines_are_held_until_a_flush_then_written_whole_in_pipe_sized_chunks(writes: list[bytes]) -> None:
    handler = AccessLogHandler()
    handler._flusher = object()  # type: ignore[assignment]  # no background flusher in this test
    lines = [record(n) for n in range(200)]
    for line in lines[:10]:
        handler.handle(line)
    assert writes == [], "ten short lines are held, not written one by one"
    for line in lines[10:]:
        handler.handle(line)
    handler.flush()
    assert writes and all(len(chunk) <= select.PIPE_BUF for chunk in writes)
    assert all(chunk.endswith(b"\n") for chunk in writes), "a chunk never ends inside a line"
    assert b"".join(writes).decode().splitlines() == [line.getMessage() for line in lines]


def test_a_full_buffer_is_written_without_waiting_for_the_flush(writes: list[bytes]) -> None:
    handler = AccessLogHandler()
    handler._flusher = object()  # type: ignore[assignment]
    n = 0
    while not writes:
        handler.handle(record(n))
        n += 1
        assert n < 10_000
    assert sum(map(len, writes)) >= AccessLogHandler.BUFFER_BYTES
    handler.close()
