"""REQUIRETLS (RFC 8689) in the SMTP cores: transcripts of the server (EHLO,
MAIL FROM ... REQUIRETLS, the ``TLS-Required: No`` header field) and of the
client (the MAIL parameter sent only where it may be)."""

from __future__ import annotations

import random

import pytest

from pillarbox.protocols.smtp import client as c
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.client import (
    Envelope,
    LocalClientError,
    Recipient,
    SMTPClientConnection,
)
from pillarbox.protocols.smtp.params import (
    REQUIRETLS_NEEDS_TLS,
    MailParams,
    parse_mail_params,
    parse_params,
)
from pillarbox.protocols.smtp.reply import RemoteProtocolError
from pillarbox.protocols.smtp.server import Limits
from tests.protocols.test_smtp_server import (
    DATA,
    EHLO,
    GREETING,
    R_354,
    R_MAIL,
    R_QUEUED,
    R_RCPT,
    RCPT,
    Session,
    bytewise,
    random_pieces,
)

R_TLS_READY = b"220 2.0.0 Ready to start TLS\r\n"
R_NEEDS_TLS = b"530 5.7.10 REQUIRETLS needs a TLS session: issue STARTTLS first (RFC 8689 2)\r\n"
MAIL_REQUIRETLS = b"MAIL FROM:<alice@example.test> REQUIRETLS\r\n"


def ehlo_keywords(reply: bytes) -> list[str]:
    return [line[4:].split(" ")[0] for line in reply.decode().split("\r\n")[1:] if line]


# --------------------------------------------------------------------- EHLO


def test_not_offered_without_tls() -> None:
    assert "REQUIRETLS" not in ehlo_keywords(Session().feed(EHLO))


def test_not_offered_before_starttls() -> None:
    keywords = ehlo_keywords(Session(tls_available=True).feed(EHLO))
    assert "STARTTLS" in keywords and "REQUIRETLS" not in keywords


def test_offered_in_the_ehlo_after_starttls() -> None:
    session = Session(tls_available=True)
    session.feed(EHLO)
    assert session.feed(b"STARTTLS\r\n") == R_TLS_READY
    keywords = ehlo_keywords(session.feed(EHLO))
    assert "REQUIRETLS" in keywords and "STARTTLS" not in keywords


def test_offered_under_implicit_tls() -> None:
    assert "REQUIRETLS" in ehlo_keywords(Session(tls_active=True).feed(EHLO)[len(GREETING):])


def test_not_offered_after_helo() -> None:
    assert Session(tls_active=True).feed(b"HELO client.test\r\n") == (
        GREETING + b"250 mx.test Hello client.test\r\n")


# --------------------------------------------------------------------- MAIL


def test_mail_with_requiretls_without_tls_is_530() -> None:
    session = Session(tls_available=True)
    assert session.feed(EHLO, MAIL_REQUIRETLS).endswith(R_NEEDS_TLS)
    assert session.of(ev.MailFrom) == []
    # The session goes on: the same MAIL without the parameter is taken.
    assert session.feed(b"MAIL FROM:<alice@example.test>\r\n") == R_MAIL


def test_mail_with_requiretls_under_tls_reaches_the_session() -> None:
    session = Session(tls_active=True)
    session.feed(EHLO)
    assert session.feed(MAIL_REQUIRETLS, RCPT, DATA, b"x\r\n.\r\n") == (
        R_MAIL + R_RCPT + R_354 + R_QUEUED)
    [mail] = session.of(ev.MailFrom)
    assert mail.params == MailParams(requiretls=True)
    [end] = session.of(ev.MessageEnd)
    assert end.tls_required_no is False


def test_mail_with_requiretls_after_starttls() -> None:
    session = Session(tls_available=True)
    session.feed(EHLO, b"STARTTLS\r\n", EHLO)
    assert session.feed(b"MAIL FROM:<alice@example.test> requiretls SIZE=10\r\n") == R_MAIL
    assert session.of(ev.MailFrom)[0].params == MailParams(size=10, requiretls=True)


def test_requiretls_takes_no_value() -> None:
    session = Session(tls_active=True)
    session.feed(EHLO)
    assert session.feed(b"MAIL FROM:<alice@example.test> REQUIRETLS=YES\r\n") == (
        b"501 5.5.4 REQUIRETLS takes no value (RFC 8689 2)\r\n")


def test_requiretls_twice_is_refused() -> None:
    session = Session(tls_active=True)
    session.feed(EHLO)
    assert session.feed(b"MAIL FROM:<a@example.test> REQUIRETLS REQUIRETLS\r\n") == (
        b"501 5.5.4 Duplicate parameter: REQUIRETLS\r\n")


