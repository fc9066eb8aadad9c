"""Defects mixed into synthetic extracts at a known rate, and tallied, so tests can check the reports.

Each writer asks ``plan.pick(source, kinds)`` once per record; with probability
``rate`` it gets one of ``kinds`` to inject and the tally records it. The
expected effect of each kind on ingest is in ``EFFECTS``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Final

#: What ingest must do with each defect: the quarantine reason, or how it is reported.
EFFECTS: Final = {
    "bad-check-digit": "quarantine:nhs-number-check-digit",
    "missing-nhs-number": "quarantine:nhs-number-missing",
    "truncated": "quarantine (truncated-row / hl7 / json reason)",
    "unknown-status": "quarantine:unknown-code",
    "unknown-code": "accepted, reported as unknown-code warning",
    "conflicting-birth-date": "accepted, reported as a birthDate conflict",
    "duplicate": "accepted, unchanged (deterministic ids)",
}


class DefectPlan:
    def __init__(self, rate: float, seed: int) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("defect rate must be between 0 and 1")
        self.rate = rate
        self.rng = random.Random(seed ^ 0x5EED)
        self.tally: Counter[tuple[str, str]] = Counter()

    def pick(self, source: str, kinds: Sequence[str]) -> str | None:
        if not kinds or self.rng.random() >= self.rate:
            return None
        kind = self.rng.choice(list(kinds))
        self.tally[(source, kind)] += 1
        return kind

    def report(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (source, kind), n in sorted(self.tally.items()):
            out.setdefault(source, {})[kind] = n
        return out


def break_check_digit(nhs_number: str) -> str:
    """Same number with a wrong check digit (the one the Modulus 11 check rejects)."""
    return nhs_number[:9] + str((int(nhs_number[9]) + 1) % 10)
