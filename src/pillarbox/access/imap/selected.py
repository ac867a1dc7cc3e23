"""The selected mailbox as one session sees it: message numbers, and what is news.

A session's view is the ordered list of the UIDs it has announced; message
sequence number ``n`` is ``uids[n - 1]`` (RFC 9051 §2.3.1.2).  It changes
only when the session tells its client: new messages with EXISTS, removed
ones with EXPUNGE (or VANISHED under QRESYNC, RFC 7162 §3.2.10), flag changes
with an unsolicited FETCH.  Between those moments other sessions may change
the mailbox; ``refresh`` reads what changed since the MODSEQ the view knows
and turns it into those responses.

EXPUNGE may not be sent while a FETCH, STORE or SEARCH (non-UID) is being
answered, nor when no command is in progress (RFC 9051 §7.5.1): messages
expunged elsewhere then stay in the view, marked, until a command that
allows it (NOOP, IDLE, CHECK, UID commands ...).

UIDs are kept in an ``array`` (8 octets each), so that thousands of sessions
with a mailbox selected cost little memory.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from pillarbox.protocols.imap.commands import SequenceSet
from pillarbox.store.base import Changes, FlagState, Mailbox


@dataclass(slots=True)
class Update:
    """What a refresh found, for the session to render in this order."""

    expunged_seqs: list[int] = field(default_factory=list)   # EXPUNGE n, in sending order
    vanished: list[int] = field(default_factory=list)        # UIDs, for VANISHED
    exists: int | None = None                                 # new EXISTS count
    new: list[int] = field(default_factory=list)              # UIDs that EXISTS adds
    recent: int | None = None
    flags: list[tuple[int, FlagState]] = field(default_factory=list)   # (seq, state)
    new_keywords: bool = False

    def __bool__(self) -> bool:
        return bool(self.expunged_seqs or self.vanished or self.exists is not None
                    or self.flags or self.new_keywords)


class SelectedMailbox:
    """The view of one selected mailbox (see the module docstring)."""

    __slots__ = ("mailbox_id", "name", "readonly", "uidvalidity", "uids", "modseq",
                 "uidnext", "pending", "recent", "keywords", "reported", "condstore",
                 "qresync", "saved")

    def __init__(self, box: Mailbox, uids: Iterable[int], *, readonly: bool,
                 recent: Iterable[int] = ()) -> None:
        self.mailbox_id = box.id
        self.name = box.name
        self.readonly = readonly
        self.uidvalidity = box.uidvalidity
        self.uids = uids if isinstance(uids, array) else array("Q", uids)
        self.modseq = box.highestmodseq
        self.uidnext = box.uidnext
        self.pending: set[int] = set()       # expunged elsewhere, not yet announced
        self.recent: set[int] = set(recent)
        self.keywords = box.keywords
        self.reported: dict[int, int] = {}   # uid -> modseq this session already told
        self.condstore = False
        self.qresync = False
        self.saved: list[int] | None = None  # SEARCHRES (RFC 5182), as UIDs

    # ------------------------------------------------------------ numbering

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def uid_of(self, seq: int) -> int:
        return self.uids[seq - 1]

    def resolve(self, sequence: SequenceSet, *, uid: bool) -> list[int]:
        """The UIDs a sequence set names, ascending, without duplicates.

        Message numbers out of range make the set invalid (RFC 9051 §9: the
        caller answers BAD); UIDs that do not exist are just left out, and
        ``*`` stands for the largest one (§6.4.8).  ``$`` is the saved result.
        """
        if sequence.saved:
            saved = self.saved or []
            return [u for u in saved if self.seq_of(u) is not None]
        if uid:
            largest = self.uids[-1] if self.uids else 0
            out: set[int] = set()
            for a, b in sequence.resolve(largest):
                if a == 0 and b == 0:
                    continue
                lo = bisect_left(self.uids, a)
                hi = bisect_left(self.uids, b + 1)
                out.update(self.uids[lo:hi])
            return sorted(out)
        total = len(self.uids)
        seqs: set[int] = set()
        for a, b in sequence.resolve(total):
            if a < 1 or b > total:
                raise InvalidSequence(
                    f"message number {b if b > total else a} does not exist "
                    f"(the mailbox has {total})"
                )
            seqs.update(range(a, b + 1))
        return [self.uids[s - 1] for s in sorted(seqs)]

    # ------------------------------------------------------------ changes

    def refresh(self, changes: Changes, *, allow_expunge: bool, keywords: tuple[str, ...]
                ) -> Update:
        update = Update()
        if keywords != self.keywords:
            self.keywords = keywords
            update.new_keywords = True
        gone = {u for u in changes.expunged if self.seq_of(u) is not None}
        self.pending |= gone
        if allow_expunge and self.pending:
            for uid in sorted(self.pending):
                seq = self.seq_of(uid)
                if seq is None:
                    continue
                del self.uids[seq - 1]
                self.recent.discard(uid)
                self.reported.pop(uid, None)
                if self.qresync:
                    update.vanished.append(uid)
                else:
                    # Numbers taken after the removals before it: sent in
                    # this order, each is right when the client reads it.
                    update.expunged_seqs.append(seq)
            self.pending.clear()
        largest = self.uids[-1] if self.uids else 0
        new = [m for m in changes.changed if m.uid > largest]
        for meta in changes.changed:
            if meta.uid > largest:
                continue
            seq = self.seq_of(meta.uid)
            if seq is None or meta.uid in self.pending:
                continue
            if self.reported.get(meta.uid) == meta.modseq:
                continue
            update.flags.append((seq, meta))
        self.reported.clear()
        if new:
            self.uids.extend(m.uid for m in new)
            update.exists = len(self.uids)
            update.new = [m.uid for m in new]
        if changes.uidnext > self.uidnext:
            self.uidnext = changes.uidnext
        self.modseq = max(self.modseq, changes.highestmodseq)
        return update

    def forget(self, uids: Iterable[int]) -> list[int]:
        """Drop UIDs this session expunged itself; return their message numbers,
        highest first (the order to send EXPUNGE responses in)."""
        seqs = []
        for uid in sorted(set(uids), reverse=True):
            seq = self.seq_of(uid)
            if seq is None:
                continue
            del self.uids[seq - 1]
            self.pending.discard(uid)
            self.recent.discard(uid)
            seqs.append(seq)
        return seqs


class InvalidSequence(ValueError):
    """A message number beyond the mailbox (BAD, RFC 9051 §9 seq-number)."""
