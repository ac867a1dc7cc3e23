"""Real clients over real sockets: smtplib, aiosmtplib, swaks, and raw sockets."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import subprocess
from email.message import EmailMessage
from email.policy import SMTP

import aiosmtplib

from tests.conftest import need_tool

ALICE = "alice@example.test"


def _message(to: str = ALICE, subject: str = "hello", body: str = "Hi Alice.\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "bob@sender.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def _tls_client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the development defaults' self-signed certificate
    return ctx


def test_smtplib_delivers_with_trace_headers(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        code, ext = client.ehlo("client.test")
        assert code == 250
        for keyword in ("pipelining", "8bitmime", "smtputf8", "size", "enhancedstatuscodes",
                        "chunking", "dsn", "starttls"):
            assert client.has_extn(keyword), keyword
        refused = client.send_message(_message(), from_addr="bob@sender.test", to_addrs=[ALICE])
        assert refused == {}
    assert server.wait_delivered(1) == 1
    (stored,) = server.inbox(ALICE)
    head = stored.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"Return-Path: <bob@sender.test>"
    assert lines[1] == b"Delivered-To: alice@example.test"
    assert lines[2].startswith(b"Received: from client.test ([127.0.0.1])")
    assert b"by mx.test (Pillarbox) with ESMTP id " in head
    assert b"for <alice@example.test>;" in head
    assert stored.endswith(b"Hi Alice.\r\n")


def test_smtplib_starttls_and_sub_address(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=_tls_client_context())
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # not offered twice (RFC 3207 4.2)
        client.send_message(_message("alice+news@example.test"), "bob@sender.test",
                            ["alice+news@example.test"])
    server.wait_delivered(1)
    (stored,) = server.inbox(ALICE)
    assert b"with ESMTPS id" in stored
    assert b"(using TLSv1.3 with cipher" in stored
    assert b"Delivered-To: alice+news@example.test" in stored


def test_unknown_recipient_and_relay_are_refused_at_rcpt(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("bob@sender.test")
        code, text = client.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt("someone@elsewhere.test")
        assert (code, text[:5]) == (554, b"5.7.1")
        code, _ = client.rcpt(ALICE)
        assert code == 250
        code, _ = client.data(_message().as_bytes(policy=SMTP))
        assert code == 250
    assert server.wait_delivered(1) == 1


def test_aiosmtplib_smtputf8_and_8bitmime(server_factory):
    server = server_factory(accounts=("jörg@example.test",))
    body = "Grüße aus Köln – ünïcödé\n"

    async def send() -> None:
        msg = _message("jörg@example.test", subject="Grüße", body=body)
        msg.replace_header("From", "björn@sender.test")
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=server.port, start_tls=False, local_hostname="client.test"
        )
        await client.connect()
        errors, _ = await client.send_message(
            msg, sender="björn@sender.test", recipients=["jörg@example.test"],
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
        assert errors == {}
        await client.quit()

    asyncio.run(send())
    server.wait_delivered(1)
    (stored,) = server.inbox("jörg@example.test")
    assert "Return-Path: <björn@sender.test>".encode() in stored
    assert b"with UTF8SMTP id" in stored
    assert "Grüße".encode() in stored


def test_aiosmtplib_starttls(server):
    async def send() -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=server.port, start_tls=True,
            tls_context=_tls_client_context(),
        )
        await client.connect()
        await client.send_message(_message(), sender="bob@sender.test", recipients=[ALICE])
        await client.quit()

    asyncio.run(send())
    assert server.wait_delivered(1) == 1


def _swaks(server, *args: str) -> subprocess.CompletedProcess[str]:
    swaks = need_tool("swaks")
    return subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.port}", "--from", "bob@sender.test",
         "--to", ALICE, "--helo", "client.test", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_swaks_plain_starttls_pipelining(server):
    assert _swaks(server).returncode == 0
    tls = _swaks(server, "--tls")
    assert tls.returncode == 0, tls.stdout + tls.stderr
    assert "TLS started" in tls.stdout
    piped = _swaks(server, "--pipeline")
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert "<~  250 2.0.0 Ok: queued as" in piped.stdout or "<** " not in piped.stdout
    both = _swaks(server, "--tls", "--pipeline")
    assert both.returncode == 0, both.stdout + both.stderr
    assert server.wait_delivered(4) == 4


def test_swaks_8bit_body(server, tmp_path):
    data = tmp_path / "msg.eml"
    data.write_bytes(
        "From: bob@sender.test\r\nTo: alice@example.test\r\nSubject: 8bit\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Ça marche très bien.\r\n".encode()
    )
    result = _swaks(server, "--data", str(data))
    assert result.returncode == 0, result.stdout
    server.wait_delivered(1)
    assert "Ça marche très bien.".encode() in server.inbox(ALICE)[0]


class Raw:
    """A line-level client, for what libraries will not send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        assert self.reply()[0] == 220

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def cmd(self, line: bytes) -> tuple[int, list[bytes]]:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def test_chunking_over_the_wire(server):
    c = Raw(server.port)
    assert c.cmd(b"EHLO client.test")[0] == 250
    assert c.cmd(b"MAIL FROM:<bob@sender.test> BODY=8BITMIME")[0] == 250
    assert c.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    part1 = b"Subject: chunked\r\n\r\nfirst part, "
    part2 = b"second part.\r\n"
    c.send(b"BDAT %d\r\n" % len(part1) + part1)
    code, lines = c.reply()
    assert code == 250 and lines[0].startswith(b"250 2.0.0")
    c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    code, lines = c.reply()
    assert code == 250 and b"queued as" in lines[0]
    assert c.cmd(b"QUIT")[0] == 221
    server.wait_delivered(1)
    assert server.inbox(ALICE)[0].endswith(b"first part, second part.\r\n")


