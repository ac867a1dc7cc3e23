"""The embedded store: SQLite (WAL) for metadata, blob files for bodies.

Everything lives under one data directory::

    pillarbox.db      metadata: domains, accounts, aliases, queue, mailboxes
    blobs/XX/<id>     message bodies, written once (``pillarbox.store.blobs``)
    run/              sockets of the running server (queue wake-ups)

Several processes share the database: protocol workers commit received
messages, the queue manager delivers, the CLI administers.  Each process
writes through its own group-commit thread; SQLite's locking serialises the
processes, and WAL lets readers go on while one writes.  Commits are
``synchronous=FULL``: a commit is on the disk when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pillarbox.store.base import (
    Account,
    AlreadyExists,
    Envelope,
    MailboxInfo,
    NotFound,
    QueueEntry,
    RecipientState,
    StorageFull,
    StoreError,
)
from pillarbox.store.blobs import BlobStore, BlobWriter, disk_full
from pillarbox.store.directory import Directory
from pillarbox.store.lock import DataDirLock
from pillarbox.store.sqlite.groupcommit import GroupCommitter
from pillarbox.store.sqlite.mail import MailStoreMixin
from pillarbox.store.sqlite.queue import QueueStoreMixin
from pillarbox.store.sqlite.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION

# RFC 6154 special-use mailboxes every new account gets, besides INBOX.
DEFAULT_MAILBOXES = (
    ("INBOX", None),
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
)


def _statements(script: str) -> list[str]:
    """The statements of a migration script (no ';' inside its literals)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return disk_full(exc)
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc).lower()
    return False