def test_requiretls_needs_ehlo() -> None:
    session = Session(tls_active=True)
    session.feed(b"HELO client.test\r\n")
    assert session.feed(MAIL_REQUIRETLS).startswith(b"555 5.5.4 ")


def test_parse_mail_params() -> None:
    params = parse_params("REQUIRETLS BODY=8BITMIME")
    assert parse_mail_params(params, max_size=0, requiretls=True) == MailParams(
        body="8BITMIME", requiretls=True)
    with pytest.raises(RemoteProtocolError) as refused:
        parse_mail_params(params, max_size=0)
    assert refused.value.reply == REQUIRETLS_NEEDS_TLS
    assert parse_mail_params([], max_size=0, requiretls=True) == MailParams()


# ------------------------------------------------------ TLS-Required: No


def tagged(message: bytes, *, pieces: int = 0, seed: int = 1) -> bool:
    """Whether MessageEnd says ``tls_required_no`` for ``message`` sent with DATA
    (lines of any length: the limit of RFC 5321 4.5.3.1.6 is the core's other job)."""
    session = Session(Limits(max_text_line=0))
    assert session.feed(EHLO, b"MAIL FROM:<a@example.test>\r\n", RCPT, DATA).endswith(R_354)
    chunks = random_pieces(message, random.Random(seed), pieces) if pieces else [message]
    out = session.feed(*chunks, b".\r\n")
    assert out == R_QUEUED, out
    [end] = session.of(ev.MessageEnd)
    assert session.messages == [message]
    return bool(end.tls_required_no)


BODY = b"\r\nHello.\r\n"


@pytest.mark.parametrize("header", [
    b"TLS-Required: No\r\n",
    b"tls-required: no\r\n",
    b"TLS-REQUIRED:NO\r\n",
    b"TLS-Required:  No \t\r\n",
    b"TLS-Required:\r\n No\r\n",
    b"TLS-Required:\r\n\tNo\r\n \r\n",
    b"From: a@example.test\r\nTLS-Required: No\r\nSubject: x\r\n",
])
def test_tls_required_no_is_seen(header: bytes) -> None:
    message = b"From: a@example.test\r\n" + header + BODY
    assert tagged(message)
    assert tagged(message, pieces=5, seed=7)


@pytest.mark.parametrize("header", [
    b"",
    b"TLS-Required: Yes\r\n",
    b"TLS-Required: No thanks\r\n",
    b"TLS-Required: N\r\n o\r\n",
    b"TLS-Required:\r\n",
    b"TLS-Required: No\r\nTLS-Required: No\r\n",      # more than one: not honoured
    b"TLS-Required: No\r\nTLS-Required: Yes\r\n",
    b"X-TLS-Required: No\r\n",
    b"TLS-Required : No\r\n",
    b"Subject: TLS-Required: No\r\n",
    b"Subject: x\r\n TLS-Required: No\r\n",
])
def test_anything_else_is_not(header: bytes) -> None:
    message = b"From: a@example.test\r\n" + header + BODY
    assert not tagged(message)
    assert not tagged(message, pieces=5, seed=3)


def test_only_the_header_section_counts() -> None:
    assert not tagged(b"From: a@example.test\r\n\r\nTLS-Required: No\r\n")


def test_a_header_without_a_body() -> None:
    assert tagged(b"From: a@example.test\r\nTLS-Required: No\r\n")


def test_split_at_every_byte() -> None:
    message = b"From: a@example.test\r\nTLS-Required:\r\n  No\r\nSubject: s\r\n" + BODY
    session = Session()
    session.feed(EHLO, b"MAIL FROM:<a@example.test>\r\n", RCPT, DATA)
    session.feed(*bytewise(message), b".\r\n")
    assert session.of(ev.MessageEnd)[0].tls_required_no is True


def test_a_field_too_long_to_be_no() -> None:
    # Longer than the 1 KiB the header scan keeps of one line: never "No".
    long = b"TLS-Required: " + b" " * 2000 + b"x No\r\n"
    assert not tagged(b"From: a@example.test\r\n" + long + BODY, pieces=3)
    folded = b"TLS-Required: No\r\n" + b" " * 1500 + b"x\r\n"
    assert not tagged(b"From: a@example.test\r\n" + folded + BODY, pieces=4)
    # A field that ends before a very long one is still read whole.
    after = b"TLS-Required: No\r\nSubject: " + b"s" * 3000 + b"\r\n"
    assert tagged(b"From: a@example.test\r\n" + after + BODY, pieces=4)


