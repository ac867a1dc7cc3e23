"""The per-connection log of mailbox changes (``store/sqlite/changelog.py``).

The invariant: ``store.changes(mailbox, since)`` and ``store.messages_by_uid``
answer exactly what the tables hold, whoever wrote meanwhile (this process's committer, another
connection as another process would, this connection itself), for any
MODSEQ a session may know, also after the log started again.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3

import pytest

from pillarbox.auth.passwords import hash_password
from pillarbox.store.base import NewMessage, NoSuchMailbox
from pillarbox.store.sqlite import changelog
from pillarbox.store.sqlite.mail import parse_flags
from pillarbox.store.sqlite.store import SQLiteStore


def from_tables(store: SQLiteStore, mailbox_id: int, since: int) -> tuple:
    """The answer read straight from the tables, on a connection of its own."""
    conn = store.connect()
    try:
        head, entries = changelog.read(conn, mailbox_id, since, parse_flags)
    finally:
        conn.close()
    changed = sorted(e[2] for e in entries if e[2] is not None)
    expunged = sorted(e[1] for e in entries if e[2] is None)
    return head[0], head[2], head[1], changed, expunged


def answer(store: SQLiteStore, mailbox_id: int, since: int) -> tuple:
    c = store.changes(mailbox_id, since)
    return c.highestmodseq, c.uidnext, c.uidvalidity, c.changed, c.expunged


def test_answers_match_the_tables_through_random_writes(store, monkeypatch):
    monkeypatch.setattr(changelog, "LOG_ENTRIES", 40)     # restarts happen too
    account = store.add_account("a@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None
    other = store.connect()   # another process's writes
    rnd = random.Random(7)
    known: list[int] = [inbox.highestmodseq]

    async def run() -> None:
        for step in range(400):
            uids = [m.uid for m in store.messages(inbox.id)]
            action = rnd.random()
            if action < 0.3 or not uids:
                await store.append(inbox.id, [NewMessage(b"Subject: %d\r\n\r\nx\r\n" % step)])
            elif action < 0.6:
                pick = rnd.sample(uids, min(len(uids), rnd.randint(1, 4)))
                await store.store_flags(inbox.id, pick, rnd.choice("+-"),
                                        frozenset({rnd.choice(["\\Seen", "$a", "\\Flagged"])}))
            elif action < 0.75:
                await store.expunge(inbox.id, rnd.sample(uids, 1))
            else:
                # Another connection bumps flags as a second process would.
                uid = rnd.choice(uids)
                other.execute("BEGIN IMMEDIATE")
                modseq = other.execute("SELECT highestmodseq + 1 FROM mailboxes WHERE id = ?",
                                       (inbox.id,)).fetchone()[0]
                other.execute("UPDATE messages SET flags = ?, modseq = ? WHERE mailbox = ?"
                              " AND uid = ?", (f"$o{step}", modseq, inbox.id, uid))
                other.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?",
                              (modseq, inbox.id))
                other.execute("COMMIT")
            for since in {rnd.choice(known), known[-1], max(known[0], known[-1] - 3)}:
                assert answer(store, inbox.id, since) == from_tables(store, inbox.id, since)
            ever = list(range(1, 2 + step))        # expunged ones too
            every = [m.uid for m in store._read_metas(inbox.id, ever)]
            for wanted in (ever, every, sorted(rnd.sample(every, len(every) // 2)), [step + 5]):
                assert store.messages_by_uid(inbox.id, wanted) == store._read_metas(
                    inbox.id, wanted)
            known.append(store.changes(inbox.id, known[-1]).highestmodseq)

    asyncio.run(run())
    other.close()


def test_a_commit_on_the_connection_itself_is_seen(store):
    account = store.add_account("b@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None
    asyncio.run(store.append(inbox.id, [NewMessage(b"Subject: a\r\n\r\nx\r\n")]))
    before = store.changes(inbox.id, 0)
    with store.transaction() as conn:    # data_version does not count these
        conn.execute("UPDATE messages SET flags = '$own', modseq = modseq + 10 WHERE mailbox = ?",
                     (inbox.id,))
        conn.execute("UPDATE mailboxes SET highestmodseq = highestmodseq + 10 WHERE id = ?",
                     (inbox.id,))
    after = store.changes(inbox.id, before.highestmodseq)
    assert after.highestmodseq == before.highestmodseq + 10
    assert [c.flags for c in after.changed] == [frozenset({"$own"})]


def test_a_deleted_mailbox_is_gone_for_the_log_too(store):
    account = store.add_account("c@example.test", hash_password("pw"))
    box_id = asyncio.run(store.create_mailbox_named(account.id, "Work")).id
    first = store.changes(box_id, 0)
    asyncio.run(store.delete_mailbox(account.id, "Work"))
    with pytest.raises(NoSuchMailbox):
        store.changes(box_id, first.highestmodseq)


def test_the_log_is_read_again_only_when_another_connection_committed(store, monkeypatch):
    account = store.add_account("d@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None
    asyncio.run(store.append(inbox.id, [NewMessage(b"Subject: a\r\n\r\nx\r\n")]))
    reads = []
    real = changelog.read

    def counting(*args):  # type: ignore[no-untyped-def]
        reads.append(args[2])
        return real(*args)

    monkeypatch.setattr(changelog, "read", counting)
    head = store.changes(inbox.id, 0).highestmodseq
    for since in (0, 1, head, head, 0):
        store.changes(inbox.id, since)
    assert reads == [0]
    asyncio.run(store.store_flags(inbox.id, [1], "+", frozenset({"\\Seen"})))
    assert [c.uid for c in store.changes(inbox.id, head).changed] == [1]
    assert reads == [0, head]          # only what came after the log's HIGHESTMODSEQ
    assert sqlite3.sqlite_version_info >= (3, 8, 0)   # PRAGMA data_version


def test_after_changes_answers_as_of_the_last_changes(store):
    account = store.add_account("e@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None
    asyncio.run(store.append(inbox.id, [NewMessage(b"Subject: a\r\n\r\nx\r\n")]))
    store.changes(inbox.id, 0)
    assert store.messages_by_uid(inbox.id, [1])[0].flags == frozenset()
    other = store.connect()
    other.execute("UPDATE messages SET flags = '$late', modseq = modseq + 1 WHERE mailbox = ?",
                  (inbox.id,))
    other.close()
    # The command that read the changes answers as of then; a new read sees it.
    assert store.messages_by_uid(inbox.id, [1], after_changes=True)[0].flags == frozenset()
    assert store.messages_by_uid(inbox.id, [1])[0].flags == frozenset({"$late"})


def test_commits_are_seen_in_the_wal_index_header(store):
    """The log's test of whether anyone committed reads the -shm header, not SQLite."""
    account = store.add_account("f@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None
    asyncio.run(store.append(inbox.id, [NewMessage(b"Subject: a\r\n\r\nx\r\n")]))
    logs = store._changelogs()
    before = logs._version()
    assert isinstance(before, bytes) and len(before) == 48
    assert logs._version() == before
    other = store.connect()
    other.execute("UPDATE mailboxes SET keywords = 'x' WHERE id = ?", (inbox.id,))
    other.close()
    assert logs._version() != before
