"""Transcripts of the SMTP client core: bytes in, events and commands out."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.auth.scram import ScramSecrets, ScramServer
from pillarbox.auth.scram_client import ScramClient
from pillarbox.protocols.smtp import client as c
from pillarbox.protocols.smtp import events as sev
from pillarbox.protocols.smtp.client import (
    NEED_DATA,
    ClientLimits,
    Envelope,
    LocalClientError,
    LoginClient,
    PlainClient,
    Recipient,
    ServerProtocolError,
    ServerReply,
    SMTPClientConnection,
)
from pillarbox.protocols.smtp.reply import Reply
from pillarbox.protocols.smtp.server import SMTPServerConnection

FULL = (b"250-mx.test Hello client.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n"
        b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n"
        b"250-DSN\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN SCRAM-SHA-256\r\n")
BARE = b"250 mx.test\r\n"                      # EHLO with no extension at all
PIPE = b"250-mx.test\r\n250 PIPELINING\r\n"


def event(conn: SMTPClientConnection, data: bytes = b"") -> object:
    if data:
        conn.receive_data(data)
    return conn.next_event()


def ready(ehlo: bytes = FULL, **kw: object) -> SMTPClientConnection:
    conn = SMTPClientConnection("client.test", **kw)  # type: ignore[arg-type]
    greeting = event(conn, b"220 mx.test ESMTP\r\n")
    assert isinstance(greeting, c.Greeting) and greeting.reply.code == 220
    conn.hello()
    assert conn.data_to_send() == b"EHLO client.test\r\n"
    done = event(conn, ehlo)
    assert isinstance(done, c.HelloDone) and done.reply.code == 250
    return conn


def env(*rcpts: str, **kw: object) -> Envelope:
    recipients = tuple(Recipient(r) for r in rcpts)
    return Envelope("a@example.org", recipients, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ replies


def test_multi_line_greeting_and_exact_quote() -> None:
    conn = SMTPClientConnection("client.test")
    assert event(conn, b"220-mx.test ESMTP\r\n220-") is NEED_DATA
    ev = event(conn, b"second line\r\n220 third\r\n")
    assert isinstance(ev, c.Greeting)
    assert ev.reply.lines == ("mx.test ESMTP", "second line", "third")
    assert ev.reply.quote() == "220-mx.test ESMTP\n220-second line\n220 third"


def test_reply_status_and_typed_reply() -> None:
    r = ServerReply(550, ("5.1.1 <x@y>: no such user", "5.1.1 see the docs"))
    assert r.status == "5.1.1" and r.text == "<x@y>: no such user"
    assert r.as_reply() == Reply(550, "5.1.1", ("<x@y>: no such user", "see the docs"))
    assert r.as_reply().render() == b"550-5.1.1 <x@y>: no such user\r\n550 5.1.1 see the docs\r\n"
    assert ServerReply(550, ("4.1.1 mismatch",)).status == ""   # class differs from the code
    assert ServerReply(451, ("try later",)).status_or() == "4.0.0"
    assert ServerReply(250, ("",)).quote() == "250"


def test_refused_greeting_then_quit() -> None:
    conn = SMTPClientConnection("client.test")
    ev = event(conn, b"554 5.7.1 go away\r\n")
    assert isinstance(ev, c.Greeting) and ev.reply.is_permanent
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"
    ev = event(conn, b"221 bye\r\n")
    assert isinstance(ev, c.ReplyEvent) and ev.command == "QUIT" and conn.closed


def test_greeting_421_closes() -> None:
    conn = SMTPClientConnection("client.test")
    ev = event(conn, b"421 4.3.2 busy\r\n")
    assert isinstance(ev, c.Greeting) and conn.closed
    with pytest.raises(LocalClientError):
        conn.quit()


@pytest.mark.parametrize("data, what", [
    (b"hello there\r\n", "malformed reply line"),
    (b"22 short\r\n", "malformed reply line"),
    (b"220-one\r\n250 two\r\n", "reply code changed"),
    (b"620 six\r\n", "malformed reply line"),
    (b"220" + b"x" * 5000, "longer than"),
])
def test_malformed_replies_are_protocol_errors(data: bytes, what: str) -> None:
    conn = SMTPClientConnection("client.test")
    conn.receive_data(data)
    with pytest.raises(ServerProtocolError, match=what):
        conn.next_event()
    assert conn.closed


def test_too_many_reply_lines() -> None:
    conn = SMTPClientConnection("client.test", ClientLimits(max_reply_lines=5))
    conn.receive_data(b"220-x\r\n" * 6)
    with pytest.raises(ServerProtocolError, match="more than 5 lines"):
        conn.next_event()


def test_endless_reply_never_buffers_more_than_a_line() -> None:
    conn = SMTPClientConnection("client.test", ClientLimits(max_reply_line=100))
    for _ in range(3):
        conn.receive_data(b"220-" + b"y" * 40 + b"\r\n")
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"220-" + b"z" * 200)
    with pytest.raises(ServerProtocolError):
        conn.next_event()


def test_reply_to_nothing_is_an_error_but_421_is_closing() -> None:
    conn = ready()
    with pytest.raises(ServerProtocolError, match="reply to no command"):
        event(conn, b"250 surprise\r\n")
    conn = ready()
    ev = event(conn, b"421 4.4.2 idle too long\r\n")
    assert isinstance(ev, c.ServerClosing) and conn.closed


def test_eof_with_a_command_waiting_and_in_a_reply() -> None:
    conn = ready()
    conn.send_envelope(env("b@example.net"))
    conn.receive_eof()
    ev = conn.next_event()
    assert ev == c.ConnectionClosed("MAIL") and conn.closed
    conn = ready()
    conn.send_envelope(env("b@example.net"))
    conn.receive_data(b"250 2.1.0")
    conn.receive_eof()
    with pytest.raises(ServerProtocolError, match="middle of a reply"):
        conn.next_event()


# --------------------------------------------------------------- EHLO, HELO


def test_extensions_parsed() -> None:
    conn = ready()
    ext = conn.extensions
    assert ext.pipelining and ext.eightbitmime and ext.smtputf8 and ext.chunking and ext.dsn
    assert ext.enhanced_status_codes and ext.starttls and ext.size == 10000
    assert ext.auth == {"PLAIN", "LOGIN", "SCRAM-SHA-256"}
    assert str(ext).startswith("8BITMIME AUTH CHUNKING")


def test_extension_variants() -> None:
    ext = c.Extensions.parse(ServerReply(250, ("mx", "size", "AUTH=LOGIN PLAIN", "SIZE abc")))
    assert ext.size == 0 and ext.auth == {"LOGIN", "PLAIN"}
    assert c.Extensions.parse(ServerReply(250, ("mx",))).size is None


def test_ehlo_5xx_falls_back_to_helo() -> None:
    conn = SMTPClientConnection("client.test")
    event(conn, b"220 old.test\r\n")
    conn.hello()
    conn.data_to_send()
    assert event(conn, b"502 5.5.1 what?\r\n") is NEED_DATA
    assert conn.data_to_send() == b"HELO client.test\r\n"
    ev = event(conn, b"250 old.test\r\n")
    assert isinstance(ev, c.HelloDone) and ev.reply.code == 250
    assert not ev.extensions.esmtp and not ev.extensions.pipelining
    conn.send_envelope(env("b@example.net", size=100, body="7BIT"))
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"   # no parameters at all


def test_ehlo_4xx_is_final() -> None:
    conn = SMTPClientConnection("client.test")
    event(conn, b"220 mx\r\n")
    conn.hello()
    ev = event(conn, b"451 4.3.0 later\r\n")
    assert isinstance(ev, c.HelloDone) and ev.reply.code == 451
    assert conn.data_to_send() == b"EHLO client.test\r\n"


def test_commands_out_of_sequence() -> None:
    conn = SMTPClientConnection("client.test")
    with pytest.raises(LocalClientError, match="waiting for the greeting"):
        conn.hello()
    event(conn, b"220 mx\r\n")
    with pytest.raises(LocalClientError):
        conn.send_envelope(env("b@example.net"))
    with pytest.raises(LocalClientError):
        conn.send_content(b"x")


# ------------------------------------------------------------- transactions


def test_pipelined_transaction_one_write_per_recipient_results() -> None:
    conn = ready()
    conn.send_envelope(env("b@example.net", "c@example.net", "d@example.net", size=42))
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@example.org> SIZE=42\r\nRCPT TO:<b@example.net>\r\n"
        b"RCPT TO:<c@example.net>\r\nRCPT TO:<d@example.net>\r\n"
    )   # CHUNKING with PIPELINING: BDAT, so no DATA in the group
    ev = event(conn, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n"
                     b"250 2.1.5 Ok\r\n")
    assert isinstance(ev, c.EnvelopeDone) and ev.accepted
    assert [r.code for r in ev.rcpts if r] == [250, 550, 250]


def test_pipelined_data_transaction_with_dot_stuffing() -> None:
    conn = ready(PIPE)
    conn.send_envelope(env("b@example.net", "c@example.net"))
    assert conn.data_to_send() == (b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                                   b"RCPT TO:<c@example.net>\r\nDATA\r\n")
    ev = event(conn, b"250 ok\r\n452 4.5.3 too many\r\n250 ok\r\n354 go\r\n")
    assert isinstance(ev, c.EnvelopeDone) and ev.accepted and ev.data and ev.data.code == 354
    conn.send_content(b".hidden\r\nline\r\n.")
    conn.send_content(b"\r\n..two\r\nno newline at end")
    conn.end_content()
    assert conn.data_to_send() == (b"..hidden\r\nline\r\n..\r\n...two\r\n"
                                   b"no newline at end\r\n.\r\n")
    ev = event(conn, b"250 2.0.0 queued as X\r\n")
    assert isinstance(ev, c.MessageDone) and ev.reply.code == 250
    conn.reset()
    assert conn.data_to_send() == b"RSET\r\n"
    assert isinstance(event(conn, b"250 ok\r\n"), c.ReplyEvent)


def test_without_pipelining_one_command_at_a_time() -> None:
    conn = ready(BARE)
    conn.send_envelope(env("b@example.net", "c@example.net"))
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    assert event(conn, b"250 ok\r\n") is NEED_DATA
    assert conn.data_to_send() == b"RCPT TO:<b@example.net>\r\n"
    assert event(conn, b"250 ok\r\n") is NEED_DATA
    assert conn.data_to_send() == b"RCPT TO:<c@example.net>\r\n"
    assert event(conn, b"550 no\r\n") is NEED_DATA
    assert conn.data_to_send() == b"DATA\r\n"
    ev = event(conn, b"354 go\r\n")
    assert isinstance(ev, c.EnvelopeDone) and ev.accepted


def test_without_pipelining_refused_mail_sends_nothing_more() -> None:
    conn = ready(BARE)
    conn.send_envelope(env("b@example.net", "c@example.net"))
    conn.data_to_send()
    ev = event(conn, b"451 4.3.0 later\r\n")
    assert isinstance(ev, c.EnvelopeDone) and not ev.accepted and ev.rcpts == (None, None)
    assert conn.data_to_send() == b""
    conn.send_envelope(env("b@example.net"))     # the session goes on
    assert conn.data_to_send().startswith(b"MAIL")


def test_without_pipelining_all_refused_no_data() -> None:
    conn = ready(BARE)
    conn.send_envelope(env("b@example.net"))
    conn.data_to_send()
    event(conn, b"250 ok\r\n")
    conn.data_to_send()
    ev = event(conn, b"550 5.1.1 unknown\r\n")
    assert isinstance(ev, c.EnvelopeDone) and not ev.accepted and ev.data is None
    assert conn.data_to_send() == b""


def test_pipelined_every_rcpt_refused_but_354_ends_empty() -> None:
    conn = ready(PIPE)
    conn.send_envelope(env("b@example.net"))
    conn.data_to_send()
    ev = event(conn, b"250 ok\r\n550 no\r\n354 go ahead anyway\r\n")
    assert isinstance(ev, c.EnvelopeDone) and not ev.accepted
    assert conn.data_to_send() == b".\r\n"      # RFC 2920 3.1
    conn.reset()
    assert conn.data_to_send() == b""           # waits for the reply to "."
    assert event(conn, b"554 no valid recipients\r\n") is NEED_DATA
    assert conn.data_to_send() == b"RSET\r\n"
    ev = event(conn, b"250 ok\r\n")
    assert isinstance(ev, c.ReplyEvent) and ev.command == "RSET"


def test_pipelined_refused_mail_waits_for_every_reply() -> None:
    conn = ready(PIPE)
    conn.send_envelope(env("b@example.net"))
    conn.data_to_send()
    assert event(conn, b"552 5.3.4 too big\r\n503 5.5.1 need MAIL\r\n") is NEED_DATA
    ev = event(conn, b"503 5.5.1 need MAIL\r\n")
    assert isinstance(ev, c.EnvelopeDone) and not ev.accepted and ev.mail.code == 552


def test_421_to_rcpt_ends_the_transaction_and_the_session() -> None:
    conn = ready(PIPE)
    conn.send_envelope(env("b@example.net", "c@example.net"))
    conn.data_to_send()
    ev = event(conn, b"250 ok\r\n421 4.7.0 bye\r\n")
    assert isinstance(ev, c.EnvelopeDone) and not ev.accepted and conn.closed
    assert ev.rcpts[0] is not None and ev.rcpts[0].code == 421 and ev.rcpts[1] is None


def test_bdat_chunks_and_last() -> None:
    conn = ready()
    conn.send_envelope(env("b@example.net"))
    conn.data_to_send()
    ev = event(conn, b"250 ok\r\n250 ok\r\n")
    assert isinstance(ev, c.EnvelopeDone) and ev.accepted and ev.data is None
    conn.send_content(b"Subject: x\r\n\r\n.dot")
    assert conn.data_to_send() == b""           # held back to carry LAST
    conn.send_content(b" line\n")
    assert conn.data_to_send() == b"BDAT 18\r\nSubject: x\r\n\r\n.dot"
    conn.end_content()
    assert conn.data_to_send() == b"BDAT 7 LAST\r\n line\r\n"
    assert event(conn, b"250 2.0.0 18 octets\r\n") is NEED_DATA
    ev = event(conn, b"250 2.0.0 queued\r\n")
    assert isinstance(ev, c.MessageDone) and ev.reply.text == "queued"
    assert conn.fixed_line_endings == 1


def test_bdat_failed_chunk_is_the_result() -> None:
    conn = ready()
    conn.send_envelope(env("b@example.net"))
    conn.data_to_send()
    event(conn, b"250 ok\r\n250 ok\r\n")
    conn.send_content(b"a\r\n")
    conn.send_content(b"b\r\n")
    conn.end_content()
    assert conn.data_to_send() == b"BDAT 3\r\na\r\nBDAT 3 LAST\r\nb\r\n"
    ev = event(conn, b"552 5.3.4 too big\r\n503 5.5.1 no transaction\r\n")
    assert isinstance(ev, c.MessageDone) and ev.reply.code == 552


def test_empty_message_bdat() -> None:
    conn = ready()
    conn.send_envelope(env("b@example.net"))
    conn.data_to_send()
    event(conn, b"250 ok\r\n250 ok\r\n")
    conn.end_content()
    assert conn.data_to_send() == b"BDAT 0 LAST\r\n"


def test_data_used_when_chunking_is_off() -> None:
    conn = ready(use_chunking=False)
    conn.send_envelope(env("b@example.net"))
    assert conn.data_to_send().endswith(b"DATA\r\n")


# ---------------------------------------------------------------- parameters


def test_dsn_and_mail_parameters_when_offered() -> None:
    conn = ready()
    e = Envelope("a@example.org", (
        Recipient("b@example.net", "SUCCESS,FAILURE", "rfc822;b+2Bx@example.net"),
        Recipient("c@example.net", "NEVER", "utf-8;j+C3+B6rg@example.net"),
    ), size=1234, body="8BITMIME", smtputf8=True, ret="HDRS", envid="id with+plus")
    conn.send_envelope(e)
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@example.org> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS "
        b"ENVID=id+20with+2Bplus\r\n"
        b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.net\r\n"
        b"RCPT TO:<c@example.net> NOTIFY=NEVER ORCPT=utf-8;j\\x{F6}rg@example.net\r\n"
    )


def test_parameters_the_server_did_not_offer_are_not_sent() -> None:
    conn = ready(PIPE)
    conn.send_envelope(Envelope("", (Recipient("b@example.net", "SUCCESS", "rfc822;b@x"),),
                                size=10, body="7BIT", ret="FULL", envid="x"))
    assert conn.data_to_send() == b"MAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


@pytest.mark.parametrize("envelope, what", [
    (env("b@example.net", body="8BITMIME"), "convert to 7-bit"),
    (env("b@example.net", smtputf8=True), "SMTPUTF8"),
    (Envelope("a@example.org", (Recipient("jörg@example.net"),)), "needs SMTPUTF8"),
    (env("b@example.net>\r\nRCPT TO:<evil@x"), "cannot be sent"),
    (Envelope("a@b\r\nDATA", (Recipient("b@example.net"),)), "cannot be sent"),
    (env(), "at least one recipient"),
])
def test_envelopes_that_cannot_be_sent(envelope: Envelope, what: str) -> None:
    conn = ready(PIPE)
    with pytest.raises(LocalClientError, match=what):
        conn.send_envelope(envelope)


# ----------------------------------------------------------------- STARTTLS


def test_starttls_then_ehlo_again() -> None:
    conn = ready()
    conn.starttls()
    assert conn.data_to_send() == b"STARTTLS\r\n"
    ev = event(conn, b"220 2.0.0 ready\r\n")
    assert isinstance(ev, c.StartTLSDone) and conn.state is c.State.TLS
    conn.tls_established()
    assert conn.tls_active and not conn.extensions.pipelining
    conn.hello()
    assert conn.data_to_send() == b"EHLO client.test\r\n"
    assert isinstance(event(conn, PIPE), c.HelloDone)
    with pytest.raises(LocalClientError, match="STARTTLS is not offered|already"):
        conn.starttls()


def test_starttls_refused_goes_on_in_plaintext() -> None:
    conn = ready()
    conn.starttls()
    ev = event(conn, b"454 4.7.0 TLS not available\r\n")
    assert isinstance(ev, c.StartTLSDone) and conn.state is c.State.READY


def test_plaintext_after_220_is_injection() -> None:
    conn = ready()
    conn.starttls()
    with pytest.raises(ServerProtocolError, match="after its 220"):
        event(conn, b"220 go\r\n250 injected\r\n")


# ---------------------------------------------------------------------- AUTH


def test_auth_plain_initial_response() -> None:
    conn = ready()
    conn.auth(PlainClient("user", "pässword"))
    sent = conn.data_to_send()
    assert sent.startswith(b"AUTH PLAIN ")
    assert base64.b64decode(sent[11:-2]) == "\0user\0pässword".encode()
    ev = event(conn, b"235 2.7.0 ok\r\n")
    assert isinstance(ev, c.AuthDone) and ev.reply.code == 235


def test_auth_login_challenges_and_refusal() -> None:
    conn = ready()
    conn.auth(LoginClient("user", "pw"))
    assert conn.data_to_send() == b"AUTH LOGIN\r\n"
    assert event(conn, b"334 VXNlcm5hbWU6\r\n") is NEED_DATA
    assert conn.data_to_send() == base64.b64encode(b"user") + b"\r\n"
    assert event(conn, b"334 UGFzc3dvcmQ6\r\n") is NEED_DATA
    assert conn.data_to_send() == base64.b64encode(b"pw") + b"\r\n"
    ev = event(conn, b"535 5.7.8 bad credentials\r\n")
    assert isinstance(ev, c.AuthDone) and ev.reply.code == 535


def test_auth_mechanism_not_offered() -> None:
    conn = ready(PIPE)
    with pytest.raises(LocalClientError, match="not offered"):
        conn.auth(PlainClient("u", "p"))


def test_auth_bad_base64_challenge() -> None:
    conn = ready()
    conn.auth(LoginClient("user", "pw"))
    with pytest.raises(ServerProtocolError, match="bad AUTH LOGIN challenge"):
        event(conn, b"334 !!!not base64\r\n")


def _scram_dialogue(conn: SMTPClientConnection, server: ScramServer, stored: ScramSecrets,
                    *, forge: bool = False) -> object:
    first = conn.data_to_send()
    assert first.startswith(b"AUTH SCRAM-SHA-256 ")
    server.receive_client_first(base64.b64decode(first[19:-2]))
    challenge = base64.b64encode(server.server_first(stored))
    assert event(conn, b"334 " + challenge + b"\r\n") is NEED_DATA
    final = server.receive_client_final(base64.b64decode(conn.data_to_send()[:-2]))
    if forge:
        return event(conn, b"235 2.7.0 trust me\r\n")
    assert event(conn, b"334 " + base64.b64encode(final) + b"\r\n") is NEED_DATA
    assert conn.data_to_send() == b"\r\n"
    return event(conn, b"235 2.7.0 ok\r\n")


def test_auth_scram_against_our_server() -> None:
    stored = ScramSecrets.derive("pencil", iterations=4096)
    conn = ready()
    conn.auth(ScramClient("user", "pencil"))
    ev = _scram_dialogue(conn, ScramServer(), stored)
    assert isinstance(ev, c.AuthDone) and ev.reply.code == 235


def test_auth_scram_success_without_proof_is_refused() -> None:
    stored = ScramSecrets.derive("pencil", iterations=4096)
    conn = ready()
    conn.auth(ScramClient("user", "pencil"))
    with pytest.raises(ServerProtocolError, match="without the server's proof"):
        _scram_dialogue(conn, ScramServer(), stored, forge=True)


def test_scram_rfc7677_vector() -> None:
    client = ScramClient("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.initial_response() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.respond(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                           b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert client.respond(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=") == b""
    client.verify_success()


@pytest.mark.parametrize("first, what", [
    (b"r=othernonce,s=AAAA,i=4096", "does not extend"),
    (b"r=abcXYZ,s=AAAA,i=99999999", "iteration count"),
    (b"r=abcXYZ,s=***,i=4096", "base64"),
    (b"e=unknown-user", "refused"),
])
def test_scram_hostile_server_first(first: bytes, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        ScramClient("user", "pencil", nonce="abc").respond(first)


def test_scram_wrong_server_signature() -> None:
    client = ScramClient("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    client.respond(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                   b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    with pytest.raises(ValueError, match="does not match"):
        client.respond(b"v=" + base64.b64encode(b"x" * 32))


# ------------------------------------------- content: client → server core


def _through_server(chunks: list[bytes], *, chunking: bool) -> tuple[bytes, int]:
    """Send ``chunks`` with the client core into the server core; what it received."""
    server = SMTPServerConnection("mx.test")
    conn = SMTPClientConnection("client.test", use_chunking=chunking)
    received = bytearray()

    def pump() -> object:
        while True:
            server.receive_data(conn.data_to_send())
            while True:
                sev_ = server.next_event()
                if isinstance(sev_, (sev.MailFrom, sev.RcptTo, sev.MessageEnd)):
                    if isinstance(sev_, sev.MessageEnd):
                        received.extend(b"")
                    server.respond(Reply(250, "2.0.0", "ok"))
                elif isinstance(sev_, sev.MessageData):
                    received.extend(sev_.data)
                elif sev_ is sev.NEED_DATA or sev_ is sev.PAUSED:
                    break
            conn.receive_data(server.data_to_send())
            ev = conn.next_event()
            if ev is not NEED_DATA:
                return ev
            if not server.buffered and not conn.data_to_send() and not conn.waiting:
                return None

    server.greeting()
    conn.receive_data(server.data_to_send())
    assert isinstance(conn.next_event(), c.Greeting)
    conn.hello()
    assert isinstance(pump(), c.HelloDone)
    conn.send_envelope(env("b@example.net"))
    ev = pump()
    assert isinstance(ev, c.EnvelopeDone) and ev.accepted, ev
    for chunk in chunks:
        conn.send_content(chunk)
    conn.end_content()
    ev = pump()
    assert isinstance(ev, c.MessageDone) and ev.reply.code == 250, ev
    return bytes(received), conn.fixed_line_endings


def _normalised(data: bytes) -> bytes:
    out = c._BARE.sub(b"\r\n", data)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40).map(
    lambda b: b.replace(b"\x00", b".").replace(b"\x01", b"\r").replace(b"\x02", b"\n")),
    max_size=6), st.booleans())
def test_content_arrives_as_sent(chunks: list[bytes], chunking: bool) -> None:
    """Invariant: whatever the chunks, the server core receives the content with
    every line ending a CRLF, dots intact, and nothing else changed."""
    received, _ = _through_server(chunks, chunking=chunking)
    expected = _normalised(b"".join(chunks))
    assert received == expected


def test_dot_lines_survive_both_framings() -> None:
    body = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nend"
    for chunking in (False, True):
        received, fixed = _through_server([body[:18], body[18:]], chunking=chunking)
        assert received == body + b"\r\n" and fixed == 0


# ---------------------------------------------------------------- hostile peers

_REPLYISH = st.one_of(
    st.sampled_from([b"250 ok\r\n", b"250-a\r\n", b"354 go\r\n", b"421 bye\r\n", b"550 no\r\n",
                     b"334 \r\n", b"334 dGVzdA==\r\n", b"220 x\r\n", b"\r\n", b"\n", b"2",
                     b"250 2.0.0\r\n", b"502 5.5.1 no\r\n"]),
    st.binary(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_REPLYISH, max_size=12), st.sampled_from(["mail", "auth", "tls", "quit"]),
       st.sampled_from([FULL, PIPE, BARE]))
def test_any_server_bytes_give_events_or_a_protocol_error(
        chunks: list[bytes], action: str, ehlo: bytes) -> None:
    """Invariant: whatever a server sends, the core yields events or raises an
    SMTPClientError; no other exception escapes it, and it never loops."""
    conn = SMTPClientConnection("client.test")
    feed = [b"220 mx\r\n", ehlo, *chunks]
    started = False
    try:
        for data in feed:
            conn.receive_data(data)
            for _ in range(50):
                event = conn.next_event()
                if event is NEED_DATA:
                    break
            if conn.state is c.State.GREETED and not started:
                conn.hello()
            elif conn.state is c.State.READY and not started:
                started = True
                if action == "mail":
                    conn.send_envelope(env("b@example.net", "c@example.net"))
                elif action == "auth" and conn.extensions.auth:
                    conn.auth(LoginClient("u", "p"))
                elif action == "tls" and conn.extensions.starttls:
                    conn.starttls()
                else:
                    conn.quit()
            elif conn.state is c.State.CONTENT:
                conn.send_content(b"Subject: x\r\n\r\n.body\r\n")
                conn.end_content()
            conn.data_to_send()
        conn.receive_eof()
        for _ in range(50):
            if conn.next_event() is NEED_DATA:
                break
    except c.SMTPClientError:
        pass
