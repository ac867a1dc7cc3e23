"""Delivery status notifications end to end, over a real server.

A recipient accepted at RCPT whose account is removed before the message is
delivered bounces (RFC 3461/3464): the sender, a local account, finds the
report in their INBOX, as an IMAP client would read it, and the test reads
it with Python's ``email`` package, field by field.  The remote side of the
queue manager is checked in ``tests/unit/test_queue_manager.py`` (the real
remote delivery is written beside it); here nothing is scripted.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from email.message import Message

from pillarbox.store.sqlite.store import SQLiteStore

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
           b"Subject: the figures\r\nMessage-ID: <figures-1@example.test>\r\n\r\n"
           b"Here they are.\r\n")


def remove_account(server, address: str) -> None:
    store = SQLiteStore(server.data_dir).open()
    try:
        store.remove_account(address)
    finally:
        store.close()


def wait_inbox(server, address: str, n: int, timeout: float = 20.0) -> list[Message]:
    deadline = time.monotonic() + timeout
    while True:
        found = server.inbox(address)
        if len(found) >= n or time.monotonic() > deadline:
            return [email.message_from_bytes(m, policy=email.policy.compat32) for m in found]
        time.sleep(0.05)


def send_then_remove(server, rcpts: list[tuple[str, list[str]]], remove: list[str],
                     mail_options: list[str], sender: str = ALICE) -> None:
    """MAIL, RCPT for each recipient, remove accounts, then DATA: the window in which a
    recipient goes away after it was accepted."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        code, reply = client.mail(sender, mail_options)
        assert code == 250, reply
        for address, options in rcpts:
            code, reply = client.rcpt(address, options)
            assert code == 250, reply
        for address in remove:
            remove_account(server, address)
        code, reply = client.data(MESSAGE)
        assert code == 250, reply


def test_a_recipient_removed_after_rcpt_bounces_to_the_sender(server_factory):
    server = server_factory(accounts=(ALICE, BOB, CAROL))
    send_then_remove(
        server,
        [(BOB, ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;Bob.Original@example.test"]),
         (CAROL, [])],
        remove=[BOB], mail_options=["RET=HDRS", "ENVID=QQ314159"],
    )
    assert len(wait_inbox(server, CAROL, 1)) == 1
    [dsn] = wait_inbox(server, ALICE, 1)

    # The envelope and header of a report (RFC 3464 2, RFC 3461 6.2, RFC 5321 4.5.5).
    assert dsn["Return-Path"] == "<>"
    assert dsn["Delivered-To"] == ALICE
    assert dsn["From"] == "MAILER-DAEMON@mx.test"
    assert dsn["To"] == ALICE
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Message-ID"] and dsn["Date"]
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    text, status, returned = dsn.get_payload()

    # 1. In plain words: what happened, the reply, what to do.
    assert text.get_content_type() == "text/plain"
    words = text.get_payload(decode=True).decode()
    assert "could not be delivered" in words and "<bob@example.test>" in words
    assert "550 5.1.1 No such user here" in words
    assert "check the address" in words
    assert CAROL not in words                        # only the failed recipient

    # 2. For programs: one per-message block, one block for Bob only.
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns;mx.test"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Arrival-Date"]
    [bob] = per_recipient
    assert bob["Original-Recipient"] == "rfc822;Bob.Original@example.test"
    assert bob["Final-Recipient"] == f"rfc822;{BOB}"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Diagnostic-Code"] == (
        "smtp;550 5.1.1 No such user here (it went away after the message was accepted)")
    assert bob["Last-Attempt-Date"]
    assert bob["Remote-MTA"] is None                 # nobody else answered: we did
    assert bob["Will-Retry-Until"] is None

    # 3. RET=HDRS: the header of the message, not its body.
    assert returned.get_content_type() == "text/rfc822-headers"
    head = returned.get_payload()
    assert "Subject: the figures" in head and "Message-ID: <figures-1@example.test>" in head
    assert "Here they are." not in head

    # The original's entry is gone, and so is the report's (delivered).
    assert server.query("SELECT count(*) FROM queue")[0][0] == 0


