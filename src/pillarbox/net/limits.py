"""Connection limits shared by all worker processes.

Workers accept from the same listening sockets, so a per-process count would
let a client open ``workers`` times its share.  The counters live in shared
memory that the supervisor creates before it forks: one row per worker, slot
0 the worker's total, the other slots its connections per client address,
hashed.  Two addresses that share a slot only make the limit stricter for
both, never looser.  When a worker dies, the supervisor zeroes its row
before starting its successor, so a crash never leaks connection counts.
Beside the counts, a flag per worker says that it accepts connections
(``net/balance.py`` waits for the others at start).
"""

from __future__ import annotations

import multiprocessing
import zlib
from typing import Any

SLOTS = 16381  # a prime


class ConnectionLimiter:
    def __init__(self, max_total: int, max_per_ip: int, workers: int = 1) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.workers = workers
        ctx = multiprocessing.get_context("fork")
        self._counts: Any = ctx.RawArray("i", (SLOTS + 1) * workers)
        self._ready: Any = ctx.RawArray("b", workers)
        self._lock: Any = ctx.Lock()
        self._row = 0
        self.worker = 0

    def bind(self, worker: int) -> None:
        """Count this process's connections in row ``worker``."""
        self.worker = worker
        self._row = worker * (SLOTS + 1)

    def loads(self) -> list[int]:
        """Each worker's open connections, by worker index (read without the lock:
        a balancing hint, not a limit)."""
        counts = self._counts
        return [counts[r] for r in range(0, (SLOTS + 1) * self.workers, SLOTS + 1)]

    def mark_ready(self) -> None:
        """This worker accepts connections now."""
        self._ready[self.worker] = 1

    def all_ready(self) -> bool:
        return all(self._ready)

    def clear(self, worker: int) -> None:
        base = worker * (SLOTS + 1)
        self._ready[worker] = 0
        with self._lock:
            for i in range(SLOTS + 1):
                self._counts[base + i] = 0

    @staticmethod
    def _slot(ip: str) -> int:
        return 1 + zlib.crc32(ip.encode()) % SLOTS

    def acquire(self, ip: str) -> str | None:
        """Count a new connection; return why it is refused, or None."""
        slot = self._slot(ip)
        counts = self._counts
        stride = SLOTS + 1
        rows = range(0, stride * self.workers, stride)
        with self._lock:
            if sum(counts[r] for r in rows) >= self.max_total:
                return "too many connections"
            if sum(counts[r + slot] for r in rows) >= self.max_per_ip:
                return "too many connections from this address"
            counts[self._row] += 1
            counts[self._row + slot] += 1
        return None

    def release(self, ip: str) -> None:
        slot = self._slot(ip)
        counts = self._counts
        with self._lock:
            if counts[self._row] > 0:
                counts[self._row] -= 1
            if counts[self._row + slot] > 0:
                counts[self._row + slot] -= 1
