"""A shared-memory fence for consent changes between processes on one machine (the embedded default).

A file of 65,536 unsigned 64-bit counters, mapped into every process that uses
the same SQLite store. A person's NHS number picks a slot; whoever changes a
person's consent bumps their slot after committing and before returning. A
cached decision remembers the slot's value read *before* its facts were read,
and is trusted only while the slot still holds that value. Two people sharing a
slot only cost each other a cache miss.

Reading a slot is one memory load (no system call), so a cached decision
stays close to a dict lookup. Bumps take an exclusive ``flock`` so increments
from several processes are never lost.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path
from typing import Final

SLOTS: Final = 1 << 16
SIZE: Final = SLOTS * 8


class FileFence:
    __slots__ = ("_fd", "_map", "_view", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < SIZE:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size < SIZE:
                    os.ftruncate(self._fd, SIZE)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, SIZE)
        self._view = memoryview(self._map).cast("Q")

    @staticmethod
    def slot(nhs_number: str) -> int:
        return int(nhs_number) % SLOTS if nhs_number.isdigit() else 0

    @property
    def view(self) -> memoryview:
        """The counters as 64-bit unsigned integers (index with ``slot``); valid until ``close``."""
        return self._view

    def read(self, nhs_number: str) -> int:
        return int(self._view[self.slot(nhs_number)])

    def bump(self, nhs_numbers: list[str] | set[str] | tuple[str, ...]) -> None:
        slots = {self.slot(n) for n in nhs_numbers}
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for s in slots:
                self._view[s] = (self._view[s] + 1) & 0xFFFFFFFFFFFFFFFF
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._view.release()
        self._map.close()
        os.close(self._fd)
