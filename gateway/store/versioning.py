"""Content hashing and version stamping of resources (pure).

A resource's content hash ignores what the store itself stamps (``meta.versionId``,
``meta.lastUpdated``, a Provenance's ``recorded``), so the same input always hashes
the same and re-ingesting it creates no new version.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson


def content_hash(resource: dict[str, Any]) -> str:
    meta = resource.get("meta")
    stripped = resource
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta or not meta):
        kept = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        stripped = {k: v for k, v in resource.items() if k != "meta"}
        if kept:
            stripped["meta"] = kept
    if stripped.get("resourceType") == "Provenance" and "recorded" in stripped:
        stripped = {k: v for k, v in stripped.items() if k != "recorded"}
    return hashlib.sha256(orjson.dumps(stripped, option=orjson.OPT_SORT_KEYS)).hexdigest()


def stamp(resource: dict[str, Any], version_id: int, when: datetime) -> dict[str, Any]:
    """A copy with ``meta.versionId``/``meta.lastUpdated`` (and Provenance ``recorded``) set."""
    instant = instant_text(when)
    out = {
        **resource,
        "meta": {**resource.get("meta", {}), "versionId": str(version_id), "lastUpdated": instant},
    }
    if out.get("resourceType") == "Provenance":
        out["recorded"] = instant
    return out


def instant_text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)
