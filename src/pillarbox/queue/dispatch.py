"""The window of remote attempts: who goes next, and how many at once.

Like Postfix's qmgr, the queue manager keeps only a bounded amount of remote
work in memory: *units* (one entry's pending recipients of one destination
domain) wait here in one queue per domain, and start while fewer than
``concurrency`` attempts run in all and fewer than ``destination_concurrency``
run to their domain.  Domains take turns (round robin), so a destination with
a long backlog does not starve the others, and a slow one only ever holds its
own slots.  Each attempt runs as a task of its own: nothing waits for it but
its entry.

Entries read from the deferred queue count against ``active_limit`` until
their units are done; the poll reads no more than the room left.  Fresh mail
does not count, so intake never waits for the deferred queue.  A domain that
already has ``domain_cap`` units waiting takes no more from the poll: the
manager defers those entries at once, untried, in the delivery transaction
that read them, as Postfix defers the mail of a destination it cannot keep
up with.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pillarbox.deliver.outbound import OutboundMessage

__all__ = ["Dispatcher", "Unit"]


@dataclass(slots=True)
class Unit:
    """One remote attempt: one entry's pending recipients of one destination domain."""

    domain: str
    message: OutboundMessage
    polled: bool                 # read from the queue (counts against the window)


class Dispatcher:
    def __init__(self, run: Callable[[Unit], Awaitable[None]], *, concurrency: int,
                 destination_concurrency: int, active_limit: int) -> None:
        self._run = run
        self.concurrency = concurrency
        self.destination_concurrency = destination_concurrency
        self.active_limit = active_limit
        self.domain_cap = max(active_limit // 4, destination_concurrency)
        self._waiting: dict[str, deque[Unit]] = {}
        self._running: dict[str, int] = {}
        self._ready: deque[str] = deque()        # domains with waiting units and a free slot
        self._total = 0
        self._outstanding: dict[str, int] = {}   # queue id -> units not yet done
        self._polled: set[str] = set()           # queue ids that count against the window
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------- window

    def room(self) -> int:
        """How many more entries the poll may read into memory."""
        return max(0, self.active_limit - len(self._polled))

    def holds(self, queue_id: str) -> bool:
        return queue_id in self._outstanding

    @property
    def in_memory(self) -> int:
        return len(self._outstanding)

    @property
    def running(self) -> int:
        return self._total

    @property
    def idle(self) -> bool:
        """Nothing waits or runs (an attempt's task ends after its outcome is recorded)."""
        return not self._tasks and not self._waiting and not self._outstanding

    def crowded_domains(self) -> frozenset[str]:
        """Domains that take no more units from the poll for now."""
        return frozenset(d for d, w in self._waiting.items() if len(w) >= self.domain_cap)

    def admit(self, units: list[Unit]) -> None:
        """Take one round's units (all of an entry's domains at once)."""
        for unit in units:
            qid = unit.message.queue_id
            self._outstanding[qid] = self._outstanding.get(qid, 0) + 1
            if unit.polled:
                self._polled.add(qid)
            waiting = self._waiting.get(unit.domain)
            if waiting is None:
                waiting = self._waiting[unit.domain] = deque()
                if self._running.get(unit.domain, 0) < self.destination_concurrency:
                    self._ready.append(unit.domain)
            waiting.append(unit)
        self._pump()

    def done(self, unit: Unit) -> bool:
        """A unit is finished (its outcome recorded or dropped); whether it was its
        entry's last."""
        qid = unit.message.queue_id
        left = self._outstanding.get(qid, 1) - 1
        if left > 0:
            self._outstanding[qid] = left
            return False
        self._outstanding.pop(qid, None)
        self._polled.discard(qid)
        return True

    # ------------------------------------------------------------ running

    def _pump(self) -> None:
        while self._ready and self._total < self.concurrency:
            domain = self._ready.popleft()
            waiting = self._waiting.get(domain)
            if not waiting:
                self._waiting.pop(domain, None)
                continue
            unit = waiting.popleft()
            if not waiting:
                del self._waiting[domain]
            running = self._running.get(domain, 0) + 1
            self._running[domain] = running
            self._total += 1
            if domain in self._waiting and running < self.destination_concurrency:
                self._ready.append(domain)   # its turn again after the others
            task = asyncio.ensure_future(self._attempt(unit))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempt(self, unit: Unit) -> None:
        try:
            await self._run(unit)
        finally:
            domain = unit.domain
            running = self._running.get(domain, 1) - 1
            if running:
                self._running[domain] = running
            else:
                self._running.pop(domain, None)
            self._total -= 1
            # The domain had no free slot: it may take its turn again.
            if (domain in self._waiting and running == self.destination_concurrency - 1
                    and domain not in self._ready):
                self._ready.append(domain)
            self._pump()

    async def close(self) -> None:
        """Stop: attempts under way are abandoned (their entries' leases run out, and a
        restart makes them due at once)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiting.clear()
        self._ready.clear()
