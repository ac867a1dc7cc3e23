"""Mail access on the SQLite store: mailboxes, messages, flags, MODSEQ, quota.

The ``MailStore`` half of ``SQLiteStore`` (``store/base.py``): what IMAP,
POP3, import/export and SASL need.

- **Reads** run on the calling thread's connection: indexed, short, and
  never inside a transaction, so they see the latest commit and block no
  writer (WAL).
- **Writes** are jobs for the process's group-commit thread
  (``groupcommit.py``): every job waiting is committed together, so many
  sessions share one fsync, and a coroutine returns only once its job is on
  the disk (an APPEND, STORE, COPY, MOVE or EXPUNGE answered OK survives
  ``kill -9``).  Message bodies are written and fsync'd with their directory
  before the transaction that refers to them.  After the commit, the changed
  mailboxes are announced on the notification channel (``notify.py``).

Every change of a message (new, new flags, expunged) takes the mailbox's
next MODSEQ (RFC 7162 §3.1.1: one value per command, shared by the messages
it changes); an expunged UID is remembered with its MODSEQ in ``expunged``
for QRESYNC.  UIDs come from ``uidnext`` and are never reused, also across
RENAME (RFC 9051 §2.3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
from array import array
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pillarbox.store.base import (
    Changes,
    Credentials,
    FlagUpdate,
    Mailbox,
    MailboxCounts,
    MailboxExists,
    MailboxHasChildren,
    MessageMeta,
    NewMessage,
    NoSuchMailbox,
    NotFound,
    OverQuota,
    Quota,
    StoreError,
)
from pillarbox.store.blobs import new_id, segment_separator, write_segment
from pillarbox.store.sqlite.changelog import ChangeLogs
from pillarbox.store.sqlite.notify import Notifier
from pillarbox.store.sqlite.recent import Busy as RecentBusy
from pillarbox.store.sqlite.recent import Gone as RecentGone
from pillarbox.store.sqlite.recent import RecentTable

T = TypeVar("T")

# RFC 9051 §2.3.2: the system flags a client may store (\Recent it may not).
SYSTEM_FLAGS = {
    f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
}

# The SQL test of a message row's \Deleted flag (``flags`` holds them as text).
_IS_DELETED = "flags LIKE '%\\Deleted%'"

HIERARCHY = "/"
_SMALL = 65536          # bodies under this share one segment file per append
_MAX_NAME = 1000        # octets of a mailbox name, in UTF-8


def canonical_flag(flag: str) -> str:
    """System flags in their RFC spelling; keywords as given."""
    return SYSTEM_FLAGS.get(flag.lower(), flag)


_FLAG_SETS: dict[str, frozenset[str]] = {}


def _flag_rows(conn: sqlite3.Connection, mailbox_id: int,
               uids: list[int]) -> list[tuple[int, str, int]]:
    """(uid, flags, modseq) of those of ``uids`` that exist: one range read when
    they lie close together (a statement prepared once, not one per length of
    an ``IN`` list), else ``IN`` lists of at most 500."""
    if not uids:
        return []
    lo, hi = min(uids), max(uids)
    if hi - lo < 2 * len(uids):
        wanted = set(uids)
        return [r for r in conn.execute(
            "SELECT uid, flags, modseq FROM messages WHERE mailbox = ? AND uid BETWEEN ? AND ?",
            (mailbox_id, lo, hi)) if r[0] in wanted]
    rows: list[tuple[int, str, int]] = []
    for start in range(0, len(uids), 500):
        chunk = uids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(
            f"SELECT uid, flags, modseq FROM messages WHERE mailbox = ? AND uid IN ({marks})",
            (mailbox_id, *chunk)).fetchall()
    return rows


def parse_flags(text: str) -> frozenset[str]:
    """The flags of a ``flags`` column; the same few sets recur, so they are shared."""
    found = _FLAG_SETS.get(text)
    if found is None:
        found = frozenset(text.split()) if text else frozenset()
        if len(_FLAG_SETS) < 4096:
            _FLAG_SETS[text] = found
    return found


def format_flags(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def check_mailbox_name(name: str) -> str:
    """A mailbox name we can store: non-empty levels, no control characters.

    Raises ``StoreError`` with a text for the client (NO [CANNOT]).
    """
    if not name:
        raise StoreError("the mailbox name is empty")
    if len(name.encode()) > _MAX_NAME:
        raise StoreError(f"the mailbox name is longer than {_MAX_NAME} octets")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise StoreError("the mailbox name contains control characters")
    if any(c in name for c in "*%"):
        raise StoreError("the mailbox name contains a wildcard (* or %)")
    levels = name.split(HIERARCHY)
    if any(not level for level in levels):
        raise StoreError("the mailbox name has an empty level (a leading, trailing or doubled /)")
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    return HIERARCHY.join(levels)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class MailStoreMixin:
    """The mail access methods of ``SQLiteStore`` (mixed in; see its attributes)."""

    # Provided by SQLiteStore.
    run_dir: Path
    blobs: Any
    create_mailbox: Callable[..., int]
    if TYPE_CHECKING:
        @property
        def reader(self) -> sqlite3.Connection: ...

        @property
        def committer(self) -> Any: ...

        @property
        def advisory(self) -> Any: ...

    _local: Any                   # SQLiteStore's per-thread state (reader connection, logs)
    db_path: Path
    _notifier: Notifier | None = None
    # The workers' shared \\Recent table (``serve`` attaches it; None: the column alone).
    recent_table: RecentTable | None = None
    _files = threading.local()   # per thread: open blob files for pread
    # Cache rows handed to the committer and not yet committed, by blob.
    _cache_inflight: dict[str, tuple[Any, ...]] | None = None

    # ------------------------------------------------------------------ helpers

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            self._notifier = Notifier(self.run_dir)
        return self._notifier

    async def _write(
        self,
        job: Callable[[sqlite3.Connection], T],
        *,
        prepare: Callable[[], None] | None = None,
        dirs: tuple[Path, ...] = (),
        notify: Callable[[T], Iterable[int]] | None = None,
    ) -> T:
        """Run ``job`` in the next group commit; return its result once durable."""
        # Once handed in, a commit's outcome does not depend on whether the
        # client is still there to hear about it (see submit_async).
        # rerun: these jobs touch nothing but the connection (see GroupCommitter).
        result: T = await self.committer.submit_async(job, prepare=prepare, dirs=dirs,
                                                      rerun=True)
        if notify is not None:
            self.notifier.publish(notify(result))
        return result

    @staticmethod
    def _mailbox_row(row: tuple[Any, ...]) -> Mailbox:
        mid, account, name, special, validity, uidnext, modseq, keywords = row
        return Mailbox(mid, account, name, special, validity, uidnext, modseq,
                       tuple(keywords.split()) if keywords else ())

    _MAILBOX_COLUMNS = (
        "id, account, name, special_use, uidvalidity, uidnext, highestmodseq, keywords"
    )

    @staticmethod
    def _meta(row: tuple[Any, ...]) -> MessageMeta:
        uid, flags, modseq, date, size, blob, savedate = row
        return MessageMeta(uid, parse_flags(flags), modseq, date, size, blob, savedate)

    _META_COLUMNS = "uid, flags, modseq, internal_date, size, blob, savedate"

    # ------------------------------------------------------------ credentials

    def credentials(self, address: str) -> Credentials | None:
        row = self.reader.execute(
            "SELECT id, address, password, scram FROM accounts WHERE address = ?", (address,)
        ).fetchone()
        return Credentials(*row) if row else None

    def set_credentials(self, address: str, password_hash: str, scram: str | None) -> None:
        self._update_account(address, "password = ?, scram = ?", (password_hash, scram))

    def _update_account(self, address: str, assignments: str, values: tuple[Any, ...]) -> None:
        """An administrator's change of one account row (CLI), committed at once."""
        conn = self.reader
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                f"UPDATE accounts SET {assignments} WHERE address = ?", (*values, address)
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if cur.rowcount == 0:
            raise NotFound(f"no account {address}")

    def account_id(self, address: str) -> int | None:
        row = self.reader.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ mailbox reads

    def mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = self.reader.execute(
            f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE account = ? ORDER BY name",
            (account_id,),
        ).fetchall()
        return [self._mailbox_row(r) for r in rows]

    def mailbox(self, account_id: int, name: str) -> Mailbox | None:
        if name.upper() == "INBOX":
            name = "INBOX"
        row = self.reader.execute(
            f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE account = ? AND name = ?",
            (account_id, name),
        ).fetchone()
        return self._mailbox_row(row) if row else None

    def mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = self.reader.execute(
            f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,)
        ).fetchone()
        return self._mailbox_row(row) if row else None

    def counts(self, mailbox_id: int) -> MailboxCounts:
        row = self.reader.execute(
            "SELECT count(*), coalesce(sum(size), 0),"
            " coalesce(sum(flags NOT LIKE '%\\Seen%'), 0),"
            f" coalesce(sum({_IS_DELETED}), 0)"
            " FROM messages WHERE mailbox = ?",
            (mailbox_id,),
        ).fetchone()
        messages, size, unseen, deleted = row
        return MailboxCounts(messages, unseen, deleted, size)

    def subscriptions(self, account_id: int) -> list[str]:
        return [r[0] for r in self.reader.execute(
            "SELECT name FROM subscriptions WHERE account = ? ORDER BY name", (account_id,)
        )]

    def quota(self, account_id: int) -> Quota:
        return self._quota(self.reader, account_id)

    @staticmethod
    def _quota(conn: sqlite3.Connection, account_id: int) -> Quota:
        limits = conn.execute(
            "SELECT quota_storage, quota_messages FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if limits is None:
            raise NotFound(f"no account {account_id}")
        used = conn.execute(
            "SELECT coalesce(sum(m.size), 0), count(*) FROM messages m"
            " JOIN mailboxes b ON m.mailbox = b.id WHERE b.account = ?",
            (account_id,),
        ).fetchone()
        return Quota(used[0], limits[0], used[1], limits[1])

    def quota_if_limited(
        self, account_id: int, conn: sqlite3.Connection | None = None
    ) -> Quota | None:
        """``quota()``, but None without counting for an account with no limit:
        the usage query reads every message of the account."""
        c = conn or self.reader
        limits = c.execute(
            "SELECT quota_storage, quota_messages FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if limits is None:
            raise NotFound(f"no account {account_id}")
        if limits == (None, None):
            return None
        return self._quota(c, account_id)

    def set_quota(self, address: str, storage: int | None, messages: int | None) -> None:
        self._update_account(address, "quota_storage = ?, quota_messages = ?",
                             (storage, messages))

    # ------------------------------------------------------------ message reads

    def messages(self, mailbox_id: int) -> list[MessageMeta]:
        rows = self.reader.execute(
            f"SELECT {self._META_COLUMNS} FROM messages WHERE mailbox = ? ORDER BY uid",
            (mailbox_id,),
        ).fetchall()
        meta = self._meta
        return [meta(r) for r in rows]

    def flag_rows(self, mailbox_id: int, first_uid: int, last_uid: int
                  ) -> list[tuple[int, frozenset[str], int]]:
        """(UID, flags, MODSEQ) of the messages in a UID range, by UID; equal
        flag sets are the same object (one per distinct value)."""
        parse = parse_flags
        return [(uid, parse(text), mseq) for uid, text, mseq in self.reader.execute(
            "SELECT uid, flags, modseq FROM messages WHERE mailbox = ?"
            " AND uid BETWEEN ? AND ? ORDER BY uid",
            (mailbox_id, first_uid, last_uid),
        )]

    def snapshot(self, mailbox_id: int) -> tuple[Mailbox, array, int | None] | None:
        """What SELECT needs, read in one snapshot: the mailbox, its UIDs in
        order, and the first UID without \\Seen (None if all are seen)."""
        conn = self.reader
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if row is None:
                return None
            uids = array("Q", [r[0] for r in conn.execute(
                "SELECT uid FROM messages WHERE mailbox = ? ORDER BY uid", (mailbox_id,))])
            unseen = conn.execute(
                "SELECT min(uid) FROM messages WHERE mailbox = ? AND flags NOT LIKE '%\\Seen%'",
                (mailbox_id,),
            ).fetchone()[0]
        finally:
            conn.execute("COMMIT")
        return self._mailbox_row(row), uids, unseen

    def messages_by_uid(self, mailbox_id: int, uids: list[int], *,
                        after_changes: bool = False) -> list[MessageMeta]:
        """The messages among ``uids`` that still exist, by UID: kept by the
        connection's log of the mailbox (``changelog.py``) once read, which
        brings their flags and MODSEQ up to date, and read otherwise.
        ``after_changes``: the caller read the mailbox's ``changes`` during the
        same command; the answer may be as of then (nothing is asked of the
        database to know whether anyone committed since)."""
        if not uids:
            return []
        return self._changelogs().messages(
            mailbox_id, uids, lambda missing: self._read_metas(mailbox_id, missing),
            after_changes=after_changes)

    def _read_metas(self, mailbox_id: int, uids: list[int]) -> list[MessageMeta]:
        """The messages among ``uids`` that exist, by UID, from the table.

        A range read when the UIDs are close together (most sets clients send
        are ranges): one statement whatever their number, where an ``IN``
        list is a new statement to prepare for each length."""
        lo, hi = (min(uids), max(uids)) if uids else (0, -1)
        if len(uids) > 2000 or hi - lo < 2 * len(uids):
            wanted = set(uids)
            rows = self.reader.execute(
                f"SELECT {self._META_COLUMNS} FROM messages WHERE mailbox = ?"
                " AND uid BETWEEN ? AND ? ORDER BY uid",
                (mailbox_id, lo, hi),
            ).fetchall()
            return [self._meta(r) for r in rows if r[0] in wanted]
        out: list[MessageMeta] = []
        for start in range(0, len(uids), 500):
            chunk = uids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out += [self._meta(r) for r in self.reader.execute(
                f"SELECT {self._META_COLUMNS} FROM messages WHERE mailbox = ?"
                f" AND uid IN ({marks}) ORDER BY uid",
                (mailbox_id, *chunk),
            )]
        out.sort(key=lambda m: m.uid)
        return out

    def first_recent_uid(self, mailbox_id: int) -> int:
        """The first UID no session has claimed as \\Recent yet (EXAMINE shows them)."""
        column = self._recent_column(mailbox_id)
        if column is None:
            return 1 << 62
        return max(column, self._claimed_up_to(mailbox_id))

    def _recent_column(self, mailbox_id: int) -> int | None:
        """``first_recent_uid`` as the column has it (None: no such mailbox); the
        shared table's reader too, so it must not consult the table."""
        row = self.reader.execute(
            "SELECT first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def _claimed_up_to(self, mailbox_id: int) -> int:
        """The shared table's claims (store/sqlite/recent.py), ahead of the column."""
        table = self.recent_table
        found = table.first_unclaimed(mailbox_id) if table is not None else None
        return found or 0

    def unclaimed_recent(self, mailbox_id: int) -> int:
        """Messages no session has claimed as \\Recent yet (for STATUS RECENT)."""
        row = self.reader.execute(
            "SELECT count(*) FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
            " WHERE b.id = ? AND m.uid >= max(b.first_recent_uid, ?)",
            (mailbox_id, self._claimed_up_to(mailbox_id)),
        ).fetchone()
        return int(row[0])

    async def claim_recent(self, mailbox_id: int, up_to: int) -> tuple[int, int]:
        """Take the \\Recent UIDs below ``up_to`` for one session (RFC 3501 §2.3.2).

        Returns ``(first, end)``: the UIDs from ``first`` up to ``end`` are
        recent for the caller alone.  A caller claims exactly the UIDs it is
        announcing, so that every message is \\Recent in exactly one session
        (imaptest's checkpoints check it); the next claim starts at ``end``.
        """

        def job(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(
                "SELECT first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if row is None:
                raise NoSuchMailbox(f"mailbox {mailbox_id} does not exist any more")
            first = int(row[0])
            if first >= up_to:
                return up_to, up_to
            conn.execute(
                "UPDATE mailboxes SET first_recent_uid = ? WHERE id = ?", (up_to, mailbox_id)
            )
            return first, up_to

        table = self.recent_table
        if table is not None:
            return await self._claim_shared(table, mailbox_id, up_to)
        column = self._recent_column(mailbox_id)
        if column is not None and column >= up_to:
            return up_to, up_to   # nothing to claim: no write at all
        return await self.advisory.submit_async(job)  # type: ignore[no-any-return]

    async def _claim_shared(self, table: RecentTable, mailbox_id: int,
                            up_to: int) -> tuple[int, int]:
        """The claim in the workers' shared table (``store/sqlite/recent.py``),
        then the column, within half a second and without waiting for it."""

        while True:
            try:
                first, end = table.claim(
                    mailbox_id, up_to, lambda: self._recent_column(mailbox_id))
                break
            except RecentBusy:
                await asyncio.sleep(0.002)   # another mailbox's write is on its way
            except RecentGone:
                raise NoSuchMailbox(f"mailbox {mailbox_id} does not exist any more") from None
        if first < end:
            self._write_recent_later(table, mailbox_id, end)
        return first, end

    # Claims reach the column at most this often, all the mailboxes' in one
    # write: for the workers the shared table is the truth meanwhile, and each
    # write is a commit that every reader of the database notices (its page
    # cache and its change logs start again); one per APPEND was about as
    # many commits as the durable ones under imaptest's steady mix.
    _RECENT_WRITE_DELAY = 0.5
    _recent_pending: dict[int, int] | None = None

    def _write_recent_later(self, table: RecentTable, mailbox_id: int, end: int) -> None:
        pending = self._recent_pending
        if pending is None:
            pending = self._recent_pending = {}
        if not pending:
            asyncio.get_running_loop().call_later(
                self._RECENT_WRITE_DELAY, self._write_recent, table)
        pending[mailbox_id] = max(end, pending.get(mailbox_id, 0))

    def _write_recent(self, table: RecentTable) -> None:
        batch, self._recent_pending = self._recent_pending or {}, {}
        if not batch:
            return

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE mailboxes SET first_recent_uid = max(first_recent_uid, ?) WHERE id = ?",
                [(end, mailbox_id) for mailbox_id, end in batch.items()])

        def done(_: object) -> None:
            for mailbox_id, end in batch.items():
                table.written(mailbox_id, end)

        self.advisory.submit(job).add_done_callback(done)

    def changes(self, mailbox_id: int, since_modseq: int) -> Changes:
        """What changed after ``since_modseq`` (nothing, when that is the
        HIGHESTMODSEQ), with the mailbox's HIGHESTMODSEQ, UIDNEXT, UIDVALIDITY
        and keywords; ``NoSuchMailbox`` when it is gone.  Answered from this
        connection's log of the mailbox (``changelog.py``), which is read
        again only when another connection committed."""
        return self._changelogs().changes(mailbox_id, since_modseq)

    def _changelogs(self) -> ChangeLogs:
        local = self._local
        logs: ChangeLogs | None = getattr(local, "logs", None)
        conn = self.reader
        if logs is None or logs.conn is not conn:
            logs = local.logs = ChangeLogs(conn, parse_flags, f"{self.db_path}-shm")
        return logs

    def highestmodseq(self, mailbox_ids: list[int]) -> dict[int, int]:
        """The HIGHESTMODSEQ of each mailbox that still exists (a cheap sweep)."""
        out: dict[int, int] = {}
        for start in range(0, len(mailbox_ids), 500):
            chunk = mailbox_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.update(self.reader.execute(
                f"SELECT id, highestmodseq FROM mailboxes WHERE id IN ({marks})", chunk
            ).fetchall())
        return out

    def inbox_ids(self, addresses: Iterable[str]) -> list[int]:
        """The INBOX ids of these accounts (to announce deliveries)."""
        names = sorted(set(addresses))
        out: list[int] = []
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out += [r[0] for r in self.reader.execute(
                "SELECT b.id FROM mailboxes b JOIN accounts a ON b.account = a.id"
                f" WHERE b.name = 'INBOX' AND a.address IN ({marks})", chunk,
            )]
        return out

    def expunged_since(self, mailbox_id: int, since_modseq: int) -> list[int]:
        return sorted(r[0] for r in self.reader.execute(
            "SELECT uid FROM expunged INDEXED BY expunged_modseq"
            " WHERE mailbox = ? AND modseq > ?",
            (mailbox_id, since_modseq),
        ))

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes | None:
        """The message as a client sees it (its prefix, then the blob), or None.

        One query finds both the copy and where its blob lies; the file is
        read with ``pread`` on a descriptor kept open per thread (blob and
        segment names are never reused, and an open file stays readable
        after compaction unlinks it, its bytes unchanged).
        """
        row = self.reader.execute(
            "SELECT m.prefix, m.blob, b.segment, b.offset, b.size FROM messages m"
            " JOIN blobs b ON b.id = m.blob WHERE m.mailbox = ? AND m.uid = ?",
            (mailbox_id, uid),
        ).fetchone()
        return None if row is None else self._read_located(*row)

    def message_reader(self, mailbox_id: int,
                       uids: list[int]) -> Callable[[int], bytes | None]:
        """A ``message_bytes`` for the messages among ``uids``: where they all
        lie is read now, in one statement (a FETCH of a hundred messages'
        header fields made a hundred), and each is read from its file when asked
        for (None: it was not there)."""
        found: dict[int, tuple[Any, ...]] = {}
        if uids:
            lo, hi = min(uids), max(uids)
            query = ("SELECT m.uid, m.prefix, m.blob, b.segment, b.offset, b.size FROM messages m"
                     " JOIN blobs b ON b.id = m.blob WHERE m.mailbox = ?")
            if hi - lo < 2 * len(uids):
                wanted = set(uids)
                found = {r[0]: r[1:] for r in self.reader.execute(
                    query + " AND m.uid BETWEEN ? AND ?", (mailbox_id, lo, hi)) if r[0] in wanted}
            else:
                for start in range(0, len(uids), 500):
                    chunk = uids[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    found.update((r[0], r[1:]) for r in self.reader.execute(
                        query + f" AND m.uid IN ({marks})", (mailbox_id, *chunk)))

        def read(uid: int) -> bytes | None:
            where = found.get(uid)
            return None if where is None else self._read_located(*where)

        return read

    def _read_located(self, prefix: bytes | None, blob: str, segment: str | None,
                      offset: int, size: int) -> bytes | None:
        data = self._pread(segment or blob, offset, size)
        if data is None:
            try:   # moved by compaction meanwhile: look it up again
                data = self.read_blob(blob)  # type: ignore[attr-defined]
            except (NotFound, FileNotFoundError):
                return None   # expunged (and collected) between the two reads
        return bytes(prefix) + data if prefix else data

    # Open files kept per thread.  Each APPEND batch writes a segment of its
    # own, so a FETCH over a few hundred recent messages touches as many files.
    _MAX_OPEN = 256

    def _pread(self, name: str, offset: int, size: int) -> bytes | None:
        """``size`` octets at ``offset`` of the blob or segment file ``name``
        (kept open by name: no path is built for a file already open)."""
        local = self._files
        fds: dict[str, int] | None = getattr(local, "fds", None)
        if fds is None:
            fds = local.fds = {}
        fd = fds.pop(name, None)
        if fd is None:
            try:
                fd = os.open(self.blobs.path_str(name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            while len(fds) >= self._MAX_OPEN:
                self._retire(fds.pop(next(iter(fds))))
        fds[name] = fd   # most recently used last
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise StoreError(f"blob file {self.blobs.path(name)} is truncated")
        return data

    def _retire(self, fd: int) -> None:
        """Close ``fd`` soon, off the event loop (``_dispose``).

        Most evicted files were unlinked meanwhile (their messages expunged),
        and the last close of an unlinked file is where the file system frees
        it: on ext4 a truncate and a journal handle, which waits while the
        journal commits other processes' fsyncs.  Done by the event loop, that
        was 7 % of its samples under imaptest's steady load.  Nothing reads a
        retired descriptor: it left the cache before it was handed over.
        """
        self._dispose(fds=[fd])

    # Files to unlink and descriptors to close: gathered, and handed to one
    # thread of the default executor at most this often.  Each hand-over wakes
    # a thread that then waits for the GIL; one per EXPUNGE was a few percent
    # of a worker's CPU.  Nothing waits for them (the rows are committed).
    _DISPOSE_DELAY = 0.05
    _disposal_lock = threading.Lock()
    _disposal: tuple[list[Path | str], list[int]] | None = None

    def _dispose(self, paths: Iterable[Path | str] = (), fds: Iterable[int] = ()) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:        # no loop in this thread: now, here
            self._dispose_now(list(paths), list(fds))
            return
        with self._disposal_lock:
            pending = self._disposal
            first = pending is None
            if pending is None:
                pending = self._disposal = ([], [])
            pending[0].extend(paths)
            pending[1].extend(fds)
        if first:
            loop.call_later(self._DISPOSE_DELAY, self._dispose_soon, loop)

    def _dispose_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._disposal_lock:
            pending, self._disposal = self._disposal, None
        if pending is not None:
            loop.run_in_executor(None, self._dispose_now, *pending)

    def _dispose_now(self, paths: list[Path | str], fds: list[int]) -> None:
        _close_all(fds)
        self._unlink_now(paths)

    def close_files(self) -> None:
        fds: dict[str, int] | None = getattr(self._files, "fds", None)
        for fd in (fds or {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        if fds:
            fds.clear()
        with self._disposal_lock:
            pending, self._disposal = self._disposal, None
        if pending is not None:
            self._dispose_now(*pending)

    def cache_get(self, blob_ids: list[str]) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(blob_ids), 500):
            chunk = blob_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.reader.execute(
                f"SELECT blob, envelope, bodystructure, body, sort FROM blob_cache"
                f" WHERE blob IN ({marks})", chunk,
            ):
                out[row[0]] = row[1:]
        # A FETCH right after the one that parsed these must not parse them
        # again while their rows wait for the group commit.
        inflight = self._cache_inflight
        if inflight:
            for blob in blob_ids:
                if blob not in out:
                    row = inflight.get(blob)
                    if row is not None:
                        out[blob] = row
        return out

    def cache_put(self, rows: list[tuple[str, bytes, bytes, bytes, str]]) -> None:
        """Remember parsed renderings; nobody waits for this (a lost row is recomputed)."""
        if not rows:
            return

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO blob_cache (blob, envelope, bodystructure, body, sort)"
                " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM blobs WHERE id = ?)",
                [(*r, r[0]) for r in rows],
            )

        if self._cache_inflight is None:
            self._cache_inflight = {}
        inflight = self._cache_inflight
        for r in rows:
            inflight[r[0]] = r[1:]

        def committed(_: object) -> None:   # on the committer's thread; done or failed
            for r in rows:
                inflight.pop(r[0], None)

        self.advisory.submit(job).add_done_callback(committed)

    # ----------------------------------------------------------- mailbox writes

    async def create_mailbox_named(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        name = check_mailbox_name(name)

        def job(conn: sqlite3.Connection) -> int:
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE account = ? AND name = ?", (account_id, name)
            ).fetchone():
                raise MailboxExists(f"mailbox {name} already exists")
            if special_use and conn.execute(
                "SELECT 1 FROM mailboxes WHERE account = ? AND special_use = ?",
                (account_id, special_use),
            ).fetchone():
                raise MailboxExists(f"another mailbox already has the use {special_use}")
            return self.create_mailbox(conn, account_id, name, special_use)

        mailbox_id = await self._write(job)
        box = self.mailbox_by_id(mailbox_id)
        assert box is not None
        return box

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        if name.upper() == "INBOX":
            raise StoreError("INBOX cannot be deleted")

        def job(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            row = conn.execute(
                "SELECT id FROM mailboxes WHERE account = ? AND name = ?", (account_id, name)
            ).fetchone()
            if row is None:
                raise NoSuchMailbox(f"no mailbox {name}")
            child = conn.execute(
                "SELECT 1 FROM mailboxes WHERE account = ? AND substr(name, 1, ?) = ? LIMIT 1",
                (account_id, len(name) + 1, name + HIERARCHY),
            ).fetchone()
            if child:
                raise MailboxHasChildren(f"mailbox {name} has children; delete them first")
            mailbox_id = row[0]
            blobs = [r[0] for r in conn.execute(
                "SELECT blob FROM messages WHERE mailbox = ?", (mailbox_id,)
            )]
            conn.execute("DELETE FROM messages WHERE mailbox = ?", (mailbox_id,))
            conn.execute("DELETE FROM expunged WHERE mailbox = ?", (mailbox_id,))
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
            return mailbox_id, self._release(conn, blobs)

        mailbox_id, files = await self._write(job, notify=lambda r: [r[0]])
        self._unlink(files)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        new = check_mailbox_name(new)
        if new == "INBOX":
            raise MailboxExists("INBOX already exists")

        def job(conn: sqlite3.Connection) -> list[int]:
            src = conn.execute(
                "SELECT id, uidnext, highestmodseq FROM mailboxes WHERE account = ? AND name = ?",
                (account_id, "INBOX" if old.upper() == "INBOX" else old),
            ).fetchone()
            if src is None:
                raise NoSuchMailbox(f"no mailbox {old}")
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE account = ? AND name = ?", (account_id, new)
            ).fetchone():
                raise MailboxExists(f"mailbox {new} already exists")
            if old.upper() == "INBOX":
                return self._rename_inbox(conn, account_id, src, new)
            if new.startswith(old + HIERARCHY):
                raise StoreError("a mailbox cannot be renamed into itself")
            moved = [src[0]]
            conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (new, src[0]))
            for cid, cname in conn.execute(
                "SELECT id, name FROM mailboxes WHERE account = ? AND substr(name, 1, ?) = ?",
                (account_id, len(old) + 1, old + HIERARCHY),
            ).fetchall():
                target = new + cname[len(old):]
                if conn.execute(
                    "SELECT 1 FROM mailboxes WHERE account = ? AND name = ?", (account_id, target)
                ).fetchone():
                    raise MailboxExists(f"mailbox {target} already exists")
                conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (target, cid))
                moved.append(cid)
            return moved

        await self._write(job, notify=lambda ids: ids)

    def _rename_inbox(
        self, conn: sqlite3.Connection, account_id: int, src: tuple[int, int, int], new: str
    ) -> list[int]:
        """RFC 9051 §6.3.6: renaming INBOX moves its messages to a new mailbox.

        The messages keep their UIDs in the new mailbox (a new UIDVALIDITY);
        INBOX stays, empty, with its UIDNEXT, and records them as expunged.
        """
        inbox_id, uidnext, modseq = src
        target = self.create_mailbox(conn, account_id, new, None)
        modseq += 1
        conn.execute(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
            (uidnext, modseq, target),
        )
        conn.execute(
            "INSERT OR REPLACE INTO expunged (mailbox, uid, modseq)"
            " SELECT ?, uid, ? FROM messages WHERE mailbox = ?",
            (inbox_id, modseq, inbox_id),
        )
        conn.execute(
            "UPDATE messages SET mailbox = ?, modseq = ? WHERE mailbox = ?",
            (target, modseq, inbox_id),
        )
        conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, inbox_id))
        return [inbox_id, target]

    async def subscribe(self, account_id: int, name: str, subscribed: bool) -> None:
        if name.upper() == "INBOX":
            name = "INBOX"

        def job(conn: sqlite3.Connection) -> None:
            if subscribed:
                conn.execute(
                    "INSERT OR IGNORE INTO subscriptions (account, name) VALUES (?, ?)",
                    (account_id, name),
                )
            else:
                conn.execute(
                    "DELETE FROM subscriptions WHERE account = ? AND name = ?", (account_id, name)
                )

        await self._write(job)

    # ----------------------------------------------------------- message writes

    @staticmethod
    def _next_modseq(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int, int, str]:
        row = conn.execute(
            "SELECT uidvalidity, uidnext, highestmodseq, keywords FROM mailboxes"
            " WHERE id = ?",
            (mailbox_id,),
        ).fetchone()
        if row is None:
            raise NoSuchMailbox(f"mailbox {mailbox_id} does not exist any more")
        return row[0], row[1], row[2] + 1, row[3]

    @staticmethod
    def _keywords(conn: sqlite3.Connection, mailbox_id: int, known: str,
                  flags: Iterable[str]) -> None:
        have = set(known.split())
        new = {f for f in flags if not f.startswith("\\")} - have
        if new:
            conn.execute(
                "UPDATE mailboxes SET keywords = ? WHERE id = ?",
                (" ".join(sorted(have | new)), mailbox_id),
            )

    def _check_quota(self, conn: sqlite3.Connection, mailbox_id: int, octets: int,
                     count: int) -> None:
        row = conn.execute(
            "SELECT b.account, a.quota_storage, a.quota_messages FROM mailboxes b"
            " JOIN accounts a ON a.id = b.account WHERE b.id = ?", (mailbox_id,)
        ).fetchone()
        if row is None:
            raise NoSuchMailbox(f"mailbox {mailbox_id} does not exist any more")
        if row[1] is None and row[2] is None:
            return   # no limit: nothing to count (the usage reads every message of the account)
        quota = self._quota(conn, row[0])
        if quota.storage_limit is not None and quota.storage_used + octets > quota.storage_limit:
            raise OverQuota("the mailbox storage quota would be exceeded")
        if quota.messages_limit is not None and quota.messages_used + count > quota.messages_limit:
            raise OverQuota("the message count quota would be exceeded")

    async def append(
        self, mailbox_id: int, messages: list[NewMessage]
    ) -> tuple[int, list[int]]:
        """Add messages in one transaction (MULTIAPPEND is all or nothing, RFC 3502).

        Small bodies go into one segment file, each large one into a file of
        its own; all are fsync'd with their directories before the commit.
        """
        now = time.time()
        segment_id = new_id()
        segment_path = self.blobs.path(segment_id)
        parts: list[bytes] = []
        places: list[tuple[str, str | None, int]] = []   # blob id, segment, offset
        own_files: list[tuple[Path, bytes]] = []
        offset = 0
        for msg in messages:
            blob_id = new_id()
            if len(msg.data) < _SMALL:
                separator = segment_separator(blob_id, len(msg.data))
                offset += len(separator)
                places.append((blob_id, segment_id, offset))
                parts += (separator, msg.data)
                offset += len(msg.data)
            else:
                places.append((blob_id, None, 0))
                own_files.append((self.blobs.path(blob_id), msg.data))
        written: list[Path] = []

        def prepare() -> None:
            if parts:
                write_segment(segment_path, parts)
                written.append(segment_path)
            for path, data in own_files:
                from pillarbox.store.blobs import write_new

                write_new(path, data)
                written.append(path)

        dirs = {segment_path.parent} if parts else set()
        dirs |= {path.parent for path, _ in own_files}

        def job(conn: sqlite3.Connection) -> tuple[int, list[int]]:
            validity, uidnext, modseq, keywords = self._next_modseq(conn, mailbox_id)
            self._check_quota(conn, mailbox_id, sum(len(m.data) for m in messages),
                              len(messages))
            uids = list(range(uidnext, uidnext + len(messages)))
            conn.executemany(
                "INSERT INTO blobs (id, size, refs, segment, offset) VALUES (?, ?, 1, ?, ?)",
                [(b, len(m.data), s, o) for (b, s, o), m in zip(places, messages)],
            )
            all_flags: set[str] = set()
            rows = []
            for uid, (blob_id, _, _), msg in zip(uids, places, messages):
                flags = {canonical_flag(f) for f in msg.flags}
                all_flags |= flags
                rows.append((
                    mailbox_id, uid, blob_id, b"", len(msg.data),
                    now if msg.internal_date is None else msg.internal_date,
                    format_flags(flags), modseq, now,
                ))
            conn.executemany(
                "INSERT INTO messages (mailbox, uid, blob, prefix, size, internal_date, flags,"
                " modseq, savedate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute(
                "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
                (uidnext + len(messages), modseq, mailbox_id),
            )
            self._keywords(conn, mailbox_id, keywords, all_flags)
            cached = [(b, *m.cache) for (b, _, _), m in zip(places, messages)
                      if m.cache is not None]
            if cached:
                conn.executemany(
                    "INSERT OR IGNORE INTO blob_cache (blob, envelope, bodystructure, body, sort)"
                    " VALUES (?, ?, ?, ?, ?)", cached)
            return validity, uids

        try:
            return await self._write(
                job, prepare=prepare, dirs=tuple(dirs), notify=lambda _: [mailbox_id]
            )
        except BaseException:
            self._unlink(written)   # nothing refers to them: the job failed
            raise

    async def store_flags(
        self, mailbox_id: int, uids: list[int], mode: str, flags: frozenset[str],
        unchangedsince: int | None = None,
    ) -> tuple[list[FlagUpdate], list[int]]:
        """STORE (RFC 9051 §6.4.6): ``mode`` "+" adds, "-" removes, "" replaces.

        Returns the messages whose flags changed (with their new MODSEQ) and,
        with UNCHANGEDSINCE (RFC 7162 §3.1.3), the UIDs that failed the test.
        Messages whose flags would not change keep their MODSEQ.
        """
        wanted = frozenset(canonical_flag(f) for f in flags)

        def job(conn: sqlite3.Connection) -> tuple[list[FlagUpdate], list[int]]:
            _, _, modseq, keywords = self._next_modseq(conn, mailbox_id)
            updates: list[FlagUpdate] = []
            failed: list[int] = []
            for uid, text, old_modseq in _flag_rows(conn, mailbox_id, uids):
                if unchangedsince is not None and old_modseq > unchangedsince:
                    failed.append(uid)
                    continue
                old = parse_flags(text)
                new = old | wanted if mode == "+" else old - wanted if mode == "-" else wanted
                if new != old:
                    updates.append(FlagUpdate(uid, new, modseq))
            if updates:
                conn.executemany(
                    "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox = ? AND uid = ?",
                    [(format_flags(u.flags), modseq, mailbox_id, u.uid) for u in updates],
                )
                conn.execute(
                    "UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, mailbox_id)
                )
                if mode != "-":
                    self._keywords(conn, mailbox_id, keywords, wanted)
            updates.sort(key=lambda u: u.uid)
            failed.sort()
            return updates, failed

        return await self._write(job, notify=lambda r: [mailbox_id] if r[0] else [])

    async def copy(
        self, mailbox_id: int, uids: list[int], target_id: int, *, move: bool = False
    ) -> tuple[int, list[tuple[int, int]]]:
        """COPY (RFC 9051 §6.4.7) or MOVE (RFC 6851): one transaction.

        The copies share the blobs (reference counts go up), keep flags and
        internal date, and get new UIDs in ascending order of the old ones.
        Returns the target's UIDVALIDITY and (old UID, new UID) pairs.
        """

        def job(conn: sqlite3.Connection) -> tuple[int, list[tuple[int, int]], list[str]]:
            validity, uidnext, modseq, keywords = self._next_modseq(conn, target_id)
            rows: list[tuple[Any, ...]] = []
            for start in range(0, len(uids), 500):
                chunk = uids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(
                    "SELECT uid, blob, prefix, size, internal_date, flags FROM messages"
                    f" WHERE mailbox = ? AND uid IN ({marks})",
                    (mailbox_id, *chunk),
                ).fetchall()
            rows.sort()
            if not rows:
                return validity, [], []
            if not move:
                # A MOVE stays in the account and uses no more space; checking
                # it would keep a user over quota from moving mail to the Trash.
                self._check_quota(conn, target_id, sum(r[3] for r in rows), len(rows))
            now = time.time()
            pairs = [(r[0], uidnext + i) for i, r in enumerate(rows)]
            conn.executemany(
                "INSERT INTO messages (mailbox, uid, blob, prefix, size, internal_date, flags,"
                " modseq, savedate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(target_id, new, r[1], r[2], r[3], r[4], r[5], modseq, now)
                 for (_, new), r in zip(pairs, rows)],
            )
            conn.executemany(
                "UPDATE blobs SET refs = refs + 1 WHERE id = ?", [(r[1],) for r in rows]
            )
            conn.execute(
                "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
                (uidnext + len(rows), modseq, target_id),
            )
            self._keywords(conn, target_id, keywords,
                           {f for r in rows for f in parse_flags(r[5])})
            files: list[str] = []
            if move:
                files = self._expunge(conn, mailbox_id, [r[0] for r in rows])[1]
            return validity, pairs, files

        validity, pairs, files = await self._write(
            job, notify=lambda r: {target_id, mailbox_id} if r[1] else []
        )
        self._unlink(files)
        return validity, pairs

    async def expunge(self, mailbox_id: int, uids: list[int] | None = None) -> list[int]:
        """Remove messages: ``uids``, or every message flagged \\Deleted.

        Returns the UIDs removed, ascending.  Their blobs lose a reference
        and are removed with the last one.

        Without ``uids``, a mailbox with no message flagged \\Deleted in the
        latest commit (read on this thread's connection) gives nothing to
        remove, answered without a write: the EXPUNGE took effect at that
        read, and a \\Deleted committed after it is a later change.  Two in
        five EXPUNGEs of imaptest's steady mix found nothing (2,832 of 6,735
        in a 30 s run), and each was a round trip through the group commit (a
        write transaction, the write lock, a wake-up of the loop).
        """
        if uids is None and self.reader.execute(
            f"SELECT 1 FROM messages WHERE mailbox = ? AND {_IS_DELETED} LIMIT 1",
            (mailbox_id,),
        ).fetchone() is None:
            return []

        def job(conn: sqlite3.Connection) -> tuple[list[int], list[str]]:
            if uids is None:
                chosen = [r[0] for r in conn.execute(
                    f"SELECT uid FROM messages WHERE mailbox = ? AND {_IS_DELETED}"
                    " ORDER BY uid",
                    (mailbox_id,),
                )]
            else:
                chosen = uids
            return self._expunge(conn, mailbox_id, chosen)

        removed, files = await self._write(job, notify=lambda r: [mailbox_id] if r[0] else [])
        self._unlink(files)
        return removed

    def _expunge(
        self, conn: sqlite3.Connection, mailbox_id: int, uids: list[int]
    ) -> tuple[list[int], list[str]]:
        if not uids:
            return [], []
        _, _, modseq, _ = self._next_modseq(conn, mailbox_id)
        removed: list[int] = []
        blobs: list[str] = []
        for start in range(0, len(uids), 500):
            chunk = uids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT uid, blob FROM messages WHERE mailbox = ? AND uid IN ({marks})",
                (mailbox_id, *chunk),
            ).fetchall()
            conn.execute(
                f"DELETE FROM messages WHERE mailbox = ? AND uid IN ({marks})",
                (mailbox_id, *chunk),
            )
            removed += [r[0] for r in rows]
            blobs += [r[1] for r in rows]
        if not removed:
            return [], []
        conn.executemany(
            "INSERT OR REPLACE INTO expunged (mailbox, uid, modseq) VALUES (?, ?, ?)",
            [(mailbox_id, uid, modseq) for uid in removed],
        )
        conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, mailbox_id))
        removed.sort()
        return removed, self._release(conn, blobs)

    def _release(self, conn: sqlite3.Connection, blobs: list[str]) -> list[str]:
        """Drop one reference to each blob; return the files that no blob needs now.

        Runs inside the caller's transaction; the files are unlinked after
        the commit (a crash in between leaves orphans, removed at start).
        """
        if not blobs:
            return []
        counts: dict[str, int] = {}
        for blob in blobs:
            counts[blob] = counts.get(blob, 0) + 1
        conn.executemany(
            "UPDATE blobs SET refs = refs - ? WHERE id = ?", [(n, b) for b, n in counts.items()]
        )
        files: list[str] = []
        segments: set[str] = set()
        ids = list(counts)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            dead = conn.execute(
                f"SELECT id, segment FROM blobs WHERE refs <= 0 AND id IN ({marks})", chunk
            ).fetchall()
            conn.executemany("DELETE FROM blobs WHERE id = ?", [(d[0],) for d in dead])
            conn.executemany("DELETE FROM blob_cache WHERE blob = ?", [(d[0],) for d in dead])
            for blob_id, segment in dead:
                if segment is None:
                    files.append(blob_id)
                else:
                    segments.add(segment)
        for segment in segments:
            if conn.execute(
                "SELECT 1 FROM blobs WHERE segment = ? LIMIT 1", (segment,)
            ).fetchone() is None:
                files.append(segment)
        return files

    def _unlink(self, names: Iterable[str | Path]) -> None:
        """Remove files no row names any more, off the event loop when there is one."""
        paths = list(names)
        if paths:
            self._dispose(paths=paths)

    def _unlink_now(self, names: Iterable[str | Path]) -> None:
        for name in names:
            path = name if isinstance(name, Path) else self.blobs.path(name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

