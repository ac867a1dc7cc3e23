"""REQUIRETLS end to end (RFC 8689): a user submits with ``MAIL FROM:<…>
REQUIRETLS`` over STARTTLS to a real ``pillarbox serve``, which delivers to
``remote.test`` through its real queue manager and remote delivery.

The DNS of ``remote.test`` comes from a stand-in validating resolver on
127.0.0.1 (it sets the AD bit: the MX records are DNSSEC-validated), given to
the sender as ``delivery.dane_resolver`` and ``dns.nameservers``; the MX
host ``mx.remote.test`` is 127.0.0.1 at ``delivery.remote_port``, its
certificate trusted through ``delivery.tls_ca_file``.  Two MX servers:

- a second Pillarbox with a certificate for ``mx.remote.test``: it offers
  REQUIRETLS under TLS, so the message is delivered, tagged there too;
- the SMTP server core on asyncio (``CorePeer``) with the same certificate,
  without REQUIRETLS in its EHLO: the sender gets a failure report (5.7.30)
  at once, and the message never reaches that server.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from pillarbox.net.tls import ensure_self_signed, server_context
from tests.conftest import Server
from tests.integration.test_remote_delivery import CorePeer

ALICE = "alice@example.test"
BOB = "bob@remote.test"
PASSWORD = "secret"
MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\n"
           b"Subject: the contract\r\nMessage-ID: <contract-1@example.test>\r\n\r\n"
           b"Signed copy attached.\r\n")


class ValidatingStandIn:
    """A DNS responder on 127.0.0.1 (UDP, its own thread) that answers for
    remote.test with the AD bit set, as a validating resolver does for a signed
    zone; everything else is NXDOMAIN, also with AD (a validated denial)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.records = {
            ("remote.test", "MX"): ["remote.test. 60 IN MX 10 mx.remote.test."],
            ("mx.remote.test", "A"): ["mx.remote.test. 60 IN A 127.0.0.1"],
            ("mx.remote.test", "AAAA"): [],
        }
        self.asked: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - not DNS: ignore it
                continue
            q = query.question[0]
            name = q.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(q.rdtype)
            self.asked.append((name, rdtype))
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AD
            records = self.records.get((name, rdtype))
            if records is None:
                known = any(n == name for n, _ in self.records)
                reply.set_rcode(dns.rcode.NOERROR if known else dns.rcode.NXDOMAIN)
            for text in records or ():
                owner, ttl, rdclass, rrtype, rdata = text.split(None, 4)
                reply.answer.append(dns.rrset.from_text(owner, int(ttl), rdclass, rrtype, rdata))
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class PeerThread:
    """``CorePeer`` (the server core without REQUIRETLS) on a loop of its own."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.peer = asyncio.run_coroutine_threadsafe(
            CorePeer(starttls=server_context(cert, key), without=("REQUIRETLS",)).start(),
            self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.peer.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def dns_standin() -> Iterator[ValidatingStandIn]:
    standin = ValidatingStandIn()
    yield standin
    standin.close()


@pytest.fixture
def mx_cert(tmp_path: Path) -> tuple[Path, Path]:
    return ensure_self_signed(tmp_path / "mx-tls", "mx.remote.test")


def sender(server_factory, standin: ValidatingStandIn, mx_port: int,  # type: ignore[no-untyped-def]
           ca: Path) -> Server:
    server: Server = server_factory({
        "server.hostname": "mail.example.test",
        "log.format": "json",
        "dns.nameservers": standin.address,
        "delivery.dane_resolver": standin.address,
        "delivery.remote_port": str(mx_port),
        "delivery.tls_ca_file": str(ca),
        "delivery.connect_timeout": "3s",
        "auth.allow_plaintext_on_loopback": "false",
    }, accounts=(ALICE,), name="sender")     # password "secret" (tests/conftest.py)
    return server


def start_mx(server_factory, cert: Path, key: Path) -> Server:  # type: ignore[no-untyped-def]
    mx: Server = server_factory({
        "server.hostname": "mx.remote.test",
        "log.format": "json",
        "tls.certificate": str(cert),
        "tls.private_key": str(key),
    }, accounts=(BOB,), name="mx")
    return mx


def submit(server: Server, options: list[str]) -> None:
    """Submission over STARTTLS with AUTH, MAIL FROM … ``options``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:   # port 25, plaintext
        client.ehlo("other.example.test")
        assert not client.has_extn("requiretls")         # not before TLS (RFC 8689 2)
        code, reply = client.mail("x@other.example.test", ["REQUIRETLS"])
        assert code == 530 and reply.startswith(b"5.7.10 "), reply
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=20) as client:
        client.ehlo("laptop.example.test")
        assert not client.has_extn("requiretls")
        client.starttls(context=context)
        client.ehlo("laptop.example.test")
        assert client.has_extn("requiretls")
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, [BOB], MESSAGE, mail_options=options) == {}