class SQLiteStore(MailStoreMixin, QueueStoreMixin):
    """The store of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / "pillarbox.db"
        self.blobs = BlobStore(data_dir / "blobs")
        self.run_dir = data_dir / "run"
        self._local = threading.local()
        self._committer: GroupCommitter | None = None
        self._advisory: GroupCommitter | None = None

    # ------------------------------------------------------------- lifecycle

    def open(self) -> SQLiteStore:
        """Create the data directory and schema if needed (idempotent)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        self.blobs.ensure_dirs()
        conn = self.connect()
        try:
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1')")
            self._migrate(conn)
        finally:
            conn.close()
        return self

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring the schema up to ``SCHEMA_VERSION``, one migration per transaction."""
        version = int(conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}, newer than this Pillarbox "
                f"knows ({SCHEMA_VERSION}): run a newer Pillarbox"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = int(conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()[0])
                if current < target:   # another process may have migrated meanwhile
                    for statement in _statements(MIGRATIONS[target]):
                        conn.execute(statement)
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),)
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # Savepoints need a statement journal; in memory it costs no temp file
        # (open, unlink, write) per transaction.
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    @property
    def reader(self) -> sqlite3.Connection:
        """This thread's connection for reads (autocommit, so never holds a snapshot)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    @property
    def write_lock(self) -> Path:
        """Writers queue on this file's ``flock`` (``groupcommit.py``)."""
        return self.run_dir / "write.lock"

    @property
    def committer(self) -> GroupCommitter:
        if self._committer is None:
            self._committer = GroupCommitter(self.connect, lock_path=self.write_lock)
        return self._committer

    @property
    def advisory(self) -> GroupCommitter:
        """A committer for writes nobody's promise depends on: the IMAP parse
        cache and \\Recent claims.  ``synchronous=OFF``: no fsync of its own;
        its pages reach the disk with the next durable commit of any process,
        and a crash can at worst lose a cache row or make a message recent again.
        """
        if self._advisory is None:
            def connect() -> sqlite3.Connection:
                conn = self.connect()
                conn.execute("PRAGMA synchronous=OFF")
                # Never checkpoint from here: a checkpoint without fsync could let
                # a durable writer reset the WAL over pages not yet on the disk.
                conn.execute("PRAGMA wal_autocheckpoint=0")
                return conn

            self._advisory = GroupCommitter(connect, name="advisory-commit",
                                            lock_path=self.write_lock)
        return self._advisory

    def close(self) -> None:
        self.close_files()
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        if self._advisory is not None:
            self._advisory.close()
            self._advisory = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.logs = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection (for administration)."""
        conn = self.reader
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        logs = getattr(self._local, "logs", None)
        if logs is not None:
            logs.clear()   # a commit of its own: PRAGMA data_version does not count it

    # ------------------------------------------------------------- directory

    def directory(self, conn: sqlite3.Connection | None = None) -> Directory:
        c = conn or self.reader

        def is_local_domain(domain: str) -> bool:
            return c.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone() is not None

        def find_account(address: str) -> Account | None:
            row = c.execute(
                "SELECT id, address, domain FROM accounts WHERE address = ?", (address,)
            ).fetchone()
            return Account(*row) if row else None

        def alias_targets(source: str) -> list[str]:
            rows = c.execute("SELECT target FROM aliases WHERE source = ?", (source,)).fetchall()
            return [r[0] for r in rows]

        return Directory(is_local_domain, find_account, alias_targets)

    def add_domain(self, name: str) -> None:
        with self.transaction() as conn:
            try:
                conn.execute("INSERT INTO domains (name, created) VALUES (?, ?)", (name, time.time()))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"domain {name} already exists") from None

    def list_domains(self) -> list[tuple[str, int, int]]:
        """(domain, accounts, aliases) for each domain."""
        return self.reader.execute(
            "SELECT name, (SELECT count(*) FROM accounts a WHERE a.domain = d.name),"
            " (SELECT count(*) FROM aliases s WHERE s.domain = d.name)"
            " FROM domains d ORDER BY name"
        ).fetchall()

    def remove_domain(self, name: str, *, force: bool = False) -> None:
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f"no domain {name}")
            users = conn.execute("SELECT count(*) FROM accounts WHERE domain = ?", (name,)).fetchone()[0]
            if users and not force:
                raise StoreError(
                    f"domain {name} still has {users} account(s); remove them first or use --force"
                )
            for (account_id,) in conn.execute(
                "SELECT id FROM accounts WHERE domain = ?", (name,)
            ).fetchall():
                self._drop_account(conn, account_id)
            conn.execute("DELETE FROM aliases WHERE domain = ?", (name,))
            conn.execute("DELETE FROM domains WHERE name = ?", (name,))

    def add_account(self, address: str, password_hash: str, scram: str | None = None) -> Account:
        local, _, domain = address.rpartition("@")
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone() is None:
                raise NotFound(f"{domain} is not a local domain; add it with 'pillarbox domain add'")
            try:
                cur = conn.execute(
                    "INSERT INTO accounts (address, domain, password, scram, created)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (address, domain, password_hash, scram, time.time()),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"account {address} already exists") from None
            account_id = cur.lastrowid
            assert account_id is not None
            for name, special in DEFAULT_MAILBOXES:
                self.create_mailbox(conn, account_id, name, special)
                conn.execute(
                    "INSERT OR IGNORE INTO subscriptions (account, name) VALUES (?, ?)",
                    (account_id, name),
                )
        return Account(account_id, address, domain)

    def create_mailbox(
        self, conn: sqlite3.Connection, account_id: int, name: str, special: str | None
    ) -> int:
        # UIDVALIDITY: a fresh value for each mailbox that is (re)created, so a
        # client never mistakes a new mailbox of the same name for the old one
        # (RFC 9051 2.3.1.1): the time in seconds, or one more than the last
        # value handed out, whichever is larger, so values never repeat.
        # Mailbox ids are never reused either (a session or a hint that names
        # a deleted mailbox must not reach its successor): both counters live
        # in ``meta``.
        last_validity = self._counter(conn, "last_uidvalidity")
        uidvalidity = max(int(time.time()), last_validity + 1) & 0xFFFFFFFF or 1
        self._set_counter(conn, "last_uidvalidity", uidvalidity)
        mailbox_id = max(
            self._counter(conn, "last_mailbox_id"),
            conn.execute("SELECT coalesce(max(id), 0) FROM mailboxes").fetchone()[0],
        ) + 1
        self._set_counter(conn, "last_mailbox_id", mailbox_id)
        conn.execute(
            "INSERT INTO mailboxes (id, account, name, special_use, uidvalidity, uidnext,"
            " highestmodseq) VALUES (?, ?, ?, ?, ?, 1, 1)",
            (mailbox_id, account_id, name, special, uidvalidity),
        )
        return int(mailbox_id)

    @staticmethod
    def _counter(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _set_counter(conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    def list_accounts(self, domain: str | None = None) -> list[Account]:
        if domain:
            rows = self.reader.execute(
                "SELECT id, address, domain FROM accounts WHERE domain = ? ORDER BY address",
                (domain,),
            )
        else:
            rows = self.reader.execute("SELECT id, address, domain FROM accounts ORDER BY address")
        return [Account(*r) for r in rows]

    def get_password_hash(self, address: str) -> str | None:
        row = self.reader.execute(
            "SELECT password FROM accounts WHERE address = ?", (address,)
        ).fetchone()
        return row[0] if row else None

    def set_password(self, address: str, password_hash: str, scram: str | None = None) -> None:
        # The SCRAM secrets are replaced too: old ones would still take the old password.
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE accounts SET password = ?, scram = ? WHERE address = ?",
                (password_hash, scram, address),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no account {address}")

    def remove_account(self, address: str) -> None:
        with self.transaction() as conn:
            row = conn.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
            if row is None:
                raise NotFound(f"no account {address}")
            self._drop_account(conn, row[0])
        self.collect_blobs()

    def _drop_account(self, conn: sqlite3.Connection, account_id: int) -> None:
        conn.execute(
            "UPDATE blobs SET refs = refs - (SELECT count(*) FROM messages m JOIN mailboxes b"
            " ON m.mailbox = b.id WHERE b.account = ? AND m.blob = blobs.id)"
            " WHERE id IN (SELECT m.blob FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
            " WHERE b.account = ?)",
            (account_id, account_id),
        )
        conn.execute(
            "DELETE FROM messages WHERE mailbox IN (SELECT id FROM mailboxes WHERE account = ?)",
            (account_id,),
        )
        conn.execute("DELETE FROM mailboxes WHERE account = ?", (account_id,))
        conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))

    def add_alias(self, source: str, target: str) -> None:
        domain = source.rpartition("@")[2]
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone() is None:
                raise NotFound(f"{domain} is not a local domain")
            try:
                conn.execute(
                    "INSERT INTO aliases (source, target, domain) VALUES (?, ?, ?)",
                    (source, target, domain),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"alias {source} -> {target} already exists") from None

    def list_aliases(self, domain: str | None = None) -> list[tuple[str, str]]:
        sql = "SELECT source, target FROM aliases"
        args: tuple[str, ...] = ()
        if domain:
            sql += " WHERE domain = ?"
            args = (domain,)
        return self.reader.execute(sql + " ORDER BY source, target", args).fetchall()

    def remove_alias(self, source: str, target: str | None = None) -> int:
        with self.transaction() as conn:
            if target is None:
                cur = conn.execute("DELETE FROM aliases WHERE source = ?", (source,))
            else:
                cur = conn.execute(
                    "DELETE FROM aliases WHERE source = ? AND target = ?", (source, target)
                )
            if cur.rowcount == 0:
                raise NotFound(f"no alias {source}" + (f" -> {target}" if target else ""))
            return cur.rowcount

    # ----------------------------------------------------------------- queue

    def new_blob(self, blob_id: str) -> BlobWriter:
        return self.blobs.writer(blob_id)

    def spool_free_space(self) -> int:
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize

    @staticmethod
    def insert_entry(
        conn: sqlite3.Connection, blob_id: str, size: int, envelope: Envelope,
        next_attempt: float | None = None, segment: tuple[str, int] | None = None,
    ) -> None:
        """Record a received message: its blob, envelope and recipients (one job)."""
        now = time.time()
        conn.execute(
            "INSERT INTO blobs (id, size, refs, segment, offset) VALUES (?, ?, 1, ?, ?)",
            (blob_id, size, *(segment or (None, 0))),
        )
        conn.execute(
            "INSERT INTO queue (id, reverse_path, size, arrived, client_address, helo, body,"
            " smtputf8, dsn_ret, dsn_envid, state, next_attempt, quarantine, requiretls,"
            " tls_required_no) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?)",
            (
                blob_id, envelope.reverse_path, size, now, envelope.client_address,
                envelope.helo, envelope.body, int(envelope.smtputf8), envelope.dsn_ret,
                envelope.dsn_envid, now if next_attempt is None else next_attempt,
                int(envelope.quarantine), int(envelope.requiretls),
                int(envelope.tls_required_no),
            ),
        )
        conn.executemany(
            "INSERT INTO recipients (queue_id, idx, address, notify, orcpt, status)"
            " VALUES (?, ?, ?, ?, ?, 'pending')",
            [(blob_id, i, r.address, r.notify, r.orcpt) for i, r in enumerate(envelope.recipients)],
        )

    async def enqueue(self, blob_id: str, writer: BlobWriter, envelope: Envelope) -> None:
        """Make the message durable, then record its envelope; return only after both.

        The in-process path (tests, tools); ``serve`` hands envelopes to the
        queue manager instead (``pillarbox.queue.ipc``).  Raises ``StorageFull``
        when the disk or database is full (452 4.3.1).
        """
        size = writer.size
        future = self.committer.submit(
            lambda conn: self.insert_entry(conn, blob_id, size, envelope),
            prepare=writer.sync, dirs=(writer.path.parent,),
        )
        try:
            # Shielded: once handed in, the commit's outcome must not depend on
            # whether the client is still there to hear about it.
            await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            raise  # the commit goes on; a blob without a row is collected at start
        except BaseException as exc:
            writer.discard()
            if is_full(exc):
                raise StorageFull(str(exc)) from exc
            raise

    def queue_list(self) -> list[QueueEntry]:
        ids = [r[0] for r in self.reader.execute("SELECT id FROM queue ORDER BY id")]
        return [e for e in (self.queue_get(i) for i in ids) if e is not None]

    def queue_get(self, queue_id: str) -> QueueEntry | None:
        conn = self.reader
        row = conn.execute(
            "SELECT id, reverse_path, size, arrived, client_address, helo, state, attempts,"
            " next_attempt, last_reply, body, smtputf8, dsn_ret, dsn_envid, quarantine,"
            " requiretls, tls_required_no FROM queue WHERE id = ?",
            (queue_id,),
        ).fetchone()
        if row is None:
            return None
        rcpts = tuple(
            RecipientState(*r)
            for r in conn.execute(
                "SELECT idx, address, status, notify, orcpt, last_reply, attempts, last_attempt,"
                " status_code, remote_mta, warned FROM recipients"
                " WHERE queue_id = ? ORDER BY idx",
                (queue_id,),
            )
        )
        (qid, reverse_path, size, arrived, client, helo, state, attempts, next_attempt,
         last_reply, body, smtputf8, dsn_ret, dsn_envid, quarantine, requiretls,
         tls_required_no) = row
        return QueueEntry(
            qid, reverse_path, size, arrived, client, helo, state, attempts, next_attempt,
            last_reply, body, bool(smtputf8), dsn_ret, dsn_envid, rcpts, bool(quarantine),
            bool(requiretls), bool(tls_required_no),
        )

    def queue_delete(self, queue_id: str) -> None:
        with self.transaction() as conn:
            if conn.execute("DELETE FROM queue WHERE id = ?", (queue_id,)).rowcount == 0:
                raise NotFound(f"no queue entry {queue_id}")
            conn.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
            conn.execute("UPDATE blobs SET refs = refs - 1 WHERE id = ?", (queue_id,))
        self.collect_blobs()

    def list_mailboxes(self, address: str) -> list[MailboxInfo]:
        conn = self.reader
        row = conn.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
        if row is None:
            raise NotFound(f"no account {address}")
        rows = conn.execute(
            "SELECT b.id, b.name, b.special_use, b.uidvalidity, b.uidnext, b.highestmodseq,"
            " count(m.uid), coalesce(sum(m.size), 0)"
            " FROM mailboxes b LEFT JOIN messages m ON m.mailbox = b.id"
            " WHERE b.account = ? GROUP BY b.id ORDER BY b.name != 'INBOX', b.name",
            (row[0],),
        ).fetchall()
        return [MailboxInfo(*r) for r in rows]

    def blob_location(self, blob_id: str) -> tuple[Path, int, int] | None:
        """Where a blob's bytes are: (file, offset, size), or None if there is no blob."""
        row = self.reader.execute(
            "SELECT segment, offset, size FROM blobs WHERE id = ?", (blob_id,)
        ).fetchone()
        if row is None:
            return None
        segment, offset, size = row
        return self.blobs.path(segment or blob_id), offset, size

    def open_blob(self, blob_id: str) -> tuple[BinaryIO, int, int]:
        """An open file holding the blob's bytes at (offset, size); the caller closes it.

        Compaction (``store/sqlite/compact.py``) may move a blob into a new
        segment and unlink the old file between our lookup and our open.  It
        commits the move before the unlink, so looking up again finds the new
        place.  Once open, the file stays readable whatever happens to its name.
        """
        for attempt in range(3):
            location = self.blob_location(blob_id)
            if location is None:
                raise NotFound(f"no blob {blob_id}")
            path, offset, size = location
            try:
                return open(path, "rb"), offset, size
            except FileNotFoundError:
                if attempt == 2:
                    raise StoreError(f"blob {blob_id}: its file {path} is missing") from None
        raise AssertionError("unreachable")

    def read_blob(self, blob_id: str) -> bytes:
        f, offset, size = self.open_blob(blob_id)
        with f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise StoreError(f"blob {blob_id} is truncated in {f.name}")
        return data

    def collect_blobs(self) -> int:
        """Remove blobs no queue entry or mailbox refers to any more.

        A blob of its own goes with its file; a segment file goes when the
        last blob in it goes.  (The space of a dead message inside a live
        segment stays until then, or until compaction moves the live ones
        out: ``store/sqlite/compact.py``.)

        Safe beside a running server, from any process: it removes only
        files that rows name, never a file found on disk.  A blob or segment
        being written has no row until the commit that follows its fsync,
        and nothing ever adds a row to an existing segment (the queue
        manager and compaction write each into a file with a fresh id), so a
        segment with no row left here stays without one; a row with
        refs <= 0 is never referenced again (refs grow only from a live
        queue entry or mailbox copy).  Files with no row are the business of
        ``collect_orphans``, under the lock.
        """
        with self.transaction() as conn:
            dead = conn.execute("SELECT id, segment FROM blobs WHERE refs <= 0").fetchall()
            conn.executemany("DELETE FROM blobs WHERE id = ?", [(r[0],) for r in dead])
            files = [blob_id for blob_id, segment in dead if segment is None]
            for segment in {segment for _, segment in dead if segment is not None}:
                if conn.execute(
                    "SELECT 1 FROM blobs WHERE segment = ? LIMIT 1", (segment,)
                ).fetchone() is None:
                    files.append(segment)
        for name in files:
            self.blobs.remove(name)
        return len(dead)

    def collect_orphans(self, lock: DataDirLock | None = None, older_than: float = 0.0) -> int:
        """Remove blob files with no row: messages whose session died before its 250.

        Also the leftovers of a crash during compaction (a new segment whose
        rows were never repointed, or an old one after they were).  A blob
        being written has a file and no row yet, so this must never run
        beside a server: it runs under the data directory's lock, the one
        ``serve`` holds (``lock``) or, without one, a lock taken here, which
        raises ``DataDirBusy`` while a server runs.  ``older_than`` spares
        files modified after that time.
        """
        if lock is None:
            with DataDirLock(self.data_dir) as own:
                return self.collect_orphans(own, older_than)
        if not lock.held or lock.data_dir != self.data_dir.resolve():
            raise StoreError(f"collect_orphans needs the lock of {self.data_dir.resolve()}")
        known = {
            r[0] or r[1]
            for r in self.reader.execute("SELECT DISTINCT segment, id FROM blobs")
        }
        removed = 0
        for blob_id in self.blobs.all_ids() - known:
            path = self.blobs.path(blob_id)
            try:
                if older_than and path.stat().st_mtime > older_than:
                    continue
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed
