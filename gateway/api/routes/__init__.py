"""One router per concern; ``mount`` is the one place they are attached to the app."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

#: Router modules, each exposing ``router``. A module not written yet is skipped.
MODULES = ("ops", "token", "metadata", "fhir_read", "fhir_write", "consent", "audit", "console")


def mount(app: FastAPI) -> None:
    for name in MODULES:
        try:
            module = importlib.import_module(f"gateway.api.routes.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gateway.api.routes.{name}":
                raise
            continue
        app.include_router(module.router)
