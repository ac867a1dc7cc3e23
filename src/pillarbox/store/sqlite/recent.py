"""Who gets ``\\Recent``: the first unclaimed UID of each mailbox, in shared memory.

IMAP4rev1 makes each new message recent in exactly one session, the first
one told of it (RFC 3501 §2.3.2).  The store keeps that boundary in
``mailboxes.first_recent_uid``; claiming used to be a write to it, and an
IMAP4rev1 session claims whenever it announces new messages, which under
load is before most answers.  Each claim waited its turn at the data
directory's write lock behind the group commits of every worker: about 4 ms
on most commands of imaptest's steady mix.

So the workers of one server claim here instead, in a table that the
supervisor maps before it forks (as the connection counters of
``net/limits.py``): a claim is a few memory operations under a lock shared
by the processes, and the column is brought up to date afterwards by the
advisory committer, monotonically (``max``), so the order of those writes
does not matter.  The column stays the truth across restarts and for
the readers of processes without the table (the CLI), half a second
behind at most (a worker writes its claims at most twice a second, all
mailboxes in one commit); the workers' readers (EXAMINE, STATUS RECENT) consult the
table as well (:meth:`RecentTable.first_unclaimed`), so a claim counts for
them from the moment it is made.

A slot holds one mailbox: its id, the first unclaimed UID, and the value the
column is known to have reached.  A mailbox comes into a free slot, or into
one whose mailbox's claims are all in the column, with the column's value;
so a value read from the column is never behind a claim made here.  When its
slot holds another mailbox with a write still on its way, the caller waits
for that write (half a second at most).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

SLOTS = 65521          # a prime; 3 × 8 octets each, 1.5 MiB in all


class Busy(Exception):
    """The mailbox's slot holds another mailbox whose claim is not yet written."""


class Gone(Exception):
    """The mailbox does not exist any more."""


class RecentTable:
    def __init__(self, slots: int = SLOTS) -> None:
        ctx = multiprocessing.get_context("fork")
        self._slots = slots
        self._cells: Any = ctx.RawArray("q", 3 * slots)   # mailbox, first unclaimed, written
        self._lock: Any = ctx.Lock()

    def claim(self, mailbox_id: int, up_to: int,
              read_column: Callable[[], int | None]) -> tuple[int, int]:
        """Claim the UIDs below ``up_to``: ``(first, end)``, the UIDs from
        ``first`` up to ``end`` are the caller's alone (``first == end``: none).

        ``read_column`` reads ``first_recent_uid`` when the mailbox is not in
        the table yet (None: the mailbox is gone).  Raises :class:`Busy` or
        :class:`Gone`.
        """
        cells = self._cells
        i = 3 * (mailbox_id % self._slots)
        with self._lock:
            if cells[i] != mailbox_id:
                if cells[i] != 0 and cells[i + 2] < cells[i + 1]:
                    raise Busy(mailbox_id)
                column = read_column()
                if column is None:
                    raise Gone(mailbox_id)
                cells[i], cells[i + 1], cells[i + 2] = mailbox_id, column, column
            first = cells[i + 1]
            if first >= up_to:
                return up_to, up_to
            cells[i + 1] = up_to
            return first, up_to

    def first_unclaimed(self, mailbox_id: int) -> int | None:
        """The first unclaimed UID of the mailbox as the table has it, or None
        when the table does not hold it (then the column is the truth).  Readers
        (STATUS RECENT, EXAMINE) take the larger of this and the column, so a
        claim answered a moment ago counts before its write reaches the column."""
        cells = self._cells
        i = 3 * (mailbox_id % self._slots)
        with self._lock:
            return int(cells[i + 1]) if cells[i] == mailbox_id else None

    def written(self, mailbox_id: int, up_to: int) -> None:
        """The column has reached ``up_to`` (or that write was given up)."""
        cells = self._cells
        i = 3 * (mailbox_id % self._slots)
        with self._lock:
            if cells[i] == mailbox_id and cells[i + 2] < up_to:
                cells[i + 2] = up_to