def log_events(server: Server, event: str) -> list[dict[str, object]]:
    out = []
    for line in server.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            out.append(record)
    return out


def wait_for(what, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = what()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_requiretls_to_an_mx_that_offers_it_is_delivered(  # type: ignore[no-untyped-def]
        server_factory, dns_standin: ValidatingStandIn, mx_cert: tuple[Path, Path]) -> None:
    mx = start_mx(server_factory, *mx_cert)
    out = sender(server_factory, dns_standin, mx.port, mx_cert[0])
    submit(out, ["REQUIRETLS"])
    found = wait_for(lambda: mx.inbox(BOB))
    assert len(found) == 1, out.log()
    delivered = email.message_from_bytes(found[0], policy=email.policy.compat32)
    assert delivered["Subject"] == "the contract"
    # The sender tagged it, and the MX took it with MAIL FROM … REQUIRETLS under
    # TLS and tagged it in turn (RFC 8689 4.1).
    assert [e.get("requiretls") for e in log_events(out, "queued")] == ["yes"]
    [queued] = log_events(mx, "queued")
    assert queued["requiretls"] == "yes" and queued.get("tls")
    [attempt] = [e for e in log_events(out, "attempt") if e.get("result") == "delivered"]
    assert str(attempt["tls"]).endswith(" verified") and attempt["mx"] == "mx.remote.test"
    assert ("remote.test", "MX") in dns_standin.asked     # of the validating resolver
    assert out.inbox(ALICE) == []                          # no report


def test_requiretls_to_an_mx_without_it_bounces_with_5_7_30(  # type: ignore[no-untyped-def]
        server_factory, dns_standin: ValidatingStandIn, mx_cert: tuple[Path, Path]) -> None:
    peer = PeerThread(*mx_cert)
    try:
        out = sender(server_factory, dns_standin, peer.peer.port, mx_cert[0])
        submit(out, ["REQUIRETLS"])
        reports = wait_for(lambda: out.inbox(ALICE))
        assert len(reports) == 1, out.log()
        assert peer.peer.messages == []             # never sent there
        assert peer.peer.tls_sessions >= 1          # it got as far as verified TLS
    finally:
        peer.close()
    dsn = email.message_from_bytes(reports[0], policy=email.policy.compat32)
    assert dsn["Return-Path"] == "<>" and dsn["To"] == ALICE
    words, status, _ = dsn.get_payload()
    [block] = status.get_payload()[1:]
    assert block["Final-Recipient"] == f"rfc822;{BOB}"
    assert (block["Action"], block["Status"]) == ("failed", "5.7.30")
    reply = block["Diagnostic-Code"].removeprefix("smtp;").strip()
    assert reply.startswith("550 5.7.30 REQUIRETLS support required: mx.remote.test[127.0.0.1]:")
    text = words.get_payload(decode=True).decode()
    assert "asked for REQUIRETLS (RFC 8689)" in text
    # Not a retry: bounced at the first attempt, and the queue is empty.
    [failed] = log_events(out, "failed")
    assert (failed["status"], failed["dsn"], failed["to"]) == ("bounced", "5.7.30", BOB)
    assert out.query("SELECT count(*) FROM queue") == [(0,)]