def test_notify_never_says_nothing_and_ret_full_returns_the_message(server_factory):
    server = server_factory(accounts=(ALICE, BOB, CAROL, "dave@example.test"))
    send_then_remove(server, [(BOB, ["NOTIFY=NEVER"]), (CAROL, [])], remove=[BOB, CAROL],
                     mail_options=["RET=FULL"])
    send_then_remove(server, [("dave@example.test", ["NOTIFY=SUCCESS"])], remove=[],
                     mail_options=["ENVID=success-1"])
    reports = wait_inbox(server, ALICE, 2)
    assert len(reports) == 2
    failed = next(r for r in reports if r["Subject"].startswith("Undelivered"))
    _, status, returned = failed.get_payload()
    blocks = status.get_payload()[1:]
    assert [b["Final-Recipient"] for b in blocks] == [f"rfc822;{CAROL}"]   # not Bob: NEVER
    assert returned.get_content_type() == "message/rfc822"
    assert "Here they are." in returned.as_string()
    success = next(r for r in reports if r["Subject"] == "Delivery Status Notification")
    _, status, returned = success.get_payload()
    per_message, block = status.get_payload()
    assert per_message["Original-Envelope-Id"] == "success-1"
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
    assert returned.get_content_type() == "text/rfc822-headers"
    time.sleep(0.5)
    assert len(server.inbox(ALICE)) == 2             # nothing else came


def test_an_undeliverable_report_goes_to_the_postmaster_and_no_further(server_factory):
    # No queue.postmaster: the server's name (mx.test) is not local, so the postmaster
    # of the first local domain that has one gets it.
    server = server_factory(accounts=(ALICE, BOB, "pm@example.test"), start=False)
    store = SQLiteStore(server.data_dir).open()
    store.add_alias("postmaster@example.test", "pm@example.test")
    store.close()
    server.start()
    # Both the sender and the recipient go: the report to Alice cannot be delivered.
    send_then_remove(server, [(BOB, [])], remove=[BOB, ALICE], mail_options=[])
    [double] = wait_inbox(server, "pm@example.test", 1)
    assert double["Return-Path"] == "<>"
    _, status, returned = double.get_payload()
    [block] = status.get_payload()[1:]
    assert block["Final-Recipient"] == f"rfc822;{ALICE}" and block["Action"] == "failed"
    # The returned header is the report's that failed: a report about a report.
    assert "Undelivered Mail Returned to Sender" in returned.get_payload()
    time.sleep(1.0)
    assert server.query("SELECT count(*) FROM queue")[0][0] == 0
    assert len(server.inbox("pm@example.test")) == 1


