"""``concord serve``: the API under uvicorn, JSON logs, a clean stop on SIGTERM.

Before uvicorn starts, the parent process makes the generated secrets (id key,
token secret, signing key) and runs the migrations once, so workers starting
together cannot race to create them; a store that cannot be reached stops here
with exit code 2. Each uvicorn worker then builds its own services through the
app factory. On SIGTERM or Ctrl-C in-flight requests finish (up to
``GRACEFUL_SECONDS``), each worker signs a checkpoint over the log's unsigned
entries, and the command exits 0.

With ``CONCORD_HIE_URL`` set, ``serve`` also runs the publisher (unless ``--no-publish``), as a
``concord publish`` child process beside the workers: its CPU is its own, and it is stopped with
SIGTERM (finishing its deliveries) when the API stops. Deployments that run publishers as their own
processes (docker-compose) pass ``--no-publish``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from typing import Any, Final

import click
import orjson

from gateway import tracebacks
from gateway.api.access_log import AccessLogHandler
from gateway.audit.keys import SigningKeyError
from gateway.bootstrap import bootstrap
from gateway.settings import Settings

APP: Final = "gateway.api.app:create_app"
GRACEFUL_SECONDS: Final = 30
LEVELS: Final = ("critical", "error", "warning", "info", "debug")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any).

    A traceback gives each exception's type and frames but never its message (``gateway.tracebacks``):
    a 500's exception may quote the record it failed on.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()

    def formatException(self, ei: Any) -> str:
        """Types and frames of the exception chain, no messages."""
        exc = ei[1]
        return tracebacks.describe(exc) if isinstance(exc, BaseException) else ""


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config: JSON lines on stderr; access lines (already JSON) as they are."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": f"{__name__}.JsonFormatter"},
        },
        "handlers": {
            "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "access": {"()": f"{AccessLogHandler.__module__}.AccessLogHandler"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": upper, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "concord.access": {"handlers": ["access"], "level": upper, "propagate": False},
            "gateway": {"level": upper},
        },
        "root": {"handlers": ["json"], "level": "WARNING"},
    }


def prepare(settings: Settings) -> None:
    """Make the generated secrets and run the migrations once, before any worker starts."""

    async def connect() -> None:
        services = await bootstrap(settings)
        await services.close()

    try:
        settings.resolved_id_key()
        settings.resolved_token_secret()  # ValueError: must be set outside the embedded default
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        asyncio.run(connect())
    except SigningKeyError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - its message may hold the store's URL: the type only
        raise click.ClickException(f"cannot open the store ({type(exc).__name__})") from None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes sharing the port, each with its own services. With the embedded SQLite "
    "store they must run on this one machine.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(LEVELS),
    help="Least severe log level written; above info also silences the access log.",
)
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="With CONCORD_HIE_URL set, also run the publisher (a `concord publish` child process). "
    "--no-publish where publishers run as processes of their own.",
)
def serve(host: str, port: int, workers: int, log_level: str, publish: bool) -> None:
    """Serve the FHIR API, the token endpoint and /healthz, /readyz, /metrics.

    Logs are JSON lines on stderr; the access log (logger concord.access) has one per request.
    SIGTERM or Ctrl-C finishes in-flight requests, signs a checkpoint over the audit log's
    unsigned entries and exits 0. With CONCORD_HIE_URL set, the publisher runs beside the API
    (unless --no-publish) and stops with it. Settings come from CONCORD_* variables
    (docs/operations-api.md).
    """
    import uvicorn

    settings = Settings()
    prepare(settings)
    if workers > 1 and settings.is_sqlite():
        click.echo(
            f"note: {workers} workers share the SQLite store in {settings.data_dir} (WAL, and a "
            "shared-memory consent fence across processes): this works on one machine only. To run on "
            "several machines use PostgreSQL (CONCORD_DATABASE_URL) and Redis (CONCORD_REDIS_URL).",
            err=True,
        )
    metrics_dir = _multiprocess_metrics() if workers > 1 else None
    # uvicorn re-raises SIGTERM after its graceful shutdown with the handler it found; with the default
    # one the process would die by the signal instead of exiting 0.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    publisher = PublisherChild() if publish and settings.hie_url else None
    try:
        uvicorn.run(
            APP,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="auto",  # uvloop when installed
            http="auto",  # httptools when installed
            log_config=log_config(log_level),
            access_log=False,  # concord.access writes the access log
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
        )
    finally:
        if publisher is not None:
            publisher.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class PublisherChild:
    """``concord publish`` as a supervised child: same settings (the environment), same stderr.

    If it exits while the API is serving (the store was down at its start, say), it is started
    again after ``RESTART_SECONDS``. On Linux it is told to stop (SIGTERM) if this process dies
    without stopping it.
    """

    RESTART_SECONDS: Final = 5.0

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.process = self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="publisher-supervisor", daemon=True)
        self._watcher.start()

    @staticmethod
    def _spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "publish"],
            stdin=subprocess.DEVNULL,
            preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
        )

    def _watch(self) -> None:
        while not self._stopping.is_set():
            code = self.process.wait()
            if self._stopping.wait(self.RESTART_SECONDS):
                return
            logging.getLogger("concord.serve").warning(
                "the publisher exited (code %s); starting it again", code
            )
            with self._lock:
                if not self._stopping.is_set():
                    self.process = self._spawn()

    def stop(self) -> None:
        """SIGTERM (deliveries in flight finish), then SIGKILL if it outlives the graceful period."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=GRACEFUL_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _multiprocess_metrics() -> str:
    """A fresh directory for the workers' shared metric values; workers inherit it from the environment."""
    path = tempfile.mkdtemp(prefix="concord-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path
