"""Quota at the door and at delivery: 452 4.2.2 at RCPT, a transient failure at delivery.

RFC 3463 X.2.2 (mailbox full) with RFC 5321's transient 452: the sender
keeps the message and retries.  At delivery the full recipient stays pending
and its entry is deferred, while every other recipient is delivered once.
"""

from __future__ import annotations

import asyncio
import time

from pillarbox.auth.passwords import hash_password
from pillarbox.deliver.local import FULL, deliver_batch, would_exceed
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from pillarbox.queue.manager import QueueManager
from pillarbox.receive import session as session_module
from pillarbox.receive.session import ReceiverContext, Session, over_quota
from pillarbox.store.base import Envelope, EnvelopeRecipient, Quota
from pillarbox.store.blobs import new_id
from pillarbox.store.sqlite.delivery import SQLiteDelivery
from pillarbox.store.sqlite.store import SQLiteStore

ALICE, BOB = "alice@example.test", "bob@example.test"


def open_store(tmp_path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    for address in (ALICE, BOB):
        store.add_account(address, hash_password("pw"))
    return store


def account_id(store: SQLiteStore, address: str) -> int:
    found = store.account_id(address)
    assert found is not None
    return found


# ------------------------------------------------------------------- RCPT


def rcpt_replies(store: SQLiteStore, mail_from: bytes, *rcpts: bytes) -> list[bytes]:
    """The reply lines to MAIL and each RCPT, from a session over the core."""
    ctx = ReceiverContext(store=store, hostname="mx.test", recipient_delimiter="+",
                          min_free_space=0)
    core = SMTPServerConnection("mx.test", Limits())
    session = Session(ctx, core, "192.0.2.7")
    core.greeting()
    core.data_to_send()
    core.receive_data(b"EHLO client.test\r\n" + mail_from + b"\r\n"
                      + b"".join(b"RCPT TO:<" + r + b">\r\n" for r in rcpts))
    while True:
        event = core.next_event()
        if event is ev.NEED_DATA or event is ev.PAUSED:
            break
        if isinstance(event, ev.MailFrom):
            core.respond(session.mail_from(event))
        elif isinstance(event, ev.RcptTo):
            core.respond(session.rcpt_to(event))
    lines = core.data_to_send().split(b"\r\n")
    return [line for line in lines if line[:3] in (b"250", b"452", b"550") and b"-" != line[3:4]
            ][1:]   # after the EHLO's last line


def fill(store: SQLiteStore, address: str, octets: int, count: int = 1) -> None:
    """Put ``count`` messages of ``octets`` each into the INBOX, as APPEND would."""
    inbox = store.mailbox(account_id(store, address), "INBOX")
    assert inbox is not None
    from pillarbox.store.base import NewMessage

    body = b"Subject: x\r\n\r\n"
    data = body + b"y" * (octets - len(body))
    asyncio.run(store.append(inbox.id, [NewMessage(data) for _ in range(count)]))


def test_rcpt_to_a_full_mailbox_is_452_4_2_2_and_others_are_accepted(tmp_path):
    store = open_store(tmp_path)
    fill(store, ALICE, 1000)
    store.set_quota(ALICE, 1000, None)
    replies = rcpt_replies(store, b"MAIL FROM:<c@sender.test>", ALICE.encode(), BOB.encode(),
                           b"alice+tag@example.test")
    assert replies[0].startswith(b"250 2.1.0")
    assert replies[1] == b"452 4.2.2 Mailbox full"
    assert replies[2].startswith(b"250 2.1.5")
    assert replies[3] == b"452 4.2.2 Mailbox full"   # a sub-address is the same account
    store.close()


def test_rcpt_checks_the_declared_size_against_the_room_left(tmp_path):
    store = open_store(tmp_path)
    fill(store, ALICE, 600)
    store.set_quota(ALICE, 1000, None)
    fits = rcpt_replies(store, b"MAIL FROM:<c@sender.test> SIZE=400", ALICE.encode())
    assert fits[1].startswith(b"250 2.1.5")
    too_big = rcpt_replies(store, b"MAIL FROM:<c@sender.test> SIZE=401", ALICE.encode())
    assert too_big[1] == b"452 4.2.2 Mailbox full"
    # Without SIZE, room left means accepted: delivery has the last word.
    unknown = rcpt_replies(store, b"MAIL FROM:<c@sender.test>", ALICE.encode())
    assert unknown[1].startswith(b"250 2.1.5")
    store.close()


def test_rcpt_checks_the_message_count_limit_and_any_account_of_an_alias(tmp_path):
    store = open_store(tmp_path)
    store.add_alias("team@example.test", ALICE)
    store.add_alias("team@example.test", BOB)
    fill(store, BOB, 100, count=2)
    store.set_quota(BOB, None, 2)
    replies = rcpt_replies(store, b"MAIL FROM:<c@sender.test>", BOB.encode(),
                           b"team@example.test", ALICE.encode())
    assert replies[1] == b"452 4.2.2 Mailbox full"
    assert replies[2] == b"452 4.2.2 Mailbox full"
    assert replies[3].startswith(b"250 2.1.5")
    store.set_quota(BOB, None, 3)
    assert rcpt_replies(store, b"MAIL FROM:<c@sender.test>", BOB.encode())[1].startswith(b"250")
    store.close()


def test_the_quota_check_is_remembered_and_skips_unlimited_accounts(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.set_quota(ALICE, 10**9, None)
    assert store.quota_if_limited(account_id(store, BOB)) is None   # not even counted
    calls: list[int] = []
    real = store.quota_if_limited

    def counting(account: int, conn=None):  # type: ignore[no-untyped-def]
        calls.append(account)
        return real(account)

    monkeypatch.setattr(store, "quota_if_limited", counting)
    ctx = ReceiverContext(store=store, hostname="mx.test", recipient_delimiter="+",
                          min_free_space=0)
    for _ in range(5):
        assert ctx.quota(account_id(store, ALICE)) is not None
    assert calls == [account_id(store, ALICE)]
    monkeypatch.setattr(session_module, "QUOTA_TTL", 0.0)
    ctx._quotas.clear()
    ctx.quota(account_id(store, ALICE))
    ctx.quota(account_id(store, ALICE))
    assert len(calls) == 3      # no memory at all with a TTL of 0
    store.close()


def test_limits_at_rcpt_and_at_delivery():
    q = Quota(storage_used=900, storage_limit=1000, messages_used=5, messages_limit=6)
    assert not over_quota(q, None) and not over_quota(q, 100) and over_quota(q, 101)
    assert not would_exceed(q, 100) and would_exceed(q, 101)
    assert over_quota(Quota(1000, 1000, 0, None), None)
    full_count = Quota(0, None, 6, 6)
    assert over_quota(full_count, 1) and would_exceed(full_count, 1)
    assert not over_quota(Quota(10**12, None, 10**9, None), 10**9)
    assert not would_exceed(None, 10**9)


# --------------------------------------------------------------- delivery


def enqueue(store: SQLiteStore, recipients: list[str], body: bytes) -> str:
    queue_id = new_id()
    writer = store.new_blob(queue_id)
    writer.write(body)
    envelope = Envelope("c@sender.test", tuple(EnvelopeRecipient(r) for r in recipients),
                        "192.0.2.7", "client.test")
    asyncio.run(store.enqueue(queue_id, writer, envelope))
    return queue_id


def inbox_count(store: SQLiteStore, address: str) -> int:
    return store.reader.execute(
        "SELECT count(*) FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
        " WHERE b.account = ? AND b.name = 'INBOX'", (account_id(store, address),)
    ).fetchone()[0]


def refs(store: SQLiteStore, blob: str) -> int:
    return store.reader.execute("SELECT refs FROM blobs WHERE id = ?", (blob,)).fetchone()[0]


def retry_now(store: SQLiteStore) -> int:
    """Make every deferred entry due and let the queue manager's poll take them."""
    with store.transaction() as conn:
        conn.execute("UPDATE queue SET next_attempt = 0")

    async def run() -> int:
        return await QueueManager(store, delimiters="+").run_once()

    return asyncio.run(run())


def test_a_full_mailbox_defers_its_recipient_and_the_others_are_delivered(tmp_path):
    store = open_store(tmp_path)
    store.set_quota(ALICE, 100, None)
    body = b"Subject: big\r\n\r\n" + b"z" * 500 + b"\r\n"
    queue_id = enqueue(store, [ALICE, BOB], body)
    assert retry_now(store) == 1
    entry = store.queue_get(queue_id)
    assert entry is not None
    assert entry.state == "deferred" and entry.attempts == 1
    assert entry.last_reply == FULL == "452 4.2.2 Mailbox full"
    assert entry.next_attempt > time.time() + 60
    states = {r.address: (r.status, r.last_reply) for r in entry.recipients}
    assert states == {ALICE: ("pending", FULL), BOB: ("delivered", "250 2.0.0 delivered")}
    assert (inbox_count(store, ALICE), inbox_count(store, BOB)) == (0, 1)
    assert refs(store, queue_id) == 2           # the queue's and Bob's copy
    store.collect_blobs()
    assert store.read_blob(queue_id) == body    # still there for the retry

    # Room again: the retry delivers to Alice only, and the entry goes.
    store.set_quota(ALICE, None, None)
    assert retry_now(store) == 1
    assert store.queue_get(queue_id) is None
    assert (inbox_count(store, ALICE), inbox_count(store, BOB)) == (1, 1)
    assert refs(store, queue_id) == 2           # two mailbox copies, no queue reference
    store.close()


def test_a_retry_never_gives_an_account_a_second_copy_through_an_alias(tmp_path):
    store = open_store(tmp_path)
    store.add_alias("team@example.test", ALICE)
    store.add_alias("team@example.test", BOB)
    store.set_quota(ALICE, None, 0)
    queue_id = enqueue(store, [BOB, "team@example.test"], b"Subject: team\r\n\r\nhi\r\n")
    retry_now(store)
    entry = store.queue_get(queue_id)
    assert entry is not None
    assert [r.status for r in entry.recipients] == ["delivered", "pending"]
    assert (inbox_count(store, ALICE), inbox_count(store, BOB)) == (0, 1)
    store.set_quota(ALICE, None, None)
    retry_now(store)
    assert store.queue_get(queue_id) is None
    assert (inbox_count(store, ALICE), inbox_count(store, BOB)) == (1, 1)
    assert refs(store, queue_id) == 2
    store.close()


def test_one_batch_counts_its_own_copies_against_the_quota(tmp_path):
    store = open_store(tmp_path)
    body = b"Subject: m\r\n\r\n" + b"q" * 200 + b"\r\n"
    ids = [enqueue(store, [ALICE], body) for _ in range(3)]
    # Room for two copies (each is the body plus its Return-Path/Delivered-To prefix).
    store.set_quota(ALICE, 2 * (len(body) + 100), None)
    with store.transaction() as conn:
        delivered, failures = deliver_batch(SQLiteDelivery(store, conn), ids, "+")
    assert [d.queue_id for d in delivered] == ids[:2]
    assert [(f.queue_id, f.reply, f.permanent) for f in failures] == [(ids[2], FULL, False)]
    assert store.queue_get(ids[0]) is None and store.queue_get(ids[2]) is not None
    q = store.quota(account_id(store, ALICE))
    assert q.messages_used == 2 and q.storage_used <= q.storage_limit  # type: ignore[operator]
    store.close()


def test_a_permanent_failure_beside_a_full_mailbox_is_settled(tmp_path):
    store = open_store(tmp_path)
    store.set_quota(ALICE, None, 0)
    queue_id = enqueue(store, [ALICE, BOB], b"Subject: m\r\n\r\nx\r\n")
    store.remove_account(BOB)
    retry_now(store)
    entry = store.queue_get(queue_id)
    assert entry is not None and entry.state == "deferred"
    assert [(r.address, r.status) for r in entry.recipients] == [
        (ALICE, "pending"), (BOB, "failed")]
    assert refs(store, queue_id) == 1
    store.close()
