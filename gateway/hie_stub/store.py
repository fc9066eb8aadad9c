"""What the stub HIE holds: current resources by type and id, with versions, in memory.

``Store`` is the committed state; ``Txn`` is a private overlay over it that a transaction reads
and writes, and ``Txn.commit`` applies in one step (nothing is visible, and nothing changes,
before it). Neither does I/O nor awaits, so a caller on one event loop sees every commit whole;
the server still holds a lock around each transaction so that stays true if an await creeps in.

Versions: a resource's ``meta.versionId`` starts at 1 and rises by one on every write that
changes its content (``meta.versionId``/``lastUpdated`` aside); a write of the same content keeps
the version. A deleted resource's last version is kept, so re-creating it carries on counting.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.hie_stub.search import Query, exact_identifier, matches

Key = tuple[str, str]  # (resourceType, id)


@dataclass(frozen=True, slots=True)
class Stored:
    """One current resource: as sent, plus ``id`` and ``meta.versionId``/``meta.lastUpdated``.

    Kept as compressed JSON, so a region's HIE (a million people) fits in memory: 20,000 test people
    of four small resources each took 2.0 KB a person, against 18.6 KB as parsed dicts (measured).
    Not orjson's output itself: each of those bytes objects holds at least 4 KB, whatever its
    length (measured with tracemalloc).
    """

    packed: bytes
    version: int

    @classmethod
    def of(cls, resource: Mapping[str, Any], version: int) -> Stored:
        return cls(zlib.compress(orjson.dumps(resource), 1), version)

    @property
    def resource(self) -> dict[str, Any]:
        """The resource, parsed afresh: the caller may change it."""
        parsed: dict[str, Any] = orjson.loads(zlib.decompress(self.packed))
        return parsed

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True)
class Write:
    """The outcome of ``Txn.put``: what is stored now, and whether it was new or changed."""

    stored: Stored
    created: bool
    changed: bool


def content_digest(resource: Mapping[str, Any]) -> str:
    """What a resource says, apart from its ``id`` and ``meta``: equal content, equal digest.

    A test audits a large HIE with these (``GET /_stub/digests/{type}``) without reading it whole.
    """
    bare = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    return hashlib.blake2b(orjson.dumps(bare, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def content(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource without the server-managed ``meta.versionId`` and ``meta.lastUpdated``."""
    body = dict(resource)
    meta = {k: v for k, v in (body.pop("meta", None) or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        body["meta"] = meta
    return body


class Store:
    """Committed resources. Reads parse the stored JSON afresh: a caller may change what it gets."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._current: dict[str, dict[str, Stored]] = {}
        self._deleted: dict[Key, int] = {}
        self._by_identifier: dict[tuple[str, str, str], set[str]] = {}

    def get(self, rtype: str, rid: str) -> Stored | None:
        return self._current.get(rtype, {}).get(rid)

    def was_deleted(self, rtype: str, rid: str) -> bool:
        return (rtype, rid) in self._deleted and self.get(rtype, rid) is None

    def search(self, rtype: str, query: Query) -> list[Stored]:
        """Current resources of ``rtype`` matching ``query`` (all of them for an empty one), by id."""
        of_type = self._current.get(rtype, {})
        exact = exact_identifier(query)
        if exact is not None:
            ids = self._by_identifier.get((rtype, *exact), set())
            return [of_type[i] for i in sorted(ids)]
        return [s for _, s in sorted(of_type.items()) if matches(s.resource, query)]

    def counts(self) -> dict[str, int]:
        return {t: len(r) for t, r in sorted(self._current.items()) if r}

    def digests(self, rtype: str) -> list[tuple[str, str, list[str]]]:
        """Each current ``rtype`` by id: ``(id, content_digest, ["system|value" of each identifier])``."""
        out = []
        for rid, stored in sorted(self._current.get(rtype, {}).items()):
            resource = stored.resource
            tokens = [f"{system}|{value}" for _, system, value in _tokens(rtype, resource)]
            out.append((rid, content_digest(resource), tokens))
        return out

    def versions(self) -> dict[str, dict[str, str]]:
        return {
            t: {i: str(s.version) for i, s in sorted(r.items())} for t, r in sorted(self._current.items())
        }

    def begin(self) -> Txn:
        return Txn(self)

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to rebuild this store, as JSON-able data."""
        return {
            "resources": [s.resource for r in self._current.values() for s in r.values()],
            "deleted": [[t, i, v] for (t, i), v in self._deleted.items()],
        }

    def load(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the contents with a ``snapshot()``; resources keep their ids, versions and times."""
        self.clear()
        for resource in snapshot.get("resources", ()):
            self._set(
                (resource["resourceType"], resource["id"]),
                Stored.of(resource, int(resource["meta"]["versionId"])),
            )
        for rtype, rid, version in snapshot.get("deleted", ()):
            self._deleted[(rtype, rid)] = int(version)

    def _set(self, key: Key, stored: Stored | None) -> None:
        rtype, rid = key
        old = self.get(rtype, rid)
        if old is not None:
            for token in _tokens(rtype, old.resource):
                self._by_identifier[token].discard(rid)
        if stored is None:
            self._current.get(rtype, {}).pop(rid, None)
            if old is not None:
                self._deleted[key] = old.version
            return
        self._current.setdefault(rtype, {})[rid] = stored
        self._deleted.pop(key, None)
        for token in _tokens(rtype, stored.resource):
            self._by_identifier.setdefault(token, set()).add(rid)

    def _last_version(self, key: Key) -> int:
        stored = self.get(*key)
        return stored.version if stored is not None else self._deleted.get(key, 0)


class Txn:
    """Uncommitted writes over a ``Store``; reads see them. Use once: ``commit`` or drop it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changes: dict[Key, Stored | None] = {}
        self._now = datetime.now(UTC).isoformat(timespec="milliseconds")

    def get(self, rtype: str, rid: str) -> Stored | None:
        key = (rtype, rid)
        return self._changes[key] if key in self._changes else self._store.get(rtype, rid)

    def search(self, rtype: str, query: Query) -> list[Stored]:
        """As ``Store.search``, over the committed state with this transaction's writes applied."""
        touched = {rid for (t, rid) in self._changes if t == rtype}
        found = {
            s.resource["id"]: s for s in self._store.search(rtype, query) if s.resource["id"] not in touched
        }
        for (t, rid), stored in self._changes.items():
            if t == rtype and stored is not None and matches(stored.resource, query):
                found[rid] = stored
        return [found[i] for i in sorted(found)]

    def put(self, rtype: str, rid: str, resource: Mapping[str, Any]) -> Write:
        """Store ``resource`` (its ``id`` set to ``rid``) as the current version of ``rtype/rid``."""
        body = content(resource)
        body["id"] = rid
        old = self.get(rtype, rid)
        if old is not None and content(old.resource) == body:
            return Write(old, created=False, changed=False)
        key = (rtype, rid)
        last = self._store._last_version(key) if key not in self._changes else self._pending_version(key)
        version = last + 1
        body["meta"] = {**body.get("meta", {}), "versionId": str(version), "lastUpdated": self._now}
        stored = Stored.of(body, version)  # serialised: later changes to ``resource`` cannot reach it
        self._changes[key] = stored
        return Write(stored, created=old is None, changed=True)

    def delete(self, rtype: str, rid: str) -> bool:
        """Delete ``rtype/rid``; False when there was nothing current to delete (still a success)."""
        if self.get(rtype, rid) is None:
            return False
        self._changes[(rtype, rid)] = None
        return True

    def commit(self) -> None:
        for key, stored in self._changes.items():
            self._store._set(key, stored)
        self._changes.clear()

    def _pending_version(self, key: Key) -> int:
        pending = self._changes[key]
        return pending.version if pending is not None else self._store._last_version(key)


def _tokens(rtype: str, resource: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    for ident in resource.get("identifier", ()) if isinstance(resource.get("identifier"), list) else ():
        if isinstance(ident, Mapping) and ident.get("system") and ident.get("value"):
            yield (rtype, str(ident["system"]), str(ident["value"]))