def test_pipelined_transaction_in_one_write(server):
    c = Raw(server.port)
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<bob@sender.test>\r\nRCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<alice@example.test>\r\nDATA\r\n"
    )
    assert [c.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
    c.send(b"Subject: piped\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
    assert c.reply()[0] == 250
    assert c.reply()[0] == 221
    server.wait_delivered(1)
    assert server.inbox(ALICE)[0].endswith(b"\r\n\r\n.leading dot\r\n")


def test_smuggling_bare_lf_is_never_delivered(server):
    c = Raw(server.port)
    assert c.cmd(b"EHLO client.test")[0] == 250
    assert c.cmd(b"MAIL FROM:<bob@sender.test>")[0] == 250
    assert c.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert c.cmd(b"DATA")[0] == 354
    # A smuggled second transaction behind "\n.\r\n": must not end DATA.
    c.send(
        b"Subject: one\r\n\r\nbody\n.\r\nMAIL FROM:<evil@sender.test>\r\n"
        b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
    )
    code, lines = c.reply()
    assert code == 550 and lines[0].startswith(b"550 5.6.0"), lines
    assert c.cmd(b"QUIT")[0] == 221
    assert server.wait_delivered(1, timeout=2) == 0


def test_size_limit_while_streaming(server_factory):
    server = server_factory({"smtp.max_message_size": "10k"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("client.test")
        assert "10240" in client.esmtp_features["size"]
        code, _ = client.mail("bob@sender.test", ["SIZE=20000"])
        assert code == 552
        client.rset()
        client.mail("bob@sender.test")
        client.rcpt(ALICE)
        code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 200)
        assert (code, text[:5]) == (552, b"5.3.4")
    assert server.wait_delivered(1, timeout=1) == 0


def test_mail_loop_refused(server):
    headers = b"".join(b"Received: from hop%d.test by hop.test; now\r\n" % i for i in range(60))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("bob@sender.test")
        client.rcpt(ALICE)
        code, text = client.data(headers + b"Subject: loop\r\n\r\nbody\r\n")
        assert (code, text[:5]) == (554, b"5.4.6")


def test_connection_limit_per_address(server_factory):
    server = server_factory({"smtp.max_connections_per_ip": "3"})
    held = [Raw(server.port) for _ in range(3)]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    data = sock.recv(200)
    assert data.startswith(b"421 4.7.0"), data
    sock.close()
    for c in held:
        c.close()


def test_too_many_errors_disconnects(server_factory):
    server = server_factory({"smtp.max_errors": "3"})
    c = Raw(server.port)
    assert c.cmd(b"BOGUS")[0] == 500
    assert c.cmd(b"BOGUS")[0] == 500
    code, lines = c.cmd(b"BOGUS")
    assert code == 500
    code, lines = c.reply()
    assert code == 421 and lines[0].startswith(b"421 4.7.0")
    assert c.sock.recv(10) == b""


def test_command_timeout(server_factory):
    server = server_factory({"smtp.command_timeout": "1"})
    c = Raw(server.port)
    code, lines = c.reply()
    assert code == 421 and lines[0].startswith(b"421 4.4.2")


def test_starttls_discards_pipelined_plaintext(server):
    c = Raw(server.port)
    assert c.cmd(b"EHLO client.test")[0] == 250
    # The injected MAIL must not be executed after the handshake (RFC 3207 6).
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@sender.test>\r\n")
    assert c.reply()[0] == 220
    tls_sock = _tls_client_context().wrap_socket(c.sock, server_hostname="mx.test")
    tls_sock.sendall(b"EHLO client.test\r\n")
    data = b""
    while not data.endswith(b"250 HELP\r\n"):
        data += tls_sock.recv(4096)
    tls_sock.sendall(b"RCPT TO:<alice@example.test>\r\n")
    reply = tls_sock.recv(4096)
    assert reply.startswith(b"503 5.5.1"), reply  # no MAIL was ever accepted
    tls_sock.close()


def test_connection_limit_in_total(server_factory):
    server = server_factory({"smtp.max_connections": "2"})
    held = [Raw(server.port) for _ in range(2)]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    data = sock.recv(200)
    assert data.startswith(b"421 4.7.0 Too many connections"), data
    sock.close()
    held[0].close()
    # A slot is free again once a session ends.
    deadline = 50
    while deadline:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if sock.recv(200).startswith(b"220"):
            sock.close()
            break
        sock.close()
        deadline -= 1
    assert deadline, "the freed connection slot was never given back"
    held[1].close()


PERL_BDAT = r"""
use strict;
use warnings;
use Net::SMTP;
my ($port) = @ARGV;
my $smtp = Net::SMTP->new("127.0.0.1", Port => $port, Hello => "perl.test", Timeout => 10)
    or die "connect: $@";
$smtp->starttls(SSL_verify_mode => 0) or die "starttls: " . $smtp->message;
$smtp->supports("CHUNKING") or die "no CHUNKING after STARTTLS";
$smtp->mail('bob@sender.test', Bits => 8) or die "mail: " . $smtp->message;
$smtp->to('alice@example.test') or die "rcpt: " . $smtp->message;
# Net::SMTP turns BDAT on only with BODY=BINARYMIME, which Pillarbox does not
# offer; RFC 3030 allows BDAT for any body, so switch its own BDAT on.
${*$smtp}{'net_smtp_chunking'} = 1;
$smtp->bdat("Subject: via BDAT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    or die "bdat: " . $smtp->message;
$smtp->bdat("first chunk, \xc3\xa9t\xc3\xa9\r\n.\r\n") or die "bdat: " . $smtp->message;
$smtp->bdatlast("last chunk.\r\n") or die "bdatlast: " . $smtp->message;
print $smtp->message;
$smtp->quit;
"""


def test_perl_net_smtp_chunking_over_starttls(server, tmp_path):
    perl = need_tool("perl")
    check = subprocess.run([perl, "-MNet::SMTP", "-MIO::Socket::SSL", "-e", "1"],
                           capture_output=True)
    if check.returncode != 0:
        need_tool("perl-IO-Socket-SSL-for-Net::SMTP")  # skips, or fails under CI
    script = tmp_path / "bdat.pl"
    script.write_text(PERL_BDAT)
    result = subprocess.run([perl, str(script), str(server.port)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "queued as" in result.stdout
    server.wait_delivered(1)
    (stored,) = server.inbox(ALICE)
    assert b"with ESMTPS id" in stored
    assert stored.endswith(
        "Subject: via BDAT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "first chunk, été\r\n.\r\nlast chunk.\r\n".encode()
    )


def test_ipv6_listener_and_received_literal(server_factory):
    from tests.conftest import free_port

    v6 = socket.socket(socket.AF_INET6)
    try:
        v6.bind(("::1", 0))
        port6 = v6.getsockname()[1]
    except OSError:
        v6.close()
        need_tool("an IPv6 loopback (::1)")  # skips, or fails under CI
    v6.close()
    port4 = free_port()
    server = server_factory({"smtp.listen": f"127.0.0.1:{port4},[::1]:{port6}"}, start=False)
    server.port = port4
    server.start()
    with smtplib.SMTP("::1", port6, timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail("bob@sender.test", [ALICE], b"Subject: v6\r\n\r\nover IPv6\r\n")
    server.wait_delivered(1)
    (stored,) = server.inbox(ALICE)
    assert b"Received: from client.test ([IPv6:::1])" in stored
