"""``concord serve``: the API (and, later, the publisher) under uvicorn."""

from __future__ import annotations
