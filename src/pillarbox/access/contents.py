"""The octets of messages read a moment ago, per copy, in this process.

A client's message list asks for the same messages' header fields again and
again (each refresh, each of its connections, every client of a shared
mailbox); each time every message was found in the store (a query for where
its blob lies) and read from its file.  The parsed entries have a memo of
their own (``access/cache.MEMO``); this is the same for the octets that
``BODY[...]`` sections are cut from.

A copy's octets never change: a blob is written once, and a key names the
mailbox, the UID (never reused in a mailbox) and the blob.  A message
expunged meanwhile is not asked for again (its metadata is gone); if a FETCH
already holding its metadata asks, it gets the octets it would have read.
Bounded: only messages up to :data:`LARGEST` octets, :data:`BUDGET` octets in
all; when full, the oldest quarter goes.
"""

from __future__ import annotations

import itertools

BUDGET = 8 << 20
LARGEST = 64 << 10

Key = tuple[int, int, str]        # mailbox id, UID, blob id


class Contents:
    __slots__ = ("_entries", "_octets", "budget", "largest")

    def __init__(self, budget: int = BUDGET, largest: int = LARGEST) -> None:
        self.budget = budget
        self.largest = largest
        self._entries: dict[Key, bytes] = {}
        self._octets = 0

    def get(self, key: Key) -> bytes | None:
        return self._entries.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def put(self, key: Key, data: bytes) -> None:
        if len(data) > self.largest or key in self._entries:
            return
        entries = self._entries
        if self._octets + len(data) > self.budget:
            for old in list(itertools.islice(entries, max(1, len(entries) // 4))):
                self._octets -= len(entries.pop(old))
        entries[key] = data
        self._octets += len(data)

    def clear(self) -> None:
        self._entries.clear()
        self._octets = 0


#: This process's memo (its IMAP sessions share it).
CONTENTS = Contents()
