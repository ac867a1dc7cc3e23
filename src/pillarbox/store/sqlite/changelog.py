"""What changed in a mailbox after a MODSEQ, remembered per reader connection.

Before each answer every IMAP session asks what changed in its mailbox after
the MODSEQ it knows (``MailStore.changes``, RFC 9051 §7; RFC 7162 for the
MODSEQs).  When several sessions of a process have the same mailbox selected
(a mail client's several connections to one INBOX, a phone and a desktop,
imaptest's twenty), each of them read the same rows again: under load every
answer carried the flags of the messages that the other sessions had just
stored, read once per session.

So each reader connection keeps, per mailbox, a log: the state (UID, flags,
MODSEQ) of every message whose MODSEQ is above the log's ``base``, the UIDs
expunged above it with the MODSEQ of their expunge, and the head as last
read (HIGHESTMODSEQ, UIDNEXT, UIDVALIDITY, keywords).  A session's question
is answered from the log; the log is brought up to date first with one
statement for what changed after the HIGHESTMODSEQ it knows, and only when
any connection committed since.  That test is the WAL-index header (the
first 48 octets of the database's ``-shm`` file, mapped read-only; the
format is SQLite's, documented in its "WAL-mode file format" and shared by
every process and library version on the database): every commit, by any
writer in any process, the CLI's included, rewrites it before the commit can
be seen, so an unchanged header means an unchanged database.  Comparing it
costs no call into SQLite; ``PRAGMA data_version`` did the same job for 22 us
of CPU under load (and, releasing the GIL, as long again waiting to get it
back from the committing thread), four times out of five for nothing.  When
the header cannot be read (no ``-shm`` yet, an unknown version) the log asks
``PRAGMA data_version``.  The store clears the logs of a connection that
commits itself (``SQLiteStore.transaction``), which ``data_version`` does not
count.

Why it is exact: every change of a message takes the mailbox's next MODSEQ
inside its write transaction, and the writers commit one at a time, so a
snapshot whose HIGHESTMODSEQ is ``H`` holds every change up to ``H`` and none
after it.  Reading, in one statement, the head and the rows above the log's
HIGHESTMODSEQ therefore leaves the log holding every message whose MODSEQ is
above ``base``, as it is now; the answer for any MODSEQ at or above ``base``
is a filter of it, the same rows ``changes`` read from the tables.  A
question about an older MODSEQ (QRESYNC after days away) is read from the
tables and starts the log again there.

Bounded: a log starts again at its HIGHESTMODSEQ beyond :data:`LOG_ENTRIES`
entries, and a connection keeps at most :data:`ENTRIES` entries over all its
logs, of at most :data:`LOGS` mailboxes.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import sys
from bisect import bisect_right
from collections.abc import Callable
from operator import attrgetter

from pillarbox.store.base import Changes, FlagState, MessageMeta, NoSuchMailbox

LOG_ENTRIES = 1024     # per mailbox, before the log starts again at its HIGHESTMODSEQ
ENTRIES = 65536        # over all the logs of one connection
LOGS = 4096            # mailboxes with a log, per connection
METAS = 100_000        # messages' whole metadata kept, per connection

# The head of the mailbox and what changed after a MODSEQ, in one statement (so
# in one snapshot).  No ORDER BY: with it SQLite walks the primary key (every
# message, every expunged UID of the mailbox) instead of the MODSEQ indexes.
_SQL = (
    "SELECT 0, highestmodseq, uidvalidity, uidnext, keywords FROM mailboxes WHERE id = ?1"
    " UNION ALL SELECT 1, uid, modseq, 0, flags FROM messages INDEXED BY messages_modseq"
    " WHERE mailbox = ?1 AND modseq > ?2"
    " UNION ALL SELECT 2, uid, modseq, 0, NULL FROM expunged INDEXED BY expunged_modseq"
    " WHERE mailbox = ?1 AND modseq > ?2"
)

_Head = tuple[int, int, int, str]      # HIGHESTMODSEQ, UIDVALIDITY, UIDNEXT, keywords
_Entry = tuple[int, int, FlagState | None]   # MODSEQ, UID, state (None: expunged)


def read(conn: sqlite3.Connection, mailbox_id: int, since: int,
         parse: Callable[[str], frozenset[str]]) -> tuple[_Head, list[_Entry]]:
    """The head and every change after ``since``, ordered by MODSEQ."""
    head = None
    entries: list[_Entry] = []
    for kind, a, b, c, text in conn.execute(_SQL, (mailbox_id, since)):
        if kind == 1:
            entries.append((b, a, FlagState(a, parse(text), b)))
        elif kind == 2:
            entries.append((b, a, None))
        else:
            head = (a, b, c, text)
    if head is None:
        raise NoSuchMailbox(f"mailbox {mailbox_id} is gone")
    entries.sort(key=_by_modseq)
    return head, entries


def _by_modseq(entry: _Entry) -> tuple[int, int]:
    return entry[0], entry[1]


class _Log:
    """The changes of one mailbox above ``base`` (see the module docstring)."""

    __slots__ = ("base", "gone", "head", "keywords", "metas", "modseqs", "state", "uids",
                 "version")

    def __init__(self, base: int, head: _Head, entries: list[_Entry], version: object) -> None:
        self.base = base
        self.version = version            # the WAL-index header (or data_version) then
        self.modseqs: list[int] = []      # ascending; an entry superseded later stays
        self.uids: list[int] = []
        self.state: dict[int, FlagState] = {}   # UID -> as it is now
        self.gone: dict[int, int] = {}          # expunged UID -> MODSEQ of the expunge
        # Whole metadata of messages read since the log began, kept as they are
        # now: flags and MODSEQ follow the log, the rest never changes.
        self.metas: dict[int, MessageMeta] = {}
        self.head = head
        self.keywords = _keywords(head[3])
        self.add(head, entries)

    def __len__(self) -> int:
        return len(self.modseqs)

    def add(self, head: _Head, entries: list[_Entry]) -> int:
        """What a read after the log's HIGHESTMODSEQ found; returns how many
        messages' metadata went with their expunge."""
        metas = self.metas
        kept = len(metas)
        for modseq, uid, now in entries:
            self.modseqs.append(modseq)
            self.uids.append(uid)
            if now is None:
                self.state.pop(uid, None)
                self.gone[uid] = modseq
                metas.pop(uid, None)
            else:
                self.state[uid] = now
                old = metas.get(uid)
                if old is not None:
                    metas[uid] = MessageMeta(uid, now.flags, now.modseq, old.internal_date,
                                             old.size, old.blob, old.savedate)
        if head[3] != self.head[3]:
            self.keywords = _keywords(head[3])
        self.head = head
        return kept - len(metas)

    def restart(self) -> None:
        """Start again at the HIGHESTMODSEQ: nothing has changed above it (the
        metadata kept is as it is now, so it stays)."""
        self.base = self.head[0]
        self.modseqs, self.uids, self.state, self.gone = [], [], {}, {}

    def since(self, modseq: int) -> Changes:
        """The changes after ``modseq`` (at least ``base``), as the tables have them."""
        state, gone, uids, modseqs = self.state, self.gone, self.uids, self.modseqs
        changed: list[FlagState] = []
        expunged: list[int] = []
        for i in range(bisect_right(modseqs, modseq), len(modseqs)):
            uid = uids[i]
            now = state.get(uid)
            if now is not None:
                if now.modseq == modseqs[i]:
                    changed.append(now)
            elif gone.get(uid) == modseqs[i]:
                expunged.append(uid)
        changed.sort()
        expunged.sort()
        highest, validity, uidnext, _ = self.head
        return Changes(highest, uidnext, changed, expunged, validity, self.keywords)


