"""An alias that forwards to another domain, end to end (RFC 8617 §5.1, SRS).

A real ``pillarbox serve`` for ``example.test`` asks dnsmasq (on loopback) for
SPF, DKIM and DMARC while mail arrives on its SMTP port.  ``fwd@example.test``
is an alias of a local account and of ``carol@remote.test``, whose MX
(``mx.remote.test``, 127.0.0.1 in the test DNS) is an SMTP sink on loopback
(the server core on asyncio, ``CorePeer``) at ``delivery.remote_port``.

A message signed by dkimpy for ``signer.test`` is sent to the alias; the sink
gets a copy whose envelope sender is an SRS0 address of ``example.test`` and
whose ARC chain, sealed with ``example.test``'s RSA key made by ``pillarbox
dkim keygen``, validates ``arc=pass`` by dkimpy's ARC verifier and by ours;
the author's DKIM signature still verifies.  A bounce to that SRS0 address is
reversed to the original sender (whose MX is the sink too), and a forged one
is refused with 550 5.1.1.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.resolver
import pytest

from pillarbox.admin import commands
from pillarbox.admin.dkim import generate
from pillarbox.policy.arc.chain import ChainStatus
from pillarbox.policy.arc.validate import validate
from pillarbox.policy.dns import DNSResolver
from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys
from pillarbox.store.sqlite.store import SQLiteStore
from tests.conftest import Server
from tests.dnsserver import DNSServer, dkim_test_key, dnsmasq
from tests.integration.test_remote_delivery import CorePeer, Received

HOST = "mx.example.test"
SENDER = "bob@sender.test"


AUTHOR_KEY, AUTHOR_PUBLIC = dkim_test_key()


class Sink:
    """``CorePeer`` on an event loop of its own thread: takes every message."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.peer = asyncio.run_coroutine_threadsafe(CorePeer().start(), self.loop).result(10)

    def wait(self, n: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.peer.messages) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return list(self.peer.messages)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.peer.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def _dnsmasq_txt(zone_line: str) -> str:
    """A ``pillarbox dkim keygen`` zone-file line as a dnsmasq ``txt-record``."""
    name = zone_line.split()[0].rstrip(".")
    strings = re.findall(r'"([^"]*)"', zone_line)
    return f"txt-record={name}," + ",".join(f'"{s}"' for s in strings)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


@pytest.fixture
def forwarder(server_factory, sink: Sink, tmp_path: Path) -> Iterator[tuple[Server, DNSServer]]:  # type: ignore[no-untyped-def]
    server: Server = server_factory({
        "server.hostname": HOST, "policy.spf": "tag", "policy.dmarc": "enforce",
        "delivery.remote_port": str(sink.peer.port), "delivery.connect_timeout": "3s",
        "log.format": "json",
    }, accounts=("alice@example.test",), start=False)
    store = SQLiteStore(server.data_dir).open()
    try:
        # RSA-2048 and Ed25519 as `pillarbox dkim keygen example.test --activate`
        # makes them; ARC seals with the RSA one.
        made = generate(SQLiteDKIMKeys(store), server.data_dir, "example.test", activate=True)
        commands.add_alias(store, "fwd@example.test", ["carol@remote.test", "alice@example.test"])
        commands.add_alias(store, "away@example.test", ["dave@remote.test"])
    finally:
        store.close()
    zone = [
        'txt-record=sender.test,"v=spf1 ip4:127.0.0.1 -all"',
        f'txt-record=sel._domainkey.signer.test,"v=DKIM1; k=rsa; p={AUTHOR_PUBLIC}"',
        'txt-record=_dmarc.signer.test,"v=DMARC1; p=reject"',
        'txt-record=example.test,"v=spf1 ip4:127.0.0.1 -all"',
        *(_dnsmasq_txt(k.record) for k in made if k.record),
        "mx-host=remote.test,mx.remote.test,10",
        "mx-host=sender.test,mx.remote.test,10",
        "host-record=mx.remote.test,127.0.0.1",
        "host-record=client.test,127.0.0.1",
    ]
    (tmp_path / "dns").mkdir()
    with dnsmasq(tmp_path / "dns", zone) as dns_server:
        server.options["dns.nameservers"] = dns_server.nameserver
        server.start()
        yield server, dns_server


def _signed_message() -> bytes:
    message = (b"From: News <news@signer.test>\r\nTo: fwd@example.test\r\n"
               b"Subject: forwarded with its chain\r\n"
               b"Date: Wed, 02 Dec 2026 03:00:00 +0000\r\nMessage-ID: <fwd-1@signer.test>\r\n"
               b"\r\nHello through the alias.\r\n")
    return dkim.sign(message, b"sel", b"signer.test", AUTHOR_KEY,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]
                     ) + message


