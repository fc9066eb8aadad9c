"""Splitting an HL7 v2 byte stream into messages, as it is read, one message in memory at a time.

Segments may end in CR, LF or CRLF; MLLP framing bytes (0x0B ... 0x1C 0x0D) and
FHS/BHS/BTS/FTS batch envelopes are dropped; a UTF-8 BOM is ignored (UTF-16 text is refused). A message
starts at each MSH. Segments before any MSH come out as an ``orphan`` unit; a
message over the size limit keeps only its MSH (for the report) and is marked
``too-large`` while the rest of it is skipped, not held. Parsing a message is
the adapter's business (python-hl7): this module only frames.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from adapters.records import AdapterError, decode_legacy, utf16_bom

_TERMINATORS = re.compile(rb"[\r\n\x0b\x1c]")  # CR, LF, MLLP start block, MLLP end block
_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_STARTS = frozenset({b"MSH", b"FHS", b"BHS"})
_BOM = b"\xef\xbb\xbf"


def segments(stream: IO[bytes] | IO[str], chunk_size: int, limit: int) -> Iterator[bytes | None]:
    """Segments as bytes, read ``chunk_size`` at a time; None stands for a segment over ``limit``."""
    pending = bytearray()
    skipping = False
    while True:
        chunk = _read(stream, chunk_size)
        if not chunk:
            break
        parts = _TERMINATORS.split(chunk)
        for i, part in enumerate(parts):
            if not skipping:
                pending += part
            if i < len(parts) - 1:  # a terminator ends this segment
                if not skipping:
                    yield bytes(pending)
                pending.clear()
                skipping = False
            elif len(pending) > limit:
                pending.clear()
                skipping = True
                yield None
    if pending and not skipping:
        yield bytes(pending)


def _read(stream: IO[bytes] | IO[str], size: int) -> bytes:
    try:
        chunk = stream.read(size)
    except UnicodeDecodeError as exc:
        raise AdapterError("HL7 v2 stream is not UTF-8 text: open it in binary mode") from exc
    return chunk.encode("utf-8") if isinstance(chunk, str) else chunk


def segments_of(data: bytes) -> Iterator[bytes | None]:
    yield from _TERMINATORS.split(data)


@dataclass(slots=True)
class Unit:
    """What the splitter hands on: a message, stray segments, or the head of an oversized message."""

    kind: str  # "message" | "orphan" | "too-large"
    segments: list[bytes] = field(default_factory=list)
    size: int = 0


def messages(lines: Iterator[bytes | None], limit: int, strict: bool) -> Iterator[Unit]:
    current: Unit | None = None
    seen = False
    for line in lines:
        if line is None:
            if strict and not seen:
                raise AdapterError("not an HL7 v2 file: no segment terminator where MSH should end")
            seen = True
            current = _oversize(current)
            continue
        if strict and not seen and utf16_bom(line):
            raise AdapterError("HL7 v2 file is UTF-16 text: save it as UTF-8")
        line = line.removeprefix(_BOM).strip()
        if not line:
            continue
        head = line[:3].upper()  # segment ids are upper case; a sender's lower-case ``msh`` still starts one
        if strict and not seen and head not in _STARTS:
            raise AdapterError("not an HL7 v2 file: the first segment is not MSH, FHS or BHS")
        seen = True
        if head in _ENVELOPE or head == b"MSH":
            if current is not None:
                yield current
            current = Unit("message", [line], len(line)) if head == b"MSH" else None
        elif current is None:
            current = Unit("orphan", [line], len(line))
        else:
            _append(current, line, limit)
    if strict and not seen:
        raise AdapterError("HL7 v2 stream is empty")
    if current is not None:
        yield current


def _append(unit: Unit, line: bytes, limit: int) -> None:
    if unit.kind == "too-large":
        return
    unit.segments.append(line)
    unit.size += len(line) + 1
    if unit.size > limit:
        _oversize(unit)


def _oversize(unit: Unit | None) -> Unit:
    """Keep only the first segment (the MSH, for the report); drop what follows until the next message."""
    if unit is None:
        return Unit("too-large")
    unit.kind = "too-large"
    del unit.segments[1:]
    return unit


def decode(segments: list[bytes]) -> str:
    """A message's text: UTF-8, with bytes that are not read as Windows-1252 (``records.decode_legacy``)."""
    return decode_legacy(b"\r".join(segments))
