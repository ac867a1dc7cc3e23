"""Who sent it, end to end: a real server asks a real DNS server (dnsmasq on
loopback) for SPF, DKIM keys and DMARC policies while mail arrives on the SMTP
port, records what it found in one Authentication-Results field, and refuses
at DATA what the author domain's DMARC policy says to reject.  The DKIM
signatures are made by dkimpy, a signer that is not ours."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Iterator

import dkim
import pytest

from tests.conftest import Server
from tests.dnsserver import DNSServer, dkim_test_key, dnsmasq

HOST = "mx.example.test"


KEY, PUBLIC = dkim_test_key()

ZONE = [
    # sender.test: mail from 127.0.0.1 is its own; DMARC reject.
    'txt-record=sender.test,"v=spf1 ip4:127.0.0.1 -all"',
    'txt-record=_dmarc.sender.test,"v=DMARC1; p=reject"',
    # forged.test: only 192.0.2.1 sends its mail; DMARC reject.
    'txt-record=forged.test,"v=spf1 ip4:192.0.2.1 -all"',
    'txt-record=_dmarc.forged.test,"v=DMARC1; p=reject"',
    # signer.test: no SPF of its own, signs with DKIM; DMARC reject.
    f'txt-record=sel._domainkey.signer.test,"v=DKIM1; k=rsa; p={PUBLIC}"',
    'txt-record=_dmarc.signer.test,"v=DMARC1; p=reject; adkim=s"',
    # lists.test: a forwarder's envelope domain, which passes SPF.
    'txt-record=lists.test,"v=spf1 ip4:127.0.0.1 -all"',
    # the client's name, forward and reverse (dnsmasq makes the PTR).
    "host-record=client.test,127.0.0.1",
    # monitored.test: fails, but asks only for reports.
    'txt-record=monitored.test,"v=spf1 -all"',
    'txt-record=_dmarc.monitored.test,"v=DMARC1; p=none"',
    # doubtful.test: fails, and asks for quarantine.
    'txt-record=doubtful.test,"v=spf1 -all"',
    'txt-record=_dmarc.doubtful.test,"v=DMARC1; p=quarantine"',
]


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSServer]:
    with dnsmasq(tmp_path_factory.mktemp("dns"), ZONE) as server:
        yield server


@pytest.fixture
def origin_server(server_factory, dns: DNSServer) -> Server:
    server: Server = server_factory({
        "server.hostname": HOST, "dns.nameservers": dns.nameserver,
        "policy.spf": "tag", "policy.dmarc": "enforce",
    }, accounts=("alice@example.test",))
    return server


def _message(sender: str, subject: str, extra: bytes = b"") -> bytes:
    return (f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Wed, 02 Dec 2026 03:00:00 +0000\r\nMessage-ID: <{subject}@x.test>\r\n"
            ).encode() + extra + b"\r\nHello.\r\n"


def _send(server: Server, mail_from: str, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(mail_from)
        code, _ = client.rcpt("alice@example.test")
        assert code == 250
        return client.data(message)


def _results(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    return [" ".join(str(v).split()) for v in msg.get_all("Authentication-Results", [])]


def test_aligned_spf_passes_and_the_header_says_so(origin_server: Server) -> None:
    forged_claim = b"Authentication-Results: " + HOST.encode() + b"; dmarc=pass header.from=x\r\n"
    code, _ = _send(origin_server, "a@sender.test",
                    _message("a@sender.test", "hello", forged_claim))
    assert code == 250
    origin_server.wait_delivered(1)
    [raw] = origin_server.inbox("alice@example.test")
    results = _results(raw)
    # Exactly one field of ours: the claim that came with the message is gone.
    assert len(results) == 1, results
    ours = results[0]
    assert ours.startswith(f"{HOST};")
    assert "spf=pass" in ours and "smtp.mailfrom=a@sender.test" in ours
    assert "dkim=none" in ours
    assert "dmarc=pass" in ours and "header.from=sender.test" in ours
    # Ours comes right below our Received: line, the first trace field.
    head = raw.split(b"\r\n")
    assert head[2].startswith(b"Received: from client.test"), head[:4]
    after = next(i for i, line in enumerate(head[3:], 3) if not line.startswith(b"\t"))
    assert head[after].startswith(b"Authentication-Results: " + HOST.encode()), head[:8]


def test_forged_author_of_a_reject_domain_is_refused_at_data(origin_server: Server) -> None:
    code, text = _send(origin_server, "boss@forged.test", _message("boss@forged.test", "pay"))
    assert code == 550
    assert b"5.7.1" in text and b"forged.test" in text and b"DMARC" in text
    assert origin_server.delivered() == 0


def test_dkim_signature_by_a_real_signer_aligns_for_dmarc(origin_server: Server) -> None:
    message = _message("news@signer.test", "signed")
    signature = dkim.sign(message, b"sel", b"signer.test", KEY,
                          include_headers=[b"from", b"to", b"subject", b"date"])
    code, _ = _send(origin_server, "bounce@lists.test", signature + message)
    assert code == 250
    origin_server.wait_delivered(1)
    [raw] = origin_server.inbox("alice@example.test")
    [ours] = _results(raw)
    assert "dkim=pass" in ours and "header.d=signer.test" in ours and "header.s=sel" in ours
    assert "spf=pass" in ours and "smtp.mailfrom=bounce@lists.test" in ours
    assert "dmarc=pass" in ours


def test_an_arc_chain_from_a_forwarder_is_recorded(origin_server: Server) -> None:
    """A list at signer.test sealed the message it passed on (RFC 8617, sealed by
    dkimpy): our header says arc=pass."""
    message = (b"Authentication-Results: lists.signer.test; spf=pass smtp.mailfrom=x@sender.test\r\n"
               + _message("a@sender.test", "listed"))
    seal = b"".join(dkim.arc_sign(message, b"sel", b"signer.test", KEY, b"lists.signer.test"))
    code, _ = _send(origin_server, "a@sender.test", seal + message)
    assert code == 250
    origin_server.wait_delivered(1)
    [raw] = origin_server.inbox("alice@example.test")
    ours = [r for r in _results(raw) if r.startswith(HOST)]
    assert len(ours) == 1 and "arc=pass" in ours[0], ours


def test_a_broken_signature_of_a_reject_domain_is_refused(origin_server: Server) -> None:
    message = _message("news@signer.test", "tampered")
    signature = dkim.sign(message, b"sel", b"signer.test", KEY,
                          include_headers=[b"from", b"to", b"subject", b"date"])
    tampered = signature + message.replace(b"Hello.", b"Send money.")
    code, text = _send(origin_server, "bounce@lists.test", tampered)
    assert code == 550 and b"signer.test" in text


def test_p_none_is_recorded_not_enforced(origin_server: Server) -> None:
    code, _ = _send(origin_server, "x@monitored.test", _message("x@monitored.test", "watched"))
    assert code == 250
    origin_server.wait_delivered(1)
    [raw] = origin_server.inbox("alice@example.test")
    [ours] = _results(raw)
    assert "spf=fail" in ours and "dmarc=fail" in ours


def test_quarantine_goes_into_junk(origin_server: Server) -> None:
    code, _ = _send(origin_server, "x@doubtful.test", _message("x@doubtful.test", "maybe"))
    assert code == 250
    origin_server.wait_delivered(1)
    assert origin_server.inbox("alice@example.test") == []
    rows = origin_server.query(
        "SELECT b.name, b.special_use FROM messages m JOIN mailboxes b ON m.mailbox = b.id")
    assert rows == [("Junk", "\\Junk")]
    # The queue row said so, and nothing else changed: one copy, in Junk.
    assert "quarantine" in origin_server.log()


def test_submission_is_not_judged(origin_server: Server) -> None:
    """Our own user's mail is not held against the author domain's SPF or
    DMARC: it leaves from here, and it is ours to sign, not to verify."""
    import ssl
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", origin_server.submission_port, timeout=30) as client:
        client.starttls(context=context)
        client.login("alice@example.test", "secret")
        client.sendmail("alice@example.test", ["alice@example.test"],
                        _message("alice@example.test", "own").replace(
                            b"From: alice@example.test", b"From: alice@example.test"))
    origin_server.wait_delivered(1)
    [raw] = origin_server.inbox("alice@example.test")
    assert _results(raw) == []


def _send_as(server: Server, helo: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30,
                      source_address=(source, 0)) as client:
        client.ehlo(helo)
        client.mail("a@sender.test")
        assert client.rcpt("alice@example.test")[0] == 250
        return client.data(_message("a@sender.test", f"helo-{helo}-{source}"))


def test_received_names_the_verified_client_and_helo_checks(server_factory,
                                                            dns: DNSServer) -> None:
    """The Received: line carries the forward-confirmed reverse name (RFC 8601
    §2.7.3 iprev); a client on another address claiming our name is refused."""
    server: Server = server_factory({
        "server.hostname": HOST, "dns.nameservers": dns.nameserver,
        "policy.spf": "tag", "policy.dmarc": "enforce", "policy.iprev": "true",
        "policy.helo": "tag", "policy.helo_reject": "ours",
    }, accounts=("alice@example.test",), name="rdns")
    assert _send_as(server, "client.test")[0] == 250
    server.wait_delivered(1)
    [raw] = server.inbox("alice@example.test")
    assert b"Received: from client.test (client.test [127.0.0.1])" in raw
    [ours] = _results(raw)
    assert "iprev=pass (client.test) policy.iprev=127.0.0.1" in ours
    assert _send_as(server, "[192.0.2.9]")[0] == 250        # tagged, not refused
    assert _send_as(server, HOST)[0] == 250                  # loopback to loopback: ourselves
    code, text = _send_as(server, HOST, "127.0.0.2")
    assert code == 550 and b"5.7.1" in text


def test_trusted_networks_are_not_judged(server_factory, dns: DNSServer) -> None:
    server: Server = server_factory({
        "server.hostname": HOST, "dns.nameservers": dns.nameserver,
        "policy.spf": "tag", "policy.dmarc": "enforce",
        "smtp.trusted_networks": "127.0.0.0/8",
    }, accounts=("alice@example.test",), name="trusted")
    code, _ = _send(server, "boss@forged.test", _message("boss@forged.test", "from-app"))
    assert code == 250
