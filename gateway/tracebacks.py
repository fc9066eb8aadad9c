"""What of an exception may be logged: the type and frames of each exception in its chain. Pure.

Never the message. An exception's text may quote the record it failed on: pydantic's quotes its
input (a truncated dump of a Patient: names, NHS numbers, phone numbers), orjson's and fhir_core's a
fragment of the document, a KeyError its key. The types and where each was raised (file, line,
function) are what finding a fault takes; the record that caused it is in the quarantine or the
request, behind access control, not in a log.
"""

from __future__ import annotations

import itertools
import traceback
from types import TracebackType
from typing import Final

HEADER: Final = "Traceback (most recent call last; exception messages are not logged):"
CAUSE: Final = "The above exception was the direct cause of the following exception:"
CONTEXT: Final = "During handling of the above exception, another exception occurred:"
#: Identical frames in a row (a recursion) shown before the rest are counted instead.
REPEATS_SHOWN: Final = 3


def describe(exc: BaseException) -> str:
    """``exc`` and the exceptions it was raised from, oldest first, as Python prints them but for
    the messages: types and frames only."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__cause__ is not None:
            following, link = current.__cause__, CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            following, link = current.__context__, CONTEXT
        else:
            following, link = None, ""
        chain.append((current, link))
        current = following
    lines: list[str] = []
    for older, link in reversed(chain):
        if lines and link:
            lines += ["", link, ""]
        lines += _one(older)
    return "\n".join(lines)


def _one(exc: BaseException) -> list[str]:
    lines = [HEADER, *_frames(exc.__traceback__), _type_name(exc)]
    if isinstance(exc, BaseExceptionGroup):
        for n, inner in enumerate(exc.exceptions, 1):
            lines.append(f"  +-- {n} of {len(exc.exceptions)}:")
            lines += [f"  |   {line}" for line in describe(inner).splitlines()]
    return lines


def _frames(tb: TracebackType | None) -> list[str]:
    described = (
        f'  File "{frame.f_code.co_filename}", line {lineno}, in {frame.f_code.co_name}'
        for frame, lineno in traceback.walk_tb(tb)
    )
    lines: list[str] = []
    for line, run in itertools.groupby(described):
        times = sum(1 for _ in run)
        lines += [line] * min(times, REPEATS_SHOWN)
        if times > REPEATS_SHOWN:
            lines.append(f"  [the line above repeated {times - REPEATS_SHOWN} more times]")
    return lines


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
