"""Which adapter reads which source (``concord ingest --source NAME``)."""

from __future__ import annotations

import importlib
from typing import Final

from adapters.records import Adapter

ADAPTERS: Final = {
    "gp": "adapters.gp:GpAdapter",
    "acute": "adapters.acute:AcuteAdapter",
    "community": "adapters.community:CommunityAdapter",
    "social-care": "adapters.social_care:SocialCareAdapter",
    "fhir": "adapters.fhir:FhirBundleAdapter",
}


def adapter_for(source: str) -> Adapter:
    try:
        module_name, _, class_name = ADAPTERS[source].partition(":")
    except KeyError:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(ADAPTERS)}") from None
    adapter: Adapter = getattr(importlib.import_module(module_name), class_name)()
    return adapter


def all_adapters() -> dict[str, Adapter]:
    return {name: adapter_for(name) for name in ADAPTERS}
