"""EXPUNGE without UIDs answers from a read when nothing is flagged \\Deleted
(``MailStoreMixin.expunge``): no write, and a \\Deleted committed by anyone
before it, in any connection, is still removed."""

from __future__ import annotations

import asyncio

from pillarbox.auth.passwords import hash_password
from pillarbox.store.base import NewMessage


def test_nothing_deleted_is_answered_without_a_commit(store):
    account = store.add_account("a@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None

    async def run() -> None:
        _, uids = await store.append(inbox.id, [NewMessage(b"Subject: %d\r\n\r\nx\r\n" % i)
                                                for i in range(3)])
        await store.store_flags(inbox.id, uids[:1], "+", frozenset({"\\Seen"}))
        batches = store.committer.batches
        assert await store.expunge(inbox.id) == []
        assert store.committer.batches == batches
        await store.store_flags(inbox.id, uids[1:], "+", frozenset({"\\Deleted"}))
        assert await store.expunge(inbox.id) == uids[1:]
        assert [m.uid for m in store.messages(inbox.id)] == uids[:1]
        # Flagged by another connection (another process): seen at once.
        other = store.connect()
        other.execute("UPDATE messages SET flags = '\\Deleted' WHERE mailbox = ?", (inbox.id,))
        other.commit()
        other.close()
        assert await store.expunge(inbox.id) == uids[:1]
        assert store.messages(inbox.id) == []

    asyncio.run(run())
