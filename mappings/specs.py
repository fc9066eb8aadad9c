"""Loading the mapping specs kept as JSON in ``mappings/specs/<source>.<ResourceType>.json``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import orjson

from mappings.engine import ResourceSpec


@dataclass(frozen=True, slots=True)
class SourceSpecs:
    """The specs of one source: how its records become a Patient and CarePlans."""

    source: str
    patient: ResourceSpec
    care_plan: ResourceSpec | None


def load_specs() -> dict[str, SourceSpecs]:
    folder = resources.files("mappings") / "specs"
    by_source: dict[str, dict[str, ResourceSpec]] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".json"):
            continue
        spec = ResourceSpec.parse(orjson.loads(entry.read_bytes()))
        by_source.setdefault(spec.source, {})[spec.resource_type] = spec
    return {
        source: SourceSpecs(source, specs["Patient"], specs.get("CarePlan"))
        for source, specs in by_source.items()
        if "Patient" in specs
    }