def run_cli(server, *argv: str) -> str:
    """``pillarbox queue …`` in a child process, as an administrator runs it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pillarbox", "-o", f"server.data_dir={server.data_dir}",
         "-o", "server.hostname=mx.test", *argv],
        capture_output=True, text=True, timeout=60, cwd=server.data_dir.parent,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_queue_commands_work_beside_a_running_server(server_factory):
    """hold, retry, release and bounce change what the running manager does."""
    from pillarbox.admin import queue as service
    from pillarbox.store.base import Envelope, EnvelopeRecipient
    from pillarbox.store.blobs import new_id

    server = server_factory(accounts=(ALICE, BOB))
    store = SQLiteStore(server.data_dir).open()
    try:
        assert service.wake(store) is True             # the manager answers
        store.set_quota(BOB, None, 0)                   # Bob's mailbox is full

        def queue_message() -> str:
            import asyncio

            qid = new_id()
            writer = store.new_blob(qid)
            writer.write(MESSAGE)
            asyncio.run(store.enqueue(qid, writer, Envelope(
                ALICE, (EnvelopeRecipient(BOB),), "192.0.2.1", "client.test")))
            return qid

        def wait_state(qid: str, check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + timeout
            while True:
                entry = store.queue_get(qid)
                if check(entry) or time.monotonic() > deadline:
                    return entry
                time.sleep(0.05)

        first = queue_message()
        entry = wait_state(first, lambda e: e is not None and e.attempts >= 1)
        assert entry.state == "deferred" and entry.recipients[0].last_reply == (
            "452 4.2.2 Mailbox full")
        assert first in run_cli(server, "queue", "list", "--state", "deferred")
        assert run_cli(server, "queue", "hold", first) == f"held {first}\n"
        store.set_quota(BOB, None, None)                # room again, but the entry is held
        assert "nothing to retry" in run_cli(server, "queue", "retry", "--all")
        time.sleep(1.5)                                 # more than a poll interval
        assert store.queue_get(first).state == "hold" and server.inbox(BOB) == []
        assert run_cli(server, "queue", "release", first) == f"released {first}\n"
        assert wait_state(first, lambda e: e is None) is None
        assert len(server.inbox(BOB)) == 1

        store.set_quota(BOB, None, 1)                   # full again
        second = queue_message()
        wait_state(second, lambda e: e is not None and e.attempts >= 1)
        out = run_cli(server, "queue", "bounce", second)
        assert out.startswith(f"bounced {second}\n1 failure report queued: ")
        [dsn] = wait_inbox(server, ALICE, 1)
        _, status, _ = dsn.get_payload()
        [block] = status.get_payload()[1:]
        assert (block["Final-Recipient"], block["Action"], block["Status"]) == (
            f"rfc822;{BOB}", "failed", "5.0.0")
        assert store.queue_get(second) is None
        shape = run_cli(server, "queue", "shape").splitlines()
        assert shape[2].split()[:2] == ["TOTAL", "0"]
    finally:
        store.close()


def test_through_real_remote_delivery_to_a_second_pillarbox(server_factory, tmp_path):
    """The queue manager with the real ``RemoteDelivery`` (its MX lookup answered by a
    fixed table: the MX is a second Pillarbox on 127.0.0.1): one recipient is
    delivered there, the other refused at RCPT, and only that one is reported, with
    the remote server's reply quoted exactly."""
    import asyncio

    from pillarbox.auth.passwords import make_secrets
    from pillarbox.deliver.mx import MXHost, Route
    from pillarbox.deliver.remote import RemoteDelivery
    from pillarbox.queue.manager import QueueManager
    from pillarbox.store.base import Envelope, EnvelopeRecipient
    from pillarbox.store.blobs import new_id

    mx = server_factory(accounts=("bob@remote.test",), name="mx")

    class Table:
        async def route(self, domain: str) -> Route:
            assert domain == "remote.test"
            return Route(domain, (MXHost("mx.remote.test", 10, ("127.0.0.1",)),), False)

    store = SQLiteStore(tmp_path / "sender").open()
    store.add_domain("example.test")
    store.add_account(ALICE, *make_secrets("pw"))
    qid = new_id()
    writer = store.new_blob(qid)
    writer.write(MESSAGE)
    asyncio.run(store.enqueue(qid, writer, Envelope(ALICE, (
        EnvelopeRecipient("bob@remote.test"),
        EnvelopeRecipient("nobody@remote.test", "FAILURE", "rfc822;nobody@remote.test"),
    ), "192.0.2.1", "client.test", dsn_envid="E-77")))

    async def go() -> None:
        remote = RemoteDelivery(Table(), helo_name="mx.example.test", port=mx.port)
        manager = QueueManager(store, delimiters="+", remote=remote, hostname="mx.example.test")
        task = asyncio.create_task(manager.run())
        deadline = time.monotonic() + 30
        while store.queue_get(qid) is not None or len(inbox_of(store, ALICE)) < 1:
            assert time.monotonic() < deadline, store.queue_get(qid)
            await asyncio.sleep(0.05)
        manager.stop()
        await task

    try:
        asyncio.run(go())
        assert len(mx.inbox("bob@remote.test")) == 1
        [dsn] = [email.message_from_bytes(m, policy=email.policy.compat32)
                 for m in inbox_of(store, ALICE)]
        assert dsn["Return-Path"] == "<>"
        words, status, _ = dsn.get_payload()
        per_message, *blocks = status.get_payload()
        assert per_message["Original-Envelope-Id"] == "E-77"
        [block] = blocks
        assert block["Final-Recipient"] == "rfc822;nobody@remote.test"
        assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
        assert block["Remote-MTA"] == "dns;mx.remote.test"
        reply = block["Diagnostic-Code"].removeprefix("smtp;")
        assert reply.startswith("550 5.1.1 ")
        assert reply in mx.log()            # exactly what the remote server answered
        assert reply in words.get_payload(decode=True).decode()
        assert "bob@remote.test" not in words.get_payload(decode=True).decode()
    finally:
        store.close()


def inbox_of(store: SQLiteStore, address: str) -> list[bytes]:
    rows = store.reader.execute(
        "SELECT m.prefix, m.blob FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
        " JOIN accounts a ON b.account = a.id WHERE a.address = ? AND b.name = 'INBOX'"
        " ORDER BY m.uid", (address,)).fetchall()
    return [bytes(p) + store.read_blob(b) for p, b in rows]
