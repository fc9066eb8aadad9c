"""The ingest report: what a run accepted, changed, left alone and quarantined, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_QUARANTINED = 1
EXIT_FAILED = 2


@dataclass(slots=True)
class IngestReport:
    source: str
    input_name: str
    records: int = 0
    accepted: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)
    resources: dict[str, Counter[str]] = field(default_factory=dict)
    run_id: int | None = None

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    @property
    def exit_code(self) -> int:
        return EXIT_QUARANTINED if self.quarantined_total else EXIT_OK

    def count_resource(self, resource_type: str, outcome: str) -> None:
        self.resources.setdefault(resource_type, Counter())[outcome] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "input": self.input_name,
            "run_id": self.run_id,
            "records": self.records,
            "accepted": self.accepted,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "quarantined": self.quarantined_total,
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "warnings_by_reason": dict(sorted(self.warnings.items())),
            "conflicts_by_element": dict(sorted(self.conflicts.items())),
            "resources": {t: dict(sorted(c.items())) for t, c in sorted(self.resources.items())},
            "exit_code": self.exit_code,
        }
