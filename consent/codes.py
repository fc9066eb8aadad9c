"""Opt-out codes as GP extracts record them, and what each means for the register. Pure.

An opt-out code we do not recognise is read as the broadest opt-out (local
shared-care-record dissent, which blocks every purpose) and reported, never
ignored: a misread opt-out must err towards not sharing.
"""

from __future__ import annotations

from typing import Final

from consent.model import OptOutKind

GP_CODES: Final[dict[str, OptOutKind]] = {
    # The borough's local code for dissent from the shared care record.
    "LSCR-DISSENT": OptOutKind.LOCAL,
    # SNOMED CT 827241000000103: dissent from secondary use of GP patient identifiable data (Type 1).
    "827241000000103": OptOutKind.NATIONAL,
}


def gp_opt_out(code: str) -> tuple[OptOutKind, bool]:
    """The kind of opt-out a GP extract's code records, and whether the code was known."""
    kind = GP_CODES.get(code.strip().upper())
    if kind is None:
        return OptOutKind.LOCAL, False
    return kind, True