def _dnsfunc(dns_server: DNSServer):  # type: ignore[no-untyped-def]
    """dkimpy's key lookup, asking the test's DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    host, _, port = dns_server.nameserver.rpartition(":")
    resolver.nameservers, resolver.port = [host], int(port)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        except dns.exception.DNSException:
            return None
        return b"".join(answer[0].strings)

    return lookup


def test_a_forwarded_copy_keeps_a_valid_arc_chain_and_bounces_come_back(
        forwarder: tuple[Server, DNSServer], sink: Sink) -> None:
    server, dns_server = forwarder
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.sendmail(SENDER, ["fwd@example.test"], _signed_message()) == {}

    # The local target gets its copy; the remote one goes to the sink by MX.
    server.wait_delivered(1)
    [local_copy] = server.inbox("alice@example.test")
    assert b"ARC-Seal" not in local_copy
    [forwarded] = sink.wait(1)
    assert forwarded.rcpts == ["carol@remote.test"], server.log()
    srs_local, _, srs_domain = forwarded.mail_from.rpartition("@")
    assert srs_domain == "example.test" and srs_local.startswith("SRS0="), forwarded.mail_from
    assert srs_local.endswith("=sender.test=bob")

    data = forwarded.data
    head = data.split(b"\r\n\r\n", 1)[0]
    # Our ARC Set on top, then our Received: and Authentication-Results:.
    assert re.match(rb"ARC-Seal: i=1; a=rsa-sha256; t=\d+; cv=none; d=example.test; s=[\w-]+;",
                    head), head[:200]
    assert b"\r\nARC-Authentication-Results: i=1; " + HOST.encode() + b";" in head
    aar = head.split(b"ARC-Authentication-Results: ", 1)[1].split(b"\r\nReceived:", 1)[0]
    assert b"dkim=pass" in aar and b"dmarc=pass" in aar and b"spf=pass" in aar
    assert head.count(b"DKIM-Signature:") == 1        # the author's, and nothing of ours

    # dkimpy's ARC verifier ...
    cv, results, comment = dkim.arc_verify(data, dnsfunc=_dnsfunc(dns_server))
    assert cv == dkim.CV_Pass, (cv, results, comment)
    # ... ours ...
    resolver = DNSResolver([dns_server.nameserver], timeout=5.0)
    result = asyncio.run(validate(data, resolver))
    assert result.status is ChainStatus.PASS, result
    # ... and the author's signature survives the forwarding.
    assert dkim.verify(data, dnsfunc=_dnsfunc(dns_server))

    # A bounce to the SRS address goes back to the original sender ...
    bounce = (b"From: MAILER-DAEMON@remote.test\r\nTo: " + forwarded.mail_from.encode()
              + b"\r\nSubject: Undelivered Mail\r\n\r\ncarol is away.\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("")
        # ... whatever case the bounce's sender gave the local part; a forged one is refused.
        forged = srs_local.replace("=sender.test=", "=evil.test=")
        code, text = client.rcpt(f"{forged}@example.test")
        assert code == 550 and text.startswith(b"5.1.1 "), text
        code, text = client.rcpt(f"{srs_local.lower()}@example.test")
        assert code == 250, text
        code, _ = client.data(bounce)
        assert code == 250
    messages = sink.wait(2)
    assert len(messages) == 2, server.log()
    assert (messages[1].mail_from, messages[1].rcpts) == ("", [SENDER])
    assert b"carol is away." in messages[1].data


def test_an_alias_with_only_remote_targets_and_the_null_sender(
        forwarder: tuple[Server, DNSServer], sink: Sink) -> None:
    server, dns_server = forwarder
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("")
        code, _ = client.rcpt("away@example.test")
        assert code == 250
        code, reply = client.data(_signed_message())
        assert code == 250, reply
        # Not an open relay: the alias is ours, other domains are not.
        client.rset()
        client.mail(SENDER)
        code, _ = client.rcpt("carol@remote.test")
        assert code == 554
    [forwarded] = sink.wait(1)
    assert (forwarded.mail_from, forwarded.rcpts) == ("", ["dave@remote.test"])
    cv, results, comment = dkim.arc_verify(forwarded.data, dnsfunc=_dnsfunc(dns_server))
    assert cv == dkim.CV_Pass, (cv, results, comment)
    assert server.delivered() == 0
