"""One process's dispatcher of mailbox changes to the IMAP sessions that watch them.

Hints arrive on the notification channel (``store/sqlite/notify.py``): a
datagram per change, naming the mailboxes.  The hub wakes the sessions in
IDLE that have one of them selected; each re-reads its mailbox and tells its
client at once.  Sessions not in IDLE are not watched: they read their
mailbox before their next answer anyway, and a hint for a mailbox nobody
idles on then costs no read.  While no session of the process is in IDLE
the hub withdraws its listener's marker, so that writers send it nothing.  Nothing per session polls: the hub is one
socket and one dictionary for all sessions of the process, however many
thousand.

Hints can be lost (a full socket buffer drops them), so every
``SWEEP_SECONDS`` the hub reads the HIGHESTMODSEQ of every watched mailbox in
one query and wakes the sessions of those that moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol


log = logging.getLogger("pillarbox.imap")

SWEEP_SECONDS = 10.0

Wake = Callable[[], None]


class Listener(Protocol):
    """This process's inbox of change hints (``store/sqlite/notify.py`` for SQLite)."""

    def fileno(self) -> int: ...

    def read(self) -> set[int]: ...

    def advertise(self) -> None: ...

    def withdraw(self) -> None: ...

    def close(self) -> None: ...


class _ModseqSource(Protocol):
    def highestmodseq(self, mailbox_ids: list[int]) -> dict[int, int]: ...


class Hub:
    """Maps mailbox ids to the wake-up callbacks of the sessions watching them."""

    def __init__(self, listener: Listener | None, store: _ModseqSource) -> None:
        self._listener = listener
        self._store = store
        self._watchers: dict[int, set[Wake]] = {}
        self._seen: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._listener is not None:
            self._loop.add_reader(self._listener.fileno(), self._readable)
        self._sweeper = asyncio.create_task(self._sweep())

    def close(self) -> None:
        if self._loop is not None and self._listener is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    def watch(self, mailbox_id: int, wake: Wake, modseq: int) -> None:
        if not self._watchers and self._listener is not None:
            self._listener.advertise()   # writers send here from now on
        self._watchers.setdefault(mailbox_id, set()).add(wake)
        self._seen[mailbox_id] = max(self._seen.get(mailbox_id, 0), modseq)

    def unwatch(self, mailbox_id: int, wake: Wake) -> None:
        watchers = self._watchers.get(mailbox_id)
        if watchers is None:
            return
        watchers.discard(wake)
        if not watchers:
            del self._watchers[mailbox_id]
            self._seen.pop(mailbox_id, None)
            if not self._watchers and self._listener is not None:
                self._listener.withdraw()   # nobody here waits for hints

    def changed(self, mailbox_ids: set[int]) -> None:
        """Wake every session watching one of ``mailbox_ids``."""
        for mailbox_id in mailbox_ids:
            watchers = self._watchers.get(mailbox_id)
            if not watchers:
                continue
            # Each session asks the store what changed; a delivery to a mailbox
            # that a thousand sessions watch is one read of the tables all the
            # same, the first one (the store's log, store/sqlite/changelog.py).
            for wake in list(watchers):
                try:
                    wake()
                except Exception:  # noqa: BLE001 - one broken session must not stop the rest
                    log.exception("waking an IMAP session failed")

    def _readable(self) -> None:
        assert self._listener is not None
        ids = self._listener.read()
        if ids:
            self.changed(ids)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            if not self._watchers:
                continue
            try:
                current = self._store.highestmodseq(list(self._watchers))
            except Exception:  # noqa: BLE001 - the store is busy; next round
                log.warning("sweep of watched mailboxes failed", exc_info=True)
                continue
            moved = set()
            for mailbox_id in list(self._watchers):
                modseq = current.get(mailbox_id, -1)   # gone: wake, the session finds out
                if modseq != self._seen.get(mailbox_id):
                    self._seen[mailbox_id] = modseq
                    moved.add(mailbox_id)
            if moved:
                self.changed(moved)
