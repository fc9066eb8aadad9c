"""What every adapter yields: a SourceRecord it could read, or a RecordError it could not.

    AdapterError            the whole input cannot be read (missing file, wrong format): exit 2
    RecordError             one record cannot be read: quarantined, the run goes on

A record is the source's own data under the source's own field names, as plain
Python values (str, list, dict); the mapping specs in ``mappings/specs`` say
where each field lands in FHIR. ``raw`` keeps the bytes as they came so a
quarantined record can be replayed after a fix.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

SOURCES = ("gp", "acute", "community", "social-care", "fhir")


class AdapterError(Exception):
    """The input as a whole cannot be read. The message never carries patient data."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record from a source: one row, one message, one JSON object.

    ``local_id`` identifies the person at the source (GP patient id, hospital
    number, case id); ``fields`` holds the rest, including ``care_plans``: a
    list of plan dicts (possibly empty).
    """

    source: str
    location: str
    local_id: str
    fields: Mapping[str, Any]
    raw: str


@dataclass(frozen=True, slots=True)
class RecordError:
    """A record that could not be read or mapped, with where and why.

    ``reason`` is a stable code (``nhs-number-missing``, ``hl7-no-pid`` ...);
    ``detail`` is for people and never carries patient data.
    """

    source: str
    location: str
    reason: str
    field: str | None = None
    detail: str = ""
    raw: str = ""
    local_id: str | None = None


Item = SourceRecord | RecordError


class Adapter(Protocol):
    """Reads one source format. ``read`` streams: it holds one record in memory at a time."""

    source: str

    def read(self, stream: Any) -> Iterator[Item]: ...

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        """Parse one quarantined record again (replay)."""
        ...


@contextmanager
def as_text(stream: Any) -> Iterator[Any]:
    """A text view of a binary or text stream: UTF-8 with any BOM dropped, newlines kept as sent.

    Only CR and LF end lines (io.TextIOWrapper, not a codecs reader, which also splits on
    U+2028 and friends). The wrapper is detached on exit, so the caller's stream stays open.
    """
    if isinstance(stream, io.TextIOBase):
        yield stream
        return
    wrapper = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        yield wrapper
    finally:
        if not wrapper.closed:  # the caller may have closed its stream before a reader finished
            wrapper.detach()
