"""Submission policy without sockets: whose addresses, relaying, the header gate.

``receive.senders`` (which addresses an account may send as), ``receive.relay``
(trusted networks, routing tricks) and ``receive.submission`` (the header held
for the From: check and RFC 6409 §8), then the receiving ``Session`` over the
core and a real store, with a login taken as done.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from pillarbox.auth.passwords import hash_password
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from pillarbox.receive.relay import in_networks, literal_address, parse_networks, routing_trick
from pillarbox.receive.senders import SenderCheck
from pillarbox.receive.session import ReceiverContext, Session
from pillarbox.receive.submission import MAX_HEADER, HeaderGate
from pillarbox.store.base import Credentials
from pillarbox.store.sqlite import sendas
from pillarbox.store.sqlite.store import SQLiteStore

ALICE = "alice@example.test"


@pytest.fixture
def store(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    store.add_domain("other.test")
    for address in (ALICE, "bob@example.test"):
        store.add_account(address, hash_password("pw"))
    store.add_alias("sales@example.test", ALICE)
    store.add_alias("team@example.test", "sales@example.test")      # alias of an alias
    store.add_alias("both@example.test", ALICE)
    store.add_alias("both@example.test", "bob@example.test")
    store.add_alias("@other.test", ALICE)                           # a catch-all
    store.add_alias("bobs@example.test", "bob@example.test")
    sendas.grant(store, ALICE, "boss@example.test")
    sendas.grant(store, ALICE, "@granted.test")
    yield store
    store.close()


def alice(store: SQLiteStore) -> Credentials:
    creds = store.credentials(ALICE)
    assert creds is not None
    return creds


def mailbox(address: str) -> Mailbox:
    local, _, domain = address.rpartition("@")
    return Mailbox(local, domain)


@pytest.mark.parametrize("address, allowed", [
    (ALICE, True),
    ("ALICE@Example.Test", True),
    ("alice+lists@example.test", True),          # sub-address (delimiter "+")
    ("alice-lists@example.test", False),         # "-" is not a delimiter here
    ("sales@example.test", True),                # alias
    ("team@example.test", True),                 # alias of an alias
    ("sales+x@example.test", True),
    ("both@example.test", True),                 # an alias to several accounts
    ("bobs@example.test", False),                # someone else's alias
    ("bob@example.test", False),
    ("anything@other.test", False),              # a catch-all is no licence
    ("boss@example.test", True),                 # send-as grant
    ("who@granted.test", True),                  # send-as grant of a domain
    ("alice@elsewhere.test", False),
    ("alice@[192.0.2.1]", False),
])
def test_sender_check(store: SQLiteStore, address: str, allowed: bool) -> None:
    check = SenderCheck(store.directory(), "+", lambda aid: sendas.grants(store, aid))
    assert check.allowed(alice(store), mailbox(address)) is allowed


def test_grants_go_with_the_account(store: SQLiteStore) -> None:
    account_id = alice(store).account_id
    assert sendas.grants(store, account_id) == ["@granted.test", "boss@example.test"]
    sendas.revoke(store, ALICE, "boss@example.test")
    assert sendas.grants(store, account_id) == ["@granted.test"]
    store.remove_account(ALICE)
    assert sendas.list_grants(store) == []


def test_networks_and_literals() -> None:
    nets = parse_networks(["127.0.0.0/8", "2001:db8::/32"])
    assert in_networks("127.0.0.1", nets) and in_networks("::ffff:127.0.0.5", nets)
    assert in_networks("2001:db8::1", nets) and not in_networks("192.0.2.1", nets)
    assert not in_networks("local", nets) and not in_networks("::1", nets)
    assert not in_networks("127.0.0.1", ())
    with pytest.raises(ValueError, match="host bits"):
        parse_networks(["10.0.0.1/8"])
    assert literal_address("[192.0.2.1]") == ipaddress.ip_address("192.0.2.1")
    assert literal_address("[IPv6:2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    assert literal_address("[x-tag:stuff]") is None and literal_address("example.test") is None


@pytest.mark.parametrize("local, route, trick", [
    ("bob", False, None),
    ("bob.smith", False, None),
    ("bob", True, "source routes"),
    ("carol%remote.test", False, "percent hack"),
    ("remote.test!carol", False, "bang path"),
    ("carol@remote.test", False, "'@'"),
])
def test_routing_tricks(local: str, route: bool, trick: str | None) -> None:
    found = routing_trick(Mailbox(local, "example.test"), route)
    assert (found is None) if trick is None else (found is not None and trick in found)


# ----------------------------------------------------------------- header gate


def test_gate_adds_date_and_message_id_whatever_the_pieces() -> None:
    message = b"From: Alice <alice@example.test>\r\nSubject: hi\r\n\r\nbody\r\n.x\r\n"
    for cut in range(1, len(message)):
        gate = HeaderGate(add_missing=True, message_id="<id@mx.test>")
        out = gate.feed(message[:cut]) + gate.feed(message[cut:]) + gate.finish()
        head, body = out.split(b"\r\n\r\n", 1)
        assert body == b"body\r\n.x\r\n"
        assert head.startswith(b"From: Alice <alice@example.test>\r\nSubject: hi\r\nDate: ")
        assert head.endswith(b"\r\nMessage-ID: <id@mx.test>")
        assert gate.senders == [Mailbox("alice", "example.test")]
        assert gate.added == ["Date", "Message-ID"]


def test_gate_keeps_what_is_there_and_a_message_without_body() -> None:
    gate = HeaderGate(add_missing=True, message_id="<id@mx.test>")
    head = b"From: a@b.test, c@d.test\r\nDate: x\r\nMessage-ID: <m@c>\r\n"
    assert gate.feed(head) == b""
    assert gate.finish() == head
    assert gate.senders == [Mailbox("a", "b.test"), Mailbox("c", "d.test")] and gate.added == []
    gate = HeaderGate(add_missing=True, message_id="<id@mx.test>")
    out = gate.feed(b"Subject: no newline at the end") + gate.finish()
    assert out.startswith(b"Date: ") and out.endswith(b"Message-ID: <id@mx.test>\r\n"
                                                     b"Subject: no newline at the end")


def test_gate_without_fixing_and_with_a_bad_from() -> None:
    gate = HeaderGate(add_missing=False, message_id="<id@mx.test>")
    message = b"From: undisclosed\r\n\r\nbody\r\n"
    assert gate.feed(message) == message
    assert gate.senders == ["undisclosed"]


def test_gate_gives_up_on_a_huge_header() -> None:
    gate = HeaderGate(add_missing=True, message_id="<id@mx.test>")
    chunk = b"X-Junk: " + b"y" * 1000 + b"\r\n"
    out = b""
    for _ in range(MAX_HEADER // len(chunk) + 2):
        out += gate.feed(chunk)
    assert gate.too_long and not gate.holding and len(out) > MAX_HEADER


# --------------------------------------------------------------------- session


def drive(session: Session, core: SMTPServerConnection, data: bytes) -> bytes:
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
    return core.data_to_send()


def session_for(store: SQLiteStore, client: str = "192.0.2.7", *, trusted: str = "",
                submission: bool = False, logged_in: bool = False) -> tuple[Session, SMTPServerConnection]:
    ctx = ReceiverContext(store=store, hostname="mx.test", recipient_delimiter="+",
                          min_free_space=0,
                          trusted_networks=parse_networks([trusted] if trusted else []),
                          send_as=lambda aid: sendas.grants(store, aid))
    core = SMTPServerConnection("mx.test", Limits())
    session = Session(ctx, core, client, submission=submission, local_addresses=("192.0.2.25",))
    if logged_in:
        session.account = alice(store)
        core.authenticated = True
    return session, core


def test_untrusted_client_reaches_only_local_recipients(store: SQLiteStore) -> None:
    session, core = session_for(store)
    out = drive(session, core, b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\n"
                b"RCPT TO:<bob@example.test>\r\nRCPT TO:<carol@remote.test>\r\n"
                b"RCPT TO:<carol%remote.test@example.test>\r\n"
                b"RCPT TO:<@example.test:bob@example.test>\r\n"
                b"RCPT TO:<bob@[192.0.2.25]>\r\nRCPT TO:<bob@[192.0.2.26]>\r\n")
    lines = out.split(b"\r\n")[-7:-1]
    assert lines == [
        b"250 2.1.5 Recipient <bob@example.test> ok",
        b"554 5.7.1 Relay access denied",
        b"554 5.7.1 Relay access denied: the percent hack ('%' in the local part)",
        b"554 5.7.1 Relay access denied: source routes are not accepted (RFC 5321 3.6.1)",
        b"250 2.1.5 Recipient <bob@example.test> ok",      # our own address literal
        b"554 5.7.1 Relay access denied",
    ]


def test_trusted_network_relays(store: SQLiteStore) -> None:
    session, core = session_for(store, "192.0.2.7", trusted="192.0.2.0/24")
    out = drive(session, core, b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\n"
                b"RCPT TO:<carol@remote.test>\r\nRCPT TO:<\"odd%x\"@Remote.TEST>\r\n"
                b"DATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n")
    assert out.split(b"\r\n")[-2].startswith(b"250 2.0.0 Ok: queued as ")
    queue_id = out.split(b"\r\n")[-2].rsplit(b" ", 1)[1].decode()
    entry = store.queue_get(queue_id)
    assert entry is not None
    assert [r.address for r in entry.recipients] == ["carol@remote.test", "odd%x@remote.test"]
    # Not a submission: no header is added.
    assert b"Message-ID" not in store.blobs.path(queue_id).read_bytes()


def test_logged_in_user_and_sender_rules(store: SQLiteStore) -> None:
    session, core = session_for(store, submission=True, logged_in=True)
    out = drive(session, core, b"EHLO c.test\r\nMAIL FROM:<bob@example.test>\r\n")
    assert out.endswith(b"550 5.7.1 Sender address <bob@example.test> is not one of the "
                        b"addresses alice@example.test may send as\r\n")
    out = drive(session, core, b"MAIL FROM:<sales@example.test>\r\nRCPT TO:<carol@remote.test>\r\n"
                b"DATA\r\nFrom: Boss <boss@example.test>\r\n\r\nhi\r\n.\r\n")
    last = out.split(b"\r\n")[-2]
    assert last.startswith(b"250 2.0.0 Ok: queued as "), out
    blob = store.blobs.path(last.rsplit(b" ", 1)[1].decode()).read_bytes()
    assert b" with ESMTPA id " in blob and b"\r\nDate: " in blob and b"\r\nMessage-ID: <" in blob
    out = drive(session, core, b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
                b"DATA\r\nFrom: alice@example.test\r\nFrom: bob@example.test\r\n\r\nhi\r\n.\r\n")
    assert out.endswith(b"550 5.7.1 From: address <bob@example.test> is not one of the "
                        b"addresses alice@example.test may send as\r\n")
    assert store.queue_list() and len(store.queue_list()) == 1   # the forged one is not queued
