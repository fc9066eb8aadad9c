"""What every adapter yields: a SourceRecord it could read, or a RecordError it could not.

    AdapterError            the whole input cannot be read (missing file, wrong format): exit 2
    RecordError             one record cannot be read: quarantined, the run goes on

A record is the source's own data under the source's own field names, as plain
Python values (str, list, dict); the mapping specs in ``mappings/specs`` say
where each field lands in FHIR. ``raw`` keeps the bytes as they came so a
quarantined record can be replayed after a fix.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol

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


#: How an adapter writes a reference from one plan of a record to another plan of the same record
#: (a FHIR Bundle's entries name each other by fullUrl): this prefix, then the target plan's source
#: id as its spec's ``local_id`` makes it. The mapper turns it into a reference to the CarePlan it
#: stores for that plan; one that names no plan of the record is not stored.
PLAN_REFERENCE: Final = "concord-plan:"


def ods_code(value: Any) -> Any:
    """An ODS code as ODS writes them, upper case without surrounding space (anything else as given).

    Codes key records and plans (``person_id@council_ods``, a plan's identifier system), so a
    sender that writes ``e09000031`` must land on the same records as one that writes ``E09000031``.
    """
    return value.strip().upper() if isinstance(value, str) else value


#: Reasons whose quarantined raw is not the whole record (a message over the size limit keeps only
#: its start; a Patient entry held back for another entry writing the same resource keeps only its
#: own entries, so read alone it would be stored over the other): a replay cannot read it, so it
#: stays quarantined for that reason; re-send the record.
NOT_HELD_WHOLE: Final = frozenset({"hl7-message-too-large", "fhir-duplicate-resource"})


class Adapter(Protocol):
    """Reads one source format. ``read`` streams: it holds one record in memory at a time."""

    source: str

    def read(self, stream: Any) -> Iterator[Item]: ...

    def reread(self, raw: str, location: str) -> Iterator[Item]:
        """Parse one quarantined record again (replay)."""
        ...


#: The error handler ``as_text(legacy=True)`` decodes with (registered below).
LEGACY_BYTES: Final = "concord-windows-1252"
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")


def _legacy_bytes(error: UnicodeError) -> tuple[str, int]:
    """Bytes that are not UTF-8, read as Windows-1252 (what a system that says Latin-1 sends), else
    Latin-1: a row an old export wrote in the legacy code page keeps its names (Zoë, O'Neill)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    try:
        return bad.decode("cp1252"), error.end
    except UnicodeDecodeError:
        return bad.decode("latin-1"), error.end


codecs.register_error(LEGACY_BYTES, _legacy_bytes)


def decode_legacy(data: bytes) -> str:
    """``data`` as UTF-8, any bytes that are not read as Windows-1252 (else Latin-1): ``LEGACY_BYTES``."""
    return data.decode("utf-8", LEGACY_BYTES)


def utf16_bom(head: bytes) -> bool:
    """Whether bytes start as UTF-16 text does (spreadsheets' "Unicode text"): not readable as UTF-8."""
    return head[:2] in _UTF16_BOMS


def _peek(stream: Any, size: int) -> bytes:
    if hasattr(stream, "peek"):
        return bytes(stream.peek(size)[:size])
    if hasattr(stream, "seekable") and stream.seekable():
        at = stream.tell()
        head = bytes(stream.read(size))
        stream.seek(at)
        return head
    return b""


@contextmanager
def as_text(stream: Any, legacy: bool = False) -> Iterator[Any]:
    """A text view of a binary or text stream: UTF-8 with any BOM dropped, newlines kept as sent.

    Only CR and LF end lines (io.TextIOWrapper, not a codecs reader, which also splits on
    U+2028 and friends). The wrapper is detached on exit, so the caller's stream stays open.
    UTF-16 text is refused whole (``AdapterError``); with ``legacy`` bytes that are not UTF-8 are
    read as Windows-1252 (``LEGACY_BYTES``), else decoding them raises ``UnicodeDecodeError``.
    """
    if isinstance(stream, io.TextIOBase):
        yield stream
        return
    if utf16_bom(_peek(stream, 2)):
        raise AdapterError("the input is UTF-16 text: send it as UTF-8")
    errors = LEGACY_BYTES if legacy else "strict"
    wrapper = io.TextIOWrapper(stream, encoding="utf-8-sig", errors=errors, newline="")
    try:
        yield wrapper
    finally:
        if not wrapper.closed:  # the caller may have closed its stream before a reader finished
            wrapper.detach()
