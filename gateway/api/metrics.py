"""Prometheus metrics for the API: one registry per app, and labels that can never carry patient data.

Contracts:

- Every label value comes from a closed set: the HTTP method (known verbs, else
  ``OTHER``), the matched route's *template* (``/fhir/Patient/{id}``;
  ``<unmatched>`` when no route matched), the status class (``2xx``..``5xx``),
  consent verdict and reason codes, log entry kinds, client roles. Never a raw path, a query
  string, a resource id or an NHS number.
- Decisions and log appends are counted by wrapping the disclosure's appender
  (``install_metrics``): a decision counts once its log entry is committed, which
  is when it takes effect, for single reads and exports alike.
- Under ``concord serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set before the
  workers start) values live in shared files and ``/metrics`` reports the sum
  over all workers, whichever worker answers the scrape.
- What every request adds (its count, latency and log entries, the requests in flight) is tallied
  in this process and added to the instruments at most ``FLUSH_SECONDS`` later, in one step per
  series, rather than as it happens (measured: about 10 us a search with one process's values,
  bench/RESULTS.md; in shared files each change is also a locked write to a memory map, not
  measured apart). So another worker's scrape sees a
  worker's last second late; the worker answering a scrape adds its own tally first, and a
  stopping worker adds its tally before it goes.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    values,
)
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.types import Scope

from consent.chain import Entry, Kind
from consent.model import Reason, Verdict
from gateway.api.principal import Role
from gateway.bootstrap import Services
from gateway.disclosure import Appender

UNMATCHED: Final = "<unmatched>"
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
VERDICTS: Final = frozenset(v.value for v in Verdict)
REASONS: Final = frozenset(r.value for r in Reason)
KINDS: Final = frozenset({Kind.CONSENT_CHANGE, Kind.DISCLOSURE})
ROLES: Final = frozenset(r.value for r in Role)
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The longest a request's tally waits before it is added to the instruments.
FLUSH_SECONDS: Final = 1.0


def multiprocess_mode() -> bool:
    """Whether metric values are kept in shared files (decided when prometheus_client was imported)."""
    return values.ValueClass is not values.MutexValue


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (``/fhir/Patient/{id}``), or None when no route matched."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


def _bounded(value: str | None, allowed: frozenset[str]) -> str:
    if value is None:
        return "none"
    return value if value in allowed else "other"


@dataclass(slots=True)
class _Requests:
    """One request series' tally since the last flush: count, summed seconds, count per bucket."""

    count: int = 0
    seconds: float = 0.0
    #: Observations per bucket: ``BUCKETS[i]`` is the least bound at or above them; the last, +Inf.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))


