"""Submission and relaying over real sockets: ``pillarbox serve``, smtplib, swaks, msmtp.

One server (module scope) on free loopback ports, with plaintext logins on
loopback turned *off*, so that AUTH is offered only under TLS as in
production:

* submission with STARTTLS (RFC 6409) and with implicit TLS (RFC 8314),
  each SASL mechanism (PLAIN, LOGIN, SCRAM-SHA-256) through smtplib, swaks
  and msmtp;
* 535 5.7.8 for a wrong password (delayed), 454 4.7.0 once an address has
  failed too often, 530 5.7.0 for MAIL without a login;
* sender authorisation: own address, sub-address, alias, "send as" grant;
  a forged envelope sender or ``From:`` is 550 5.7.1 naming it;
* RFC 6409 §8: ``Date:`` and ``Message-ID:`` added on submission, not on port 25;
* port 25: unauthenticated clients only reach local recipients, every
  classic open-relay trick is refused; trusted networks and authenticated
  users relay (remote recipients wait in the queue).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Server, add_account, need_tool

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret"
FAILURE_DELAY = 0.3
MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")


def _cli(data_dir: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "-o", f"server.data_dir={data_dir}", *args],
        capture_output=True, text=True, check=True, cwd=data_dir.parent,
    ).stdout


# A port that refuses connections for as long as the tests run: bound, never listening.
_NOWHERE = socket.socket()
_NOWHERE.bind(("127.0.0.1", 0))
NOWHERE_PORT = _NOWHERE.getsockname()[1]


def _start(tmp: Path, name: str, options: dict[str, str] | None = None) -> Server:
    data_dir = tmp / name
    data_dir.mkdir()
    add_account(data_dir, ALICE, PASSWORD)
    add_account(data_dir, BOB, PASSWORD)
    _cli(data_dir, "alias", "add", "sales@example.test", ALICE)
    _cli(data_dir, "user", "send-as", ALICE, "boss@example.test")
    for attempt in range(3):
        server = Server(data_dir, {
            "auth.allow_plaintext_on_loopback": "false",
            "auth.failure_delay": f"{FAILURE_DELAY}s",
            "auth.max_failures_per_ip": "100",
            # Remote recipients go to a relay host that refuses connections, so
            # they wait in the queue (deferred) and no DNS query leaves this machine.
            "delivery.relay_host": f"127.0.0.1:{NOWHERE_PORT}",
            "delivery.relay_tls": "none",
            **(options or {}),
        })
        try:
            return server.start()
        except RuntimeError as exc:
            # Another process took one of the free ports meanwhile: new ports.
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            server.stop()
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = _start(tmp_path_factory.mktemp("submission"), "data")
    yield server
    server.stop()


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE    # the development self-signed certificate
    return ctx


def submission(server: Server, implicit: bool = False) -> smtplib.SMTP:
    """A client on the submission port (STARTTLS done) or the implicit-TLS port."""
    if implicit:
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", server.submissions_port,
                                                context=_context(), timeout=15)
        client.ehlo("client.test")
        return client
    client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=15)
    client.ehlo("client.test")
    client.starttls(context=_context())
    client.ehlo("client.test")
    return client


def mx(server: Server) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=15)
    client.ehlo("client.test")
    return client


class ScramClient:
    """SCRAM-SHA-256 client side (RFC 5802 §3, RFC 7677) as an smtplib authobject."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.bare = f"n={user},r={self.nonce}"
        self.server_signature = b""
        self.verified = False

    def __call__(self, challenge: bytes | None = None) -> str:
        if challenge is None:
            return "n,," + self.bare
        text = challenge.decode()
        if text.startswith("v="):
            self.verified = hmac.compare_digest(base64.b64decode(text[2:]),
                                                self.server_signature)
            return ""
        fields = dict(part.split("=", 1) for part in text.split(","))
        assert fields["r"].startswith(self.nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(),
                                     base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={fields['r']}"
        message = f"{self.bare},{text},{without_proof}".encode()
        signature = hmac.new(stored, message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, message, "sha256").digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}"


