"""The access log's block writer: lines are held, then written whole, in chunks a pipe keeps atomic."""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Iterator

import pytest

from gateway.api.access_log import AccessLogHandler, log_access


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


@pytest.fixture
def served_access_log() -> Iterator[tuple[logging.Logger, AccessLogHandler]]:
    """A logger configured as ``concord serve`` configures ``concord.access``: one AccessLogHandler,
    level INFO, no propagation (a logger of its own: nothing another test did to logging reaches it)."""
    logger = logging.Logger("concord.access.under-test", logging.INFO)
    logger.propagate = False
    handler = AccessLogHandler()
    handler._flusher = object()  # type: ignore[assignment]
    logger.addHandler(handler)
    yield logger, handler
    handler._lines.clear()


def test_under_serve_a_line_goes_to_the_handler_without_a_log_record(
    served_access_log: tuple[logging.Logger, AccessLogHandler],
    writes: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger, handler = served_access_log

    def no_records(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("a LogRecord was made")

    monkeypatch.setattr(logger, "makeRecord", no_records)
    log_access('{"request_id":"r1"}', logger)
    handler.flush()
    assert writes == [b'{"request_id":"r1"}\n']


def test_a_filter_or_another_handler_sends_the_line_through_logging(
    served_access_log: tuple[logging.Logger, AccessLogHandler], writes: list[bytes]
) -> None:
    logger, handler = served_access_log
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger.addHandler(Capture())
    log_access('{"request_id":"r2"}', logger)
    handler.flush()
    assert seen == ['{"request_id":"r2"}']
    assert writes == [b'{"request_id":"r2"}\n'], "the serve handler still writes it, as a record"


def test_a_silenced_access_log_writes_nothing(
    served_access_log: tuple[logging.Logger, AccessLogHandler], writes: list[bytes]
) -> None:
    logger, handler = served_access_log
    logger.setLevel(logging.WARNING)  # concord serve --log-level warning
    log_access('{"request_id":"r3"}', logger)
    handler.flush()
    assert writes == []
