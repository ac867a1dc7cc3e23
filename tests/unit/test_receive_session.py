"""The receiving session over the core and a real store, without sockets."""

from __future__ import annotations

import asyncio

from pillarbox.auth.passwords import hash_password
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from pillarbox.receive.session import ReceiverContext, Session
from pillarbox.store.sqlite.store import SQLiteStore


def _drive(session: Session, core: SMTPServerConnection, data: bytes) -> bytes:
    core.receive_data(data)
    while True:
        event = core.next_event()
        if event is ev.NEED_DATA or event is ev.PAUSED:
            break
        if isinstance(event, ev.MailFrom):
            core.respond(session.mail_from(event))
        elif isinstance(event, ev.RcptTo):
            core.respond(session.rcpt_to(event))
        elif isinstance(event, ev.MessageStart):
            session.message_start()
        elif isinstance(event, ev.MessageData):
            session.message_data(event.data)
        elif isinstance(event, ev.MessageEnd):
            core.respond(asyncio.run(session.message_end(event)))
        elif isinstance(event, ev.MessageAborted):
            session.message_aborted(event)
    return core.data_to_send()


def test_dsn_parameters_and_envelope_are_stored_with_the_message(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    store.add_account("alice@example.test", hash_password("pw"))
    ctx = ReceiverContext(store=store, hostname="mx.test", recipient_delimiter="+",
                          min_free_space=0)
    core = SMTPServerConnection("mx.test", Limits())
    session = Session(ctx, core, "192.0.2.7")
    core.greeting()
    out = _drive(
        session, core,
        b"EHLO client.test\r\n"
        b"MAIL FROM:<bob@sender.test> RET=HDRS ENVID=QQ+2B314 BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2Bx@example.test\r\n"
        b"RCPT TO:<alice+tag@example.test> NOTIFY=NEVER\r\n"
        b"DATA\r\nSubject: dsn\r\n\r\nbody\r\n.\r\n",
    )
    last = out.split(b"\r\n")[-2]
    assert last.startswith(b"250 2.0.0 Ok: queued as ")
    queue_id = last.rsplit(b" ", 1)[1].decode()
    entry = store.queue_get(queue_id)
    assert entry is not None
    assert (entry.reverse_path, entry.dsn_ret, entry.dsn_envid, entry.body) == (
        "bob@sender.test", "HDRS", "QQ+314", "8BITMIME")
    assert entry.client_address == "192.0.2.7" and entry.helo == "client.test"
    assert [(r.address, r.notify, r.orcpt) for r in entry.recipients] == [
        ("alice@example.test", "SUCCESS,FAILURE", "rfc822;alice+2Bx@example.test"),
        ("alice+tag@example.test", "NEVER", None),
    ]
    blob = store.blobs.path(queue_id).read_bytes()
    assert blob.startswith(b"Received: from client.test ([192.0.2.7])\r\n\tby mx.test (Pillarbox)"
                           b" with ESMTP id " + queue_id.encode() + b";\r\n\t")
    assert blob.endswith(b"\r\nSubject: dsn\r\n\r\nbody\r\n")
    store.close()


def test_spool_full_before_mail_answers_452(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    ctx = ReceiverContext(store=store, hostname="mx.test", recipient_delimiter="+",
                          min_free_space=1 << 60)
    core = SMTPServerConnection("mx.test", Limits())
    session = Session(ctx, core, "192.0.2.7")
    out = _drive(session, core, b"EHLO c.test\r\nMAIL FROM:<>\r\n")
    assert out.endswith(b"452 4.3.1 Insufficient system storage, try again later\r\n")
    store.close()


def test_rcpt_postmaster_without_domain_finds_a_local_postmaster(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    store.add_account("alice@example.test", hash_password("pw"))
    store.add_alias("postmaster@example.test", "alice@example.test")
    # The server's own name is not a local domain: <Postmaster> still lands.
    ctx = ReceiverContext(store=store, hostname="mx.elsewhere.test", recipient_delimiter="+",
                          min_free_space=0)
    core = SMTPServerConnection("mx.elsewhere.test", Limits())
    session = Session(ctx, core, "192.0.2.7")
    out = _drive(session, core, b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n")
    assert out.endswith(b"250 2.1.5 Recipient <Postmaster@example.test> ok\r\n"), out
    store.close()