def _keywords(text: str) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


class WalHeader:
    """The WAL-index header of a database, mapped read-only from its ``-shm``
    file (https://www.sqlite.org/walformat.html, "The WAL-Index Header")."""

    _SIZE = 48                 # the first of its two copies
    _VERSION = 3007000         # iVersion of the format this reads

    def __init__(self, shm_path: str) -> None:
        fd = os.open(shm_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._map = mmap.mmap(fd, self._SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)

    def read(self) -> bytes | None:
        """The header, or None when it is not one SQLite has written yet."""
        header = self._map[:self._SIZE]
        if header[12] != 1 or int.from_bytes(header[:4], sys.byteorder) != self._VERSION:
            return None          # isInit not set, or a format this does not know
        return header

    def close(self) -> None:
        self._map.close()


class ChangeLogs:
    """The logs of one reader connection (``SQLiteStore`` keeps one per thread)."""

    def __init__(self, conn: sqlite3.Connection,
                 parse: Callable[[str], frozenset[str]], shm_path: str | None = None) -> None:
        self.conn = conn
        self.parse = parse
        self._logs: dict[int, _Log] = {}
        self._entries = 0
        self._metas = 0
        self._shm_path = shm_path
        self._header: WalHeader | None = None
        # The header is mapped only once this connection has read: the pragma
        # opens a read transaction, and from then on the connection holds the
        # -shm file open under SQLite's shared lock, so no other connection can
        # be the "first" one that truncates and rebuilds it (which would make
        # the mapping fault).
        conn.execute("PRAGMA data_version").fetchone()

    def _version(self) -> object:
        """What says whether any connection committed since: the WAL-index
        header, else the connection's data_version."""
        if self._header is None and self._shm_path is not None:
            try:
                self._header = WalHeader(self._shm_path)
            except (OSError, ValueError):
                pass             # not there yet (or too short): ask SQLite meanwhile
        if self._header is not None:
            header = self._header.read()
            if header is not None:
                return header
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def clear(self) -> None:
        """This connection committed itself: data_version would not tell."""
        self._logs.clear()
        self._entries = 0
        self._metas = 0

    def changes(self, mailbox_id: int, since: int) -> Changes:
        log, version = self._caught_up(mailbox_id)
        if log is not None and since >= log.base:
            return self._answer(log, since)
        # No log yet, or a question about changes before it: read them and
        # start the log there.
        head, entries = read(self.conn, mailbox_id, since, self.parse)
        self._drop(mailbox_id)
        if len(self._logs) >= LOGS or self._entries + len(entries) > ENTRIES:
            self.clear()
        log = self._logs[mailbox_id] = _Log(since, head, entries, version)
        self._entries += len(entries)
        return self._answer(log, since)

    def messages(self, mailbox_id: int, uids: list[int],
                 read_rows: Callable[[list[int]], list[MessageMeta]], *,
                 after_changes: bool = False) -> list[MessageMeta]:
        """The metadata of the messages among ``uids`` that exist, by UID: from
        the log when it holds them (a FETCH of a mailbox's first hundred, asked
        again and again, reads nothing), else from ``read_rows``, kept then.
        The values handed out are never changed afterwards: a change makes a
        new one.  ``after_changes``: as the log stood at the last ``changes``
        of the mailbox, without asking whether anyone committed since (for a
        command that read its changes: its answer may be as of that moment)."""
        log: _Log | None
        if after_changes:
            log = self._logs.get(mailbox_id)
        else:
            try:
                log, _ = self._caught_up(mailbox_id)
            except NoSuchMailbox:
                log = None
        if log is None:
            return read_rows(uids)
        metas = log.metas
        found: list[MessageMeta] = []
        missing: list[int] = []
        for uid in uids:
            meta = metas.get(uid)
            if meta is None:
                missing.append(uid)
            else:
                found.append(meta)
        if missing:
            rows = read_rows(missing)
            room = METAS - self._metas
            for meta in rows[:max(room, 0)]:
                if meta.uid not in metas:
                    metas[meta.uid] = meta
                    self._metas += 1
            if not found:
                return rows
            found += rows
        found.sort(key=_uid)
        return found

    def _caught_up(self, mailbox_id: int) -> tuple[_Log | None, object]:
        """The mailbox's log brought up to date if another connection committed,
        and the connection's data_version (None: no log)."""
        conn = self.conn
        version = self._version()
        log = self._logs.get(mailbox_id)
        if log is None or log.version == version:
            return log, version
        try:
            head, entries = read(conn, mailbox_id, log.head[0], self.parse)
        except NoSuchMailbox:
            self._drop(mailbox_id)
            raise
        if head[1] != log.head[1]:              # another UIDVALIDITY: another mailbox
            self._drop(mailbox_id)
            return None, version
        self._metas -= log.add(head, entries)
        log.version = version
        self._entries += len(entries)
        return log, version

    def _answer(self, log: _Log, since: int) -> Changes:
        answer = log.since(since)
        if len(log) > LOG_ENTRIES or self._entries > ENTRIES:
            self._entries -= len(log)
            log.restart()
        return answer

    def _drop(self, mailbox_id: int) -> None:
        log = self._logs.pop(mailbox_id, None)
        if log is not None:
            self._entries -= len(log)
            self._metas -= len(log.metas)


_uid = attrgetter("uid")
