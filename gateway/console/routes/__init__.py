"""The console's router: every page under ``/console`` and the vendored assets under ``/console/static``.

Pages stay out of the OpenAPI description (and so out of the FHIR CapabilityStatement).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.staticfiles import StaticFiles

from gateway.console.routes import access, auth, integrity, publication, quality, record, register

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)
for module in (auth, record, register, access, integrity, publication, quality):
    router.include_router(module.router)  # each carries the /console prefix (full route templates in logs)
router.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
