"""What of a request path may be logged, or of a parameter name echoed: digit runs (an NHS number,
any long id) redacted. Pure.

The access logs (the API's ``RequestMiddleware``, the HIE stub's) name a matched route by its
template; a path that matched no route is logged through ``path``, which first undoes percent
encoding (a path arrives decoded once; ``%252B`` is still ``%2B`` then) and then redacts every run
of six or more digits, whatever separates them: ``999 000 0018``, ``999+000+0018``,
``999_000_0018``, ``999%2B000%2B0018``, ``999/000/0018`` all spell the same NHS number. Letters
end a run. No query string is ever logged.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

REDACTED: Final = "[redacted]"
#: Longest logged path (after redaction).
MAX_CHARS: Final = 200
#: Rounds of percent-decoding at most (each undoes one layer; a path that no longer changes stops it).
_DECODE_ROUNDS: Final = 10
# Six or more digits (any script's), separated by anything that is neither a digit nor a letter, or
# by a percent-encoding left after the rounds of decoding.
_DIGITS: Final = re.compile(r"\d(?:(?:%[0-9A-Fa-f]{2}|[\W_])*\d){5,}")


def path(raw: str) -> str:
    """``raw`` (a request path) as it may be logged: decoded, digit runs redacted, at most 200 chars."""
    decoded = raw
    for _ in range(_DECODE_ROUNDS):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    return _DIGITS.sub(REDACTED, decoded)[:MAX_CHARS]


def holds_number(text: str) -> bool:
    """Whether ``text`` holds a run of six or more digits, however separated (an NHS number, a date
    of birth, a phone number): what is never kept from a stranger's answer."""
    return _DIGITS.search(text) is not None


def parameter_name(name: str) -> str:
    """A query parameter's name fit to echo in an answer (an unknown parameter's OperationOutcome):
    printable, at most 40 characters, digit runs as ``…``, whatever separates their digits."""
    kept = "".join(ch for ch in name[:40] if ch.isprintable())
    return _DIGITS.sub("…", kept)
