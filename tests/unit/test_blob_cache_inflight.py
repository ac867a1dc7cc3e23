"""The parse cache (``blob_cache``) is visible to this process before its group commit.

A FETCH right after the FETCH that parsed the messages must not parse them
all again while the rows wait for the commit (measured by
``bench/imap_large.py``: 100,000 ENVELOPEs re-parsed, 128 s instead of ~10 s).
"""

from __future__ import annotations

import asyncio
import threading
import time

from pillarbox.auth.passwords import hash_password
from pillarbox.store.base import NewMessage
from pillarbox.store.sqlite.store import SQLiteStore


def wait_committed(store: SQLiteStore) -> None:
    """Until the cache jobs are done (their callbacks run on the committer's thread)."""
    for committer in {store.committer, getattr(store, "advisory", store.committer)}:
        committer.submit(lambda conn: None).result(10)
    deadline = time.monotonic() + 5
    while store._cache_inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store._cache_inflight == {}


def test_rows_waiting_for_the_commit_are_served_then_read_from_the_table(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    account = store.add_account("alice@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None
    asyncio.run(store.append(inbox.id, [NewMessage(b"Subject: a\r\n\r\nx\r\n")]))
    blob = store.messages(inbox.id)[0].blob
    row = (blob, b"(env)", b"(bs)", b"(body)", "{}")

    gate = threading.Event()
    for committer in {store.committer, getattr(store, "advisory", store.committer)}:
        committer.submit(lambda conn: gate.wait(10))     # holds the writers
    store.cache_put([row])
    assert store.cache_get([blob, "nonexistent"]) == {blob: row[1:]}
    assert store.reader.execute("SELECT count(*) FROM blob_cache").fetchone()[0] == 0
    gate.set()
    wait_committed(store)
    assert store.cache_get([blob]) == {blob: row[1:]}
    assert store.reader.execute("SELECT count(*) FROM blob_cache").fetchone()[0] == 1
    store.close()


def test_a_failed_cache_commit_leaves_nothing_behind(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    # No such blob: the row is not inserted, and the in-flight copy goes too.
    store.cache_put([("gone", b"e", b"b", b"y", "{}")])
    wait_committed(store)
    assert store.cache_get(["gone"]) == {}
    store.close()
