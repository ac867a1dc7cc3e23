"""A short memory of check results, per process.

A check whose result depends only on its arguments and on DNS answers (SPF
for a client address, sender and HELO name; the client's reverse name; the
HELO check) gives the same result for the same arguments while those answers
are cached, and a busy sender sends many messages in a row from one server.
:class:`Memo` keeps such results for ``seconds`` (10 by default, less than
the TTL of nearly every record that matters), bounded in size; callers keep
out what must not be reused (temporary errors).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Memo"]

V = TypeVar("V")

SECONDS = 10.0
SIZE = 4096


class Memo(Generic[V]):
    __slots__ = ("_entries", "seconds", "size")

    def __init__(self, seconds: float = SECONDS, size: int = SIZE) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: dict[Hashable, tuple[float, V]] = {}

    def get(self, key: Hashable) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            del self._entries[key]
            return None
        return found[1]

    def put(self, key: Hashable, value: V) -> None:
        entries = self._entries
        if len(entries) >= self.size:
            now = time.monotonic()
            for k in [k for k, (expiry, _) in entries.items() if expiry <= now]:
                del entries[k]
            if len(entries) >= self.size:
                entries.clear()
        entries[key] = (time.monotonic() + self.seconds, value)

    def clear(self) -> None:
        self._entries.clear()
