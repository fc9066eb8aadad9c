"""The console's pages and static files (``gateway.console``), mounted at ``/console/``."""

from __future__ import annotations

from gateway.console.routes import router

__all__ = ["router"]