class Metrics:
    """The app's instruments, registered in a registry of their own (several apps may share a process)."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: noise
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ("method", "route", "status")
        self.requests = Counter("concord_http_requests", "HTTP requests answered.", labels, registry=r)
        self.latency = Histogram(
            "concord_http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            labels,
            buckets=BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "concord_http_requests_in_flight",
            "HTTP requests being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "concord_http_requests_rejected",
            "Requests refused by the body checks before the application saw the body.",
            ("reason",),
            registry=r,
        )
        self.decisions = Counter(
            "concord_consent_decisions",
            "Disclosure decisions committed to the audit log, by verdict and reason code.",
            ("verdict", "reason"),
            registry=r,
        )
        self.audit_entries = Counter(
            "concord_audit_entries_appended",
            "Audit log entries this process committed through the disclosure path, by kind.",
            ("kind",),
            registry=r,
        )
        self.audit_failures = Counter(
            "concord_audit_append_failures",
            "Appends to the audit log that failed (the disclosure was withheld: 503).",
            registry=r,
        )
        self.store_unavailable = Counter(
            "concord_store_unavailable",
            "Requests answered 503 because the store was down, unreachable or out of connections.",
            registry=r,
        )
        self.throttled = Counter(
            "concord_rate_limited_requests",
            "Requests refused with 429 because the client's rate limit was spent, by the client's role.",
            ("role",),
            registry=r,
        )
        self.rate_limit_fallbacks = Counter(
            "concord_rate_limit_fallbacks",
            "Rate-limit checks made in this process's own buckets because Redis failed.",
            registry=r,
        )
        # prometheus_client's labels() checks and converts its values on every call: the few series
        # there can be (every label is bounded) are looked up once and kept.
        self._request_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._entry_series: dict[tuple[str, str | None, str | None], tuple[Any, ...]] = {}
        # The tally not yet added to the instruments (``flush``).
        self._requests: dict[tuple[str, str, str], _Requests] = {}
        self._entries: dict[tuple[str, str | None, str | None], int] = {}
        self._in_flight = 0
        self._in_flight_shown = 0
        self._flush_due: asyncio.TimerHandle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def started(self) -> None:
        """A request came in (``concord_http_requests_in_flight``)."""
        self._in_flight += 1
        self._due()

    def finished(self) -> None:
        self._in_flight -= 1
        self._due()

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Count one answered request. ``route`` must be a template or None, never a raw path."""
        labels = (method if method in METHODS else "OTHER", route or UNMATCHED, status_class(status))
        tally = self._requests.get(labels)
        if tally is None:
            tally = self._requests[labels] = _Requests()
        tally.count += 1
        tally.seconds += seconds
        tally.buckets[bisect_left(BUCKETS, seconds)] += 1  # the first bound at or above: as observe()
        self._due()

    def flush(self) -> None:
        """Add the tally to the instruments, one step per series (and cancel a pending flush)."""
        if self._flush_due is not None:
            self._flush_due.cancel()
        self._flush_due = self._flush_loop = None
        requests, self._requests = self._requests, {}
        for labels, tally in requests.items():
            counter, histogram = self._request_series_of(labels)
            counter.inc(tally.count)
            # prometheus_client's Histogram keeps the sum and a value per bucket (not cumulative,
            # bound order); observe() adds to the sum and to the one bucket an observation falls in.
            histogram._sum.inc(tally.seconds)
            for bucket, count in zip(histogram._buckets, tally.buckets, strict=True):
                if count:
                    bucket.inc(count)
        entries, self._entries = self._entries, {}
        for key, count in entries.items():
            for counter in self._entry_series_of(key):
                counter.inc(count)
        if self._in_flight != self._in_flight_shown:
            self.in_flight.set(self._in_flight)
            self._in_flight_shown = self._in_flight

    def _due(self) -> None:
        """Make sure a flush comes within ``FLUSH_SECONDS`` (at once, outside an event loop)."""
        if self._flush_loop is not None and not self._flush_loop.is_closed():
            return  # one is due (a loop that ended will never run it: then a new one is made)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_due, self._flush_loop = loop.call_later(FLUSH_SECONDS, self.flush), loop

    def _request_series_of(self, labels: tuple[str, str, str]) -> tuple[Any, Any]:
        found = self._request_series.get(labels)
        if found is None:
            found = self._request_series[labels] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        return found

    def rate_limited(self, role: str, allowed: bool, fallback: bool) -> None:
        """Count one rate-limit check: a refusal by the client's role, a check Redis could not make."""
        if not allowed:
            self.throttled.labels(_bounded(role, ROLES)).inc()
        if fallback:
            self.rate_limit_fallbacks.inc()

    def appended(self, entries: Sequence[Entry]) -> None:
        tally = self._entries
        for entry in entries:
            key = (entry.kind, entry.decision, entry.reason)  # enum values: a bounded set of keys
            tally[key] = tally.get(key, 0) + 1
        self._due()

    def _entry_series_of(self, key: tuple[str, str | None, str | None]) -> tuple[Any, ...]:
        found = self._entry_series.get(key)
        if found is None:
            found = self._entry_series[key] = self._series_of(*key)
        return found

    def _series_of(self, kind: str, decision: str | None, reason: str | None) -> tuple[Any, ...]:
        """The counters one log entry of this kind, verdict and reason adds to."""
        counted = [self.audit_entries.labels(_bounded(kind, KINDS))]
        if kind == Kind.DISCLOSURE and decision is not None:
            counted.append(self.decisions.labels(_bounded(decision, VERDICTS), _bounded(reason, REASONS)))
        return tuple(counted)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition and its content type, in the format ``accept`` asks for (text by default,
        OpenMetrics on request): this registry, or every worker's values in multiprocess mode."""
        self.flush()
        encode, content_type = choose_encoder(accept)
        if multiprocess_mode():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return encode(registry), content_type
        return encode(self.registry), content_type

    def retire(self) -> None:
        """At shutdown: add the tally, then drop this process's live gauges from the shared files
        (multiprocess mode)."""
        self.flush()
        if multiprocess_mode():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class CountingAppender:
    """An ``Appender`` that counts what its inner appender committed (and the appends that failed)."""

    def __init__(self, inner: Appender, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def append(self, entries: Sequence[Entry]) -> Any:
        try:
            result = await self.inner.append(entries)
        except Exception:
            self.metrics.audit_failures.inc()
            raise
        self.metrics.appended(entries)
        return result


def metrics_of(app: Starlette) -> Metrics:
    """The app's ``Metrics`` (``app.state.metrics``), made on first use."""
    found = getattr(app.state, "metrics", None)
    if isinstance(found, Metrics):
        return found
    made = Metrics()
    app.state.metrics = made
    return made


def install_metrics(app: Starlette, services: Services) -> None:
    """Count decisions and log appends made through ``services.disclosure`` (call once services exist)."""
    services.disclosure.log = CountingAppender(services.disclosure.log, metrics_of(app))