def test_a_new_transaction_starts_untagged() -> None:
    session = Session()
    session.feed(EHLO, b"MAIL FROM:<a@example.test>\r\n", RCPT, DATA,
                 b"TLS-Required: No\r\n\r\nx\r\n.\r\n")
    session.feed(b"MAIL FROM:<a@example.test>\r\n", RCPT, DATA, b"Subject: y\r\n\r\nx\r\n.\r\n")
    assert [e.tls_required_no for e in session.of(ev.MessageEnd)] == [True, False]


def test_bdat_is_scanned_too() -> None:
    session = Session()
    message = b"TLS-Required: No\r\n\r\nx\r\n"
    session.feed(EHLO, b"MAIL FROM:<a@example.test>\r\n", RCPT,
                 b"BDAT 10\r\n" + message[:10], f"BDAT {len(message) - 10} LAST\r\n".encode()
                 + message[10:])
    assert session.of(ev.MessageEnd)[0].tls_required_no is True


# ------------------------------------------------------------------- client

EHLO_TLS = (b"250-mx.test Hello client.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
            b"250-REQUIRETLS\r\n250 DSN\r\n")
EHLO_TLS_WITHOUT = b"250-mx.test Hello client.test\r\n250-PIPELINING\r\n250 DSN\r\n"


def client_under_tls(ehlo: bytes) -> SMTPClientConnection:
    conn = SMTPClientConnection("client.test")
    conn.receive_data(b"220 mx.test ESMTP\r\n")
    assert isinstance(conn.next_event(), c.Greeting)
    conn.hello()
    conn.receive_data(b"250-mx.test\r\n250 STARTTLS\r\n")
    assert isinstance(conn.next_event(), c.HelloDone)
    conn.starttls()
    conn.receive_data(b"220 2.0.0 go ahead\r\n")
    assert isinstance(conn.next_event(), c.StartTLSDone)
    conn.tls_established()
    conn.hello()
    conn.receive_data(ehlo)
    assert isinstance(conn.next_event(), c.HelloDone)
    conn.data_to_send()
    return conn


ENVELOPE = Envelope("a@example.org", (Recipient("b@example.net"),), requiretls=True)


def test_client_sends_requiretls_where_offered_under_tls() -> None:
    conn = client_under_tls(EHLO_TLS)
    assert conn.extensions.requiretls
    conn.send_envelope(ENVELOPE)
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@example.org> REQUIRETLS\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")


def test_client_refuses_where_not_offered() -> None:
    conn = client_under_tls(EHLO_TLS_WITHOUT)
    with pytest.raises(LocalClientError, match="REQUIRETLS"):
        conn.send_envelope(ENVELOPE)


def test_client_refuses_without_tls_even_if_offered() -> None:
    conn = SMTPClientConnection("client.test")
    conn.receive_data(b"220 mx.test ESMTP\r\n")
    conn.next_event()
    conn.hello()
    conn.receive_data(EHLO_TLS)
    conn.next_event()
    with pytest.raises(LocalClientError, match="REQUIRETLS"):
        conn.send_envelope(ENVELOPE)


def test_client_and_server_cores_agree() -> None:
    """The client's MAIL line, fed to the server core under TLS, gives requiretls."""
    conn = client_under_tls(EHLO_TLS)
    conn.send_envelope(ENVELOPE)
    server = Session(tls_active=True)
    server.feed(EHLO)
    server.feed(conn.data_to_send())
    assert server.of(ev.MailFrom)[0].params.requiretls is True


def fed(*chunks: bytes) -> bool:
    session = Session(Limits(max_text_line=0))
    session.feed(EHLO, b"MAIL FROM:<a@example.test>\r\n", RCPT, DATA)
    assert session.feed(*chunks, b".\r\n") == R_QUEUED
    return bool(session.of(ev.MessageEnd)[0].tls_required_no)


def test_a_line_cut_short_between_pieces() -> None:
    # The scan keeps 1 KiB of a line still open at the end of a piece.
    assert not fed(b"From: a\r\nTLS-Required: No" + b" " * 1500, b"\r\n\r\nx\r\n")
    assert not fed(b"From: a\r\nTLS-Required:\r\n" + b" " * 1500, b"No\r\n\r\nx\r\n")
    assert fed(b"From: a\r\nTLS-Required: No\r\nSubject: " + b"s" * 1500, b"\r\n\r\nx\r\n")
    assert fed(b"From: a\r\nSubject: " + b"s" * 1500, b"\r\nTLS-Required: No\r\n\r\nx\r\n")
