"""Terminology maps: local source codes to SNOMED CT and FHIR codes, kept as FHIR ConceptMap JSON.

A ConceptMap's ``id`` is the name a mapping spec uses (``concept:gp-care-plan-type``).
Each ``group`` maps one source code system to one target system; an element's
first target with an equivalence other than ``unmatched``/``disjoint`` wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Concept:
    system: str
    code: str
    display: str | None

    def coding(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True)
class ConceptMapTable:
    id: str
    title: str
    source_system: str
    entries: Mapping[str, Concept]

    def lookup(self, code: str) -> Concept | None:
        return self.entries.get(code) or self.entries.get(code.strip().upper())


def table_from_conceptmap(resource: Mapping[str, Any]) -> ConceptMapTable:
    if resource.get("resourceType") != "ConceptMap":
        raise ValueError("not a ConceptMap")
    entries: dict[str, Concept] = {}
    source_system = ""
    for group in resource.get("group", []):
        source_system = source_system or group.get("source", "")
        for element in group.get("element", []):
            for target in element.get("target", []):
                if target.get("equivalence") in ("unmatched", "disjoint"):
                    continue
                entries.setdefault(
                    element["code"], Concept(group["target"], target["code"], target.get("display"))
                )
                break
    return ConceptMapTable(resource["id"], resource.get("title", resource["id"]), source_system, entries)


def load_tables(paths: Iterable[Path] | None = None) -> dict[str, ConceptMapTable]:
    """Every ConceptMap shipped in ``mappings/terminology`` (or the given files), by id."""
    if paths is None:
        folder = resources.files("mappings") / "terminology"
        blobs = [p.read_bytes() for p in folder.iterdir() if p.name.endswith(".json")]
    else:
        blobs = [p.read_bytes() for p in paths]
    tables = [table_from_conceptmap(orjson.loads(b)) for b in blobs]
    return {t.id: t for t in tables}