def login(client: smtplib.SMTP, mechanism: str, user: str = ALICE,
          password: str = PASSWORD) -> tuple[int, bytes]:
    if mechanism == "SCRAM-SHA-256":
        scram = ScramClient(user, password)
        code, text = client.auth("SCRAM-SHA-256", scram)
        assert scram.verified, "the server's signature did not verify"
        return code, text
    client.user, client.password = user, password
    auth: Callable[..., str] = (client.auth_plain if mechanism == "PLAIN"
                                else client.auth_login)
    return client.auth(mechanism, auth)


def message(sender: str, to: str, subject: str, *, headers: bool = False) -> bytes:
    extra = (f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
             f"Message-ID: <{subject}@client.test>\r\n") if headers else ""
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\n"
            f"Body of {subject}.\r\n").encode()


def wait_inbox(server: Server, address: str, subject: str, timeout: float = 15) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in server.inbox(address):
            if f"Subject: {subject}\r\n".encode() in msg:
                return msg
        time.sleep(0.05)
    raise AssertionError(f"{subject!r} not delivered to {address}")


def queued_recipients(server: Server) -> set[str]:
    return {r[0] for r in server.query("SELECT address FROM recipients")}


# ----------------------------------------------------------------- offering AUTH


def test_auth_offered_only_under_tls_and_mail_needs_it(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=15) as client:
        client.ehlo("client.test")
        assert "auth" not in client.esmtp_features and "starttls" in client.esmtp_features
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==")[0] == 538
        code, text = client.mail(ALICE)
        assert (code, text) == (530, b"5.7.0 Authentication required")
        client.starttls(context=_context())
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
        code, text = client.mail(ALICE)
        assert code == 530, text          # still not logged in
    with submission(server, implicit=True) as client:
        assert client.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
        assert "starttls" not in client.esmtp_features
        assert client.mail(ALICE)[0] == 530
    with mx(server) as client:   # port 25: AUTH too, but only under TLS
        assert "auth" not in client.esmtp_features
        client.starttls(context=_context())
        client.ehlo("client.test")
        assert "auth" in client.esmtp_features


# ------------------------------------------------------- each mechanism, both ports


