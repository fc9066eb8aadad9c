"""Request metrics are tallied in the process and added to the instruments in one step per series."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from consent.chain import Entry, Kind
from gateway.api import metrics as metrics_module
from gateway.api.metrics import BUCKETS, Metrics

SECONDS = [0.0005, 0.001, 0.0011, 0.003, 0.02, 0.02, 0.7, 4.0, 12.0, 0.05]


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


async def test_a_flushed_tally_reads_as_the_same_requests_observed_one_by_one() -> None:
    metrics = Metrics()
    registry = CollectorRegistry()
    expected = Histogram("expected", "", ("method", "route", "status"), buckets=BUCKETS, registry=registry)
    for seconds in SECONDS:
        metrics.observe("GET", "/fhir/Patient", 200, seconds)
        expected.labels("GET", "/fhir/Patient", "2xx").observe(seconds)
    metrics.observe("BREW", None, 503, 0.002)
    assert samples(metrics, "concord_http_requests_total") == {}, "tallied, not yet added"
    metrics.flush()
    ours = generate_latest(metrics.registry).decode().splitlines()
    theirs = [
        line for line in generate_latest(registry).decode().splitlines() if line.startswith("expected_")
    ]
    assert len(theirs) == len(BUCKETS) + 3  # every bucket, +Inf, _count and _sum
    for line in theirs:
        assert line.replace("expected_", "concord_http_request_duration_seconds_") in ours
    counted = samples(metrics, "concord_http_requests_total")
    assert counted[(("method", "GET"), ("route", "/fhir/Patient"), ("status", "2xx"))] == len(SECONDS)
    assert counted[(("method", "OTHER"), ("route", "<unmatched>"), ("status", "5xx"))] == 1


def test_nothing_reaches_the_instruments_until_the_tally_is_flushed_and_then_only_once() -> None:
    metrics = Metrics()

    async def requests() -> None:
        metrics.started()
        metrics.observe("GET", "/fhir/CarePlan", 200, 0.004)
        metrics.appended([Entry("t", Kind.DISCLOSURE, "search", "r", "provider", "RY4", "c", "9990000018",
                                "direct-care", "permit", "no-objection")])  # fmt: skip

    asyncio.run(requests())  # the flush it scheduled never ran: the loop closed first
    assert samples(metrics, "concord_http_requests_total") == {}
    metrics.flush()
    metrics.flush()
    assert list(samples(metrics, "concord_http_requests_total").values()) == [1]
    assert list(samples(metrics, "concord_consent_decisions_total").values()) == [1]
    assert samples(metrics, "concord_http_requests_in_flight") == {(): 1}

    async def later() -> None:  # a new loop (the old one's timer is dead): flushed within the second
        metrics.observe("GET", "/fhir/CarePlan", 200, 0.004)
        await asyncio.sleep(metrics_module.FLUSH_SECONDS + 0.1)

    asyncio.run(later())
    assert list(samples(metrics, "concord_http_requests_total").values()) == [2]


async def test_a_tally_is_flushed_within_flush_seconds_without_a_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "FLUSH_SECONDS", 0.01)
    metrics = Metrics()
    metrics.started()
    metrics.observe("GET", "/fhir/Patient", 200, 0.004)
    metrics.finished()
    await asyncio.sleep(0.05)
    assert list(samples(metrics, "concord_http_requests_total").values()) == [1]
    assert samples(metrics, "concord_http_requests_in_flight") == {(): 0}


def test_outside_an_event_loop_every_change_is_added_at_once() -> None:
    metrics = Metrics()
    metrics.observe("GET", "/fhir/Patient", 200, 0.004)
    assert list(samples(metrics, "concord_http_requests_total").values()) == [1]
