"""The access log: one JSON line per request, written in blocks by ``concord serve``.

``RequestMiddleware`` makes each line (no query string, no patient data) and hands it to
``log_access``. When the ``concord.access`` logger's one destination is ``concord serve``'s
``AccessLogHandler`` (its logging configuration, ``cli.serve.log_config``), the line goes straight
into that handler's buffer: a ``LogRecord`` per request and logging's dispatch cost a search about
a tenth of its CPU (measured, bench/RESULTS.md). Under any other configuration (tests capturing
records, an operator's own handlers or filters) the line goes through ``logging`` as any record.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import select
import sys
import threading
from typing import Final

access_log = logging.getLogger("concord.access")


def log_access(line: str, logger: logging.Logger = access_log) -> None:
    """Write one access line at level INFO, if ``logger`` (``concord.access``) is enabled for it."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handlers = logger.handlers
    if len(handlers) == 1 and not logger.propagate and not logger.filters:
        handler = handlers[0]
        if type(handler) is AccessLogHandler and not handler.filters and handler.level <= logging.INFO:
            handler.write_line(line)
            return
    logger.info(line)


class AccessLogHandler(logging.Handler):
    """The access log: one line per request on stderr, written in blocks rather than line by line.

    A line per request written on its own is a system call per request (measured: a tenth of a
    search's CPU). As nginx does with ``access_log ... buffer= flush=``, lines are kept and written
    when ``BUFFER_BYTES`` have gathered, every ``FLUSH_SECONDS``, and at exit; only the last
    fraction of a second of lines is lost if the process is killed outright. Other records (errors,
    warnings) still go out at once through the ``json`` handler.

    Several workers share one stderr, often a pipe, where only writes of at most ``PIPE_BUF`` bytes
    are atomic: lines are written in whole-line chunks no larger than that, so no two processes'
    lines are ever mixed within a line.
    """

    BUFFER_BYTES: Final = 64 * 1024
    FLUSH_SECONDS: Final = 0.5
    CHUNK_BYTES: Final = select.PIPE_BUF

    def __init__(self) -> None:
        super().__init__()
        self._fd = sys.stderr.fileno()
        self._lines: list[bytes] = []
        self._held = 0
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    def format(self, record: logging.LogRecord) -> str:
        """The line as logged: access lines are already JSON (``RequestMiddleware``)."""
        return record.getMessage()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise into the caller
            self.handleError(record)
            return
        self._hold(line)  # emit runs under the handler's lock, as flush does

    def write_line(self, line: str) -> None:
        """Hold ``line`` as ``emit`` would hold a record of it, without making the record."""
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock made it
            self._hold(line)

    def _hold(self, line: str) -> None:
        if self._flusher is None:  # started in the process that logs (a worker), not its parent
            self._flusher = threading.Thread(target=self._flush_periodically, daemon=True)
            self._flusher.start()
            # At exit: logging's own atexit hook flushes a single process; a uvicorn worker is a
            # multiprocessing child, which runs multiprocessing's finalizers and not atexit's.
            multiprocessing.util.Finalize(None, self.flush, exitpriority=100)
        data = (line + "\n").encode()
        self._lines.append(data)
        self._held += len(data)
        if self._held >= self.BUFFER_BYTES:
            self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock made it
            self._write()

    def _write(self) -> None:
        lines, self._lines, self._held = self._lines, [], 0
        chunk = b""
        for line in lines:
            if chunk and len(chunk) + len(line) > self.CHUNK_BYTES:
                self._write_all(chunk)
                chunk = b""
            chunk += line
        if chunk:
            self._write_all(chunk)

    def _write_all(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # stderr is gone (the supervisor closed it): nothing to log to

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.FLUSH_SECONDS):
            self.flush()

    def close(self) -> None:
        self._closed.set()
        self.flush()
        super().close()