@pytest.mark.parametrize("implicit", [False, True], ids=["587-starttls", "465-implicit"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_submission_with_each_mechanism(server: Server, mechanism: str, implicit: bool) -> None:
    subject = f"smtplib-{mechanism}-{'465' if implicit else '587'}"
    with submission(server, implicit) as client:
        assert login(client, mechanism) == (235, b"2.7.0 Authentication successful")
        client.sendmail(ALICE, [BOB, "carol@remote.example"], message(ALICE, BOB, subject))
    got = wait_inbox(server, BOB, subject)
    # RFC 6409 8.2 and 8.3: what the client left out is added.
    assert re.search(rb"\r\nDate: [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} ", got), got
    assert re.search(rb"\r\nMessage-ID: <[^@>]+@mx\.test>\r\n", got), got
    assert b"with ESMTPSA id" in got         # RFC 3848: authenticated, under TLS
    assert "carol@remote.example" in queued_recipients(server)   # relayed: waits for delivery
    log = server.log()
    assert re.search(rf"login client=127\.0\.0\.1 account={re.escape(ALICE)} "
                     rf"protocol=submission mechanism={mechanism} result=ok", log), log


def test_headers_the_client_wrote_are_kept(server: Server) -> None:
    with submission(server) as client:
        login(client, "PLAIN")
        client.sendmail(ALICE, [BOB], message(ALICE, BOB, "kept", headers=True))
    got = wait_inbox(server, BOB, "kept")
    assert got.count(b"\r\nDate: ") == 1 and b"Date: Tue, 01 Dec 2026 10:00:00 +0000" in got
    assert got.count(b"\r\nMessage-ID: ") == 1 and b"Message-ID: <kept@client.test>" in got


def test_port_25_adds_no_headers(server: Server) -> None:
    with mx(server) as client:
        client.sendmail("someone@elsewhere.example", [BOB],
                        message("someone@elsewhere.example", BOB, "mx-no-fix"))
    got = wait_inbox(server, BOB, "mx-no-fix")
    assert b"\r\nDate:" not in got and b"\r\nMessage-ID:" not in got


# ------------------------------------------------------------------ failures


def test_wrong_password_is_535_and_slowed(server: Server) -> None:
    for mechanism in MECHANISMS:
        with submission(server) as client:
            started = time.monotonic()
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                login(client, mechanism, password="wrong") if mechanism != "SCRAM-SHA-256" \
                    else client.auth("SCRAM-SHA-256", ScramClient(ALICE, "wrong"))
            assert time.monotonic() - started >= FAILURE_DELAY * 0.9
            assert info.value.smtp_code == 535
            assert info.value.smtp_error.startswith(b"5.7.8 ")
            # The session goes on; the client may try again, or not log in at all.
            assert client.mail(ALICE)[0] == 530
    with submission(server) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            login(client, "PLAIN", user="nobody@example.test")
        assert info.value.smtp_code == 535   # an unknown user looks like a wrong password
    assert re.search(r"login client=127\.0\.0\.1 account=alice@example\.test protocol=submission"
                     r" mechanism=PLAIN result=failed reason=\"wrong password\"", server.log())


def test_auth_exchange_rules(server: Server) -> None:
    with submission(server) as client:
        assert client.docmd("AUTH", "CRAM-MD5")[0] == 504
        assert client.docmd("AUTH", "PLAIN") == (334, b"")      # empty challenge (RFC 4616)
        assert client.docmd("*") == (501, b"5.7.0 Authentication cancelled by the client")
        assert client.docmd("AUTH", "PLAIN !!!notbase64")[0] == 501
        assert login(client, "PLAIN")[0] == 235
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
        assert code == 503 and b"Already authenticated" in text
    with submission(server) as client:
        login(client, "LOGIN")
        assert client.mail(ALICE)[0] == 250
        # Not during a mail transaction (RFC 4954 4): already logged in here, but
        # the sequence rule comes first.
        assert client.docmd("AUTH", "PLAIN =")[0] == 503


def test_failures_per_address_are_limited(tmp_path: Path) -> None:
    server = _start(tmp_path, "limited", {"auth.max_failures_per_ip": "2"})
    try:
        for _ in range(2):
            with submission(server) as client:
                with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                    login(client, "PLAIN", password="wrong")
                assert info.value.smtp_code == 535
        with submission(server) as client:   # now even the right password is refused
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                login(client, "PLAIN")
            assert info.value.smtp_code == 454 and info.value.smtp_error.startswith(b"4.7.0")
    finally:
        server.stop()


# ------------------------------------------------------------ whose addresses


@pytest.mark.parametrize("sender", [ALICE, "Alice@Example.TEST", "alice+lists@example.test",
                                    "sales@example.test", "boss@example.test"])
def test_own_addresses_may_be_used(server: Server, sender: str) -> None:
    subject = "own-" + re.sub(r"\W", "-", sender)
    with submission(server) as client:
        login(client, "PLAIN")
        client.sendmail(sender, [BOB], message(f"Alice <{sender}>", BOB, subject))
    wait_inbox(server, BOB, subject)


@pytest.mark.parametrize("sender", [BOB, "bob+x@example.test", "ceo@example.test",
                                    "alice@elsewhere.example", "alice@[127.0.0.1]"])
def test_forged_envelope_sender_is_550(server: Server, sender: str) -> None:
    with submission(server) as client:
        login(client, "PLAIN")
        code, text = client.mail(sender)
        assert code == 550 and text.startswith(b"5.7.1 "), text
        assert f"<{sender}>".encode() in text


@pytest.mark.parametrize("header", [f"Bob <{BOB}>", f"{ALICE}, {BOB}", "Eve <eve@remote.example>",
                                    "undisclosed-recipients:;, x@y"])
def test_forged_from_is_550_at_end_of_data(server: Server, header: str) -> None:
    with submission(server) as client:
        login(client, "SCRAM-SHA-256")
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(ALICE, [BOB], message(header, BOB, "forged-from"))
        assert info.value.smtp_code == 550 and info.value.smtp_error.startswith(b"5.7.1 From: ")
        assert b"is not one of the addresses alice@example.test may send as" in \
            info.value.smtp_error
    assert not any(b"Subject: forged-from" in m for m in server.inbox(BOB))


def test_send_as_grant_can_be_revoked(tmp_path: Path) -> None:
    server = _start(tmp_path, "grants")
    try:
        _cli(server.data_dir, "user", "send-as", ALICE, "boss@example.test", "--remove")
        time.sleep(1.1)   # the grant may still be cached for a second
        with submission(server) as client:
            login(client, "PLAIN")
            assert client.mail("boss@example.test")[0] == 550
    finally:
        server.stop()


# ---------------------------------------------------------------- relay policy


def test_unauthenticated_port_25_only_reaches_local_recipients(server: Server) -> None:
    with mx(server) as client:
        client.mail("someone@elsewhere.example")
        assert client.rcpt(BOB)[0] == 250
        assert client.rcpt("carol@remote.example") == (554, b"5.7.1 Relay access denied")


# The classic tests of open-relay checkers, for local domain example.test and mx.test.
RELAY_TRICKS = [
    "carol@remote.example",                    # plain relaying
    "carol%remote.example@example.test",       # percent hack
    "remote.example!carol@example.test",       # bang path
    '"carol@remote.example"@example.test',     # quoted @
    '"carol%remote.example"@example.test',
    '"remote.example!carol"@example.test',
    "@example.test:carol@remote.example",      # source route to elsewhere
    "@remote.example,@example.test:bob@example.test",   # source route through us
    "carol@[192.0.2.1]",                       # an IP literal that is not ours
    "carol@[IPv6:2001:db8::1]",
    "carol@example.test.remote.example",       # our domain as a prefix
    "carol@remote.example.test",               # ... and as a suffix of another
    "carol@remote.example@example.test",       # two @
    "carol@example.test.",                     # trailing dot
    "carol@remote.example.",
]


@pytest.mark.parametrize("recipient", RELAY_TRICKS)
def test_open_relay_tricks_are_refused_on_port_25(server: Server, recipient: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        f = sock.makefile("rwb")

        def command(line: str) -> bytes:
            f.write(line.encode() + b"\r\n")
            f.flush()
            while True:
                reply = f.readline()
                if reply[3:4] != b"-":
                    return reply

        assert f.readline().startswith(b"220")
        command("EHLO relaytest.example")
        assert command("MAIL FROM:<spammer@remote.example>").startswith(b"250")
        reply = command(f"RCPT TO:<{recipient}>")
        assert reply[:1] == b"5", reply      # 554 5.7.1, or 501 for what is no address
        assert reply.startswith((b"554 5.7.1 Relay access denied", b"501 5.1.3",
                                 b"550 5.1.1")), reply
        command("QUIT")


def test_our_own_address_literal_is_local(server: Server) -> None:
    with mx(server) as client:
        client.mail("someone@elsewhere.example")
        # RFC 5321 4.1.3: user@[our address] is for this host: a user of a local domain.
        assert client.rcpt("alice@[127.0.0.1]")[0] == 250
        assert client.rcpt("nobody@[127.0.0.1]")[0] == 550
        assert client.rcpt("alice@[127.0.0.2]")[0] == 554   # loopback, but not where we listen


def test_trusted_network_relays_without_login(tmp_path: Path) -> None:
    server = _start(tmp_path, "trusted", {"smtp.trusted_networks": "127.0.0.0/8,::1/128"})
    try:
        with mx(server) as client:
            client.sendmail("app@example.test", ["dave@remote.example", BOB],
                            message("app@example.test", "dave@remote.example", "trusted"))
        assert "dave@remote.example" in queued_recipients(server)
        wait_inbox(server, BOB, "trusted")
        with submission(server) as client:    # submission still wants a login
            assert client.mail(ALICE)[0] == 530
    finally:
        server.stop()


def test_bad_trusted_network_is_a_config_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pillarbox", "-o", f"server.data_dir={tmp_path}/d",
         "-o", "smtp.trusted_networks=127.0.0.1/8", "serve"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "smtp.trusted_networks" in result.stderr and "host bits set" in result.stderr


def test_authenticated_client_relays_on_port_25(server: Server) -> None:
    with mx(server) as client:
        client.starttls(context=_context())
        client.ehlo("client.test")
        assert login(client, "PLAIN")[0] == 235
        client.sendmail(ALICE, ["erin@remote.example"],
                        message(ALICE, "erin@remote.example", "mx-auth"))
        assert client.mail(BOB)[0] == 550    # the sender rules hold on port 25 too
    assert "erin@remote.example" in queued_recipients(server)
    assert re.search(r"login client=127\.0\.0\.1 account=alice@example\.test protocol=smtp "
                     r"mechanism=PLAIN result=ok", server.log())


# ---------------------------------------------------------------- real clients


def _swaks(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    swaks = need_tool("swaks")
    return subprocess.run([swaks, "--server", "127.0.0.1", "--helo", "client.test",
                           "--from", ALICE, "--to", BOB, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("implicit", [False, True], ids=["587-starttls", "465-implicit"])
def test_swaks_auth(server: Server, mechanism: str, implicit: bool) -> None:
    subject = f"swaks-{mechanism}-{implicit}"
    tls = ["--port", str(server.submissions_port), "--tlsc"] if implicit else \
        ["--port", str(server.submission_port), "--tls"]
    result = _swaks(server, *tls, "--auth", mechanism, "--auth-user", ALICE,
                    "--auth-password", PASSWORD, "--header", f"Subject: {subject}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    wait_inbox(server, BOB, subject)


def test_swaks_wrong_password_and_forged_sender(server: Server) -> None:
    result = _swaks(server, "--port", str(server.submission_port), "--tls", "--auth", "PLAIN",
                    "--auth-user", ALICE, "--auth-password", "wrong")
    assert result.returncode != 0 and "535 5.7.8" in result.stdout, result.stdout
    result = _swaks(server, "--port", str(server.submission_port), "--tls", "--auth", "LOGIN",
                    "--auth-user", ALICE, "--auth-password", PASSWORD,
                    "--from", "ceo@example.test")
    assert result.returncode != 0 and "550 5.7.1" in result.stdout, result.stdout
    assert "<ceo@example.test>" in result.stdout


@pytest.mark.parametrize("mechanism", ["plain", "login", "scram-sha-256"])
@pytest.mark.parametrize("implicit", [False, True], ids=["587-starttls", "465-implicit"])
def test_msmtp(server: Server, tmp_path: Path, mechanism: str, implicit: bool) -> None:
    msmtp = need_tool("msmtp")
    port = server.submissions_port if implicit else server.submission_port
    config = tmp_path / "msmtprc"
    config.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {port}\n"
        "domain client.test\n"
        "tls on\n"
        f"tls_starttls {'off' if implicit else 'on'}\n"
        "tls_certcheck off\n"
        f"auth {mechanism}\n"
        f"user {ALICE}\n"
        f"password {PASSWORD}\n"
        f"from {ALICE}\n"
    )
    os.chmod(config, 0o600)
    subject = f"msmtp-{mechanism}-{implicit}"
    result = subprocess.run(
        [msmtp, "-C", str(config), BOB],
        input=message(ALICE, BOB, subject).decode(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_inbox(server, BOB, subject)


def test_plaintext_auth_on_loopback_when_allowed(tmp_path: Path) -> None:
    """The development default (auth.allow_plaintext_on_loopback): AUTH without TLS."""
    server = _start(tmp_path, "plain", {"auth.allow_plaintext_on_loopback": "true"})
    try:
        with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=15) as client:
            client.ehlo("client.test")
            assert client.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
            assert login(client, "PLAIN")[0] == 235
            client.sendmail(ALICE, [BOB], message(ALICE, BOB, "plain-loopback"))
        wait_inbox(server, BOB, "plain-loopback")
    finally:
        server.stop()


@pytest.mark.parametrize("port", ["submission_port", "port"])
def test_first_command_behind_the_starttls_handshake_is_answered(server: Server,
                                                                 port: str) -> None:
    from tests.integration.test_starttls_race import _tls_with_command

    got = _tls_with_command(getattr(server, port), b"\r\n", b"STARTTLS\r\n", b"220 2.0.0",
                            b"EHLO client.test\r\n", b"250 HELP")
    assert b"250-AUTH SCRAM-SHA-256 PLAIN LOGIN" in got
