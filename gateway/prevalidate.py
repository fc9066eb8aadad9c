"""Validation ahead of the store, in a worker process, so ingest uses a second core.

fhir.resources validation is most of what ingest costs and it holds the GIL, so
a thread cannot help. A worker process maps the *next* batch of records and
validates what they map to while the main process writes the current batch;
it sends back only the content hashes that passed. The main process adds them
to its ValidatedCache and still validates everything else itself (a resource
the worker did not see, a merged Patient of several sources, a failure it must
report): the worker can only save work, never let an invalid resource through,
because a hash names exactly the content that was validated.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

from adapters.records import Item, SourceRecord
from gateway.store.versioning import content_hash, stamp
from mappings.engine import Engine, MappingError
from mappings.ids import IdMaker
from mappings.mapper import Mapper, contribution_resource, provenance
from mappings.specs import load_specs
from mappings.terminology import load_tables
from mappings.validate import ValidationFailure, validate

_STAMP_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_mapper: Mapper | None = None


def _start_worker(id_key: bytes) -> None:
    global _mapper
    _mapper = Mapper(load_specs(), Engine(load_tables()), IdMaker(id_key))


def validated_hashes(items: Sequence[Item]) -> list[str]:
    """In the worker: the content hashes of what ``items`` map to that pass validation."""
    assert _mapper is not None, "worker not started"
    passed = []
    for item in items:
        if not isinstance(item, SourceRecord):
            continue
        try:
            m = _mapper.map(item)
        except MappingError:
            continue
        candidates: list[dict[str, Any]] = [contribution_resource(m), *m.resources]
        # The shared Patient's Provenance as it is when this record is the source's only one.
        target = f"Patient/{m.patient_id}"
        candidates.append(provenance(_mapper.ids, m.source, target, [m.local_id], m.source_ods, "Patient"))
        for resource in candidates:
            try:
                # Stamped as the store would stamp it (the hash ignores the stamps).
                validate(stamp(resource, 1, _STAMP_TIME))
            except ValidationFailure:
                continue
            passed.append(content_hash(resource))
    return passed


class Prevalidator:
    """Worker processes validating batches ahead of the store. Close it when the run ends."""

    def __init__(self, id_key: bytes, workers: int = 2) -> None:
        self.workers = max(1, workers)
        # spawn, not fork: the parent has database and event-loop threads a fork would copy mid-flight.
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(id_key,),
        )

    def submit(self, items: Sequence[Item]) -> asyncio.Future[list[str]]:
        return asyncio.get_running_loop().run_in_executor(self._pool, validated_hashes, list(items))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
