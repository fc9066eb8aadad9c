"""Which writer makes which source's extract."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, Final

from gateway.synth.defects import DefectPlan
from gateway.synth.gp import write_gp
from gateway.synth.population import Person

Writer = Callable[[Iterable[Person], Any, random.Random, DefectPlan], int]


def _lazy(module: str, name: str) -> Writer:
    def call(people: Iterable[Person], out: Any, rng: random.Random, defects: DefectPlan) -> int:
        import importlib

        writer: Writer = getattr(importlib.import_module(module), name)
        return writer(people, out, rng, defects)

    return call


WRITERS: Final[dict[str, Writer]] = {
    "gp": write_gp,
    "acute": _lazy("gateway.synth.acute", "write_acute"),
    "community": _lazy("gateway.synth.community", "write_community"),
    "social-care": _lazy("gateway.synth.social_care", "write_social_care"),
}
