"""OpenDKIM as a real peer: a Postfix MX whose smtpd(8) runs OpenDKIM as a milter
verifies the signatures of mail Pillarbox sent it (issue 8, test plan: real peers).

``test_dkim_signing.py`` hands OpenDKIM a file (``opendkim -t``); here nothing
is handed over by the test.  One lab (``tests/netlab``):

===========  ==============================  =====================================
host         addresses                       what runs there
===========  ==============================  =====================================
``tx``       198.51.100.10, 2001:db8:1::10   Pillarbox (``mail.example.test``),
                                             local domains ``example.test`` and
                                             ``forged.test``
``pf``       192.0.2.25, 2001:db8::25        Postfix, the MX of ``postfix.test``
                                             (``smtpd_milters``), and OpenDKIM
                                             (``Mode v``) on its 127.0.0.1:8891
``ns``       192.0.2.53, 2001:db8::53        dnsmasq: MX, A/AAAA, the DKIM keys
===========  ==============================  =====================================

Keys: ``pillarbox dkim keygen DOMAIN --activate`` (RSA-2048 and Ed25519), the
TXT records it prints published in the lab's DNS, where OpenDKIM finds them.
Debian's OpenDKIM resolves with libunbound, which answers names under
``test.`` itself (NXDOMAIN: a special-use name, RFC 6761) and asks no server,
so OpenDKIM gets an unbound configuration (``ResolverConfiguration``) with
``local-zone: "test." nodefault`` that forwards everything to the lab's
DNS; ``Nameservers`` names it too, for an OpenDKIM built on libresolv.
A user submits on port 587 (STARTTLS, AUTH), so Pillarbox signs; it finds
the MX by its normal lookup and delivers over SMTP; OpenDKIM's verdict is the
``Authentication-Results: mx.postfix.test; dkim=...`` field it adds, read
from the Maildir virtual(8) wrote.

Controls: ``forged.test`` signs with keys of its own, but its DNS publishes the
public keys of another key pair under the same selectors (the key that signed
is not the one published), so OpenDKIM says ``dkim=fail``; and a message
altered in flight: the signed message as the MX received it from Pillarbox,
its own trace fields removed and one body line changed, sent again from
``tx`` to the MX with smtplib (what a meddling relay does), says
``dkim=fail`` for both signatures.

Debian's OpenDKIM 2.11 verifies Ed25519 signatures (RFC 8463): both of ours
must pass.  ``milter_default_action = tempfail``: if OpenDKIM is not there,
Postfix defers instead of delivering unverified mail, so a missing milter
cannot look like a pass.  Needs root (skips outside it, fails under
``CI=true``, as does a missing ``postfix`` or ``opendkim``).
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netlab import DNS_V4, Host, Lab, LabPillarbox, PostfixMX, require_lab

MX = "mx.postfix.test"
ALICE = "alice@example.test"
MALLORY = "mallory@forged.test"
PASSWORD = "secret"
MILTER_PORT = 8891      # on the loopback of the pf namespace, which is the lab's alone
ZONE_LINE = re.compile(r'^(\S+)\. IN TXT ((?:"[^"]*" ?)+)$')


@dataclass
class World:
    lab: Lab
    tx: Host
    pf: Host
    sender: LabPillarbox
    postfix: PostfixMX
    opendkim: subprocess.Popen[bytes]
    selectors: dict[str, list[str]]     # domain -> the selectors that sign its mail


def keygen(data_dir: Path, domain: str, *, activate: bool) -> dict[str, str]:
    """``pillarbox dkim keygen DOMAIN [--activate]``: the TXT records it prints
    (owner name -> the record's strings joined, RFC 6376 3.6.2.2)."""
    args = [sys.executable, "-m", "pillarbox", "-o", f"server.data_dir={data_dir}",
            "dkim", "keygen", domain, *(["--activate"] if activate else [])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=data_dir.parent)
    assert done.returncode == 0, f"dkim keygen {domain}: {done.stdout}{done.stderr}"
    out = {}
    for line in done.stdout.splitlines():
        m = ZONE_LINE.match(line)
        if m:
            out[m.group(1).lower()] = "".join(re.findall(r'"([^"]*)"', m.group(2)))
    assert len(out) == 2, done.stdout
    return out


def publish(lab: Lab, name: str, value: str) -> None:
    """A TXT record in strings of at most 255 octets (RFC 1035 3.3.14)."""
    lab.dns.txt(name, *[value[i:i + 255] for i in range(0, len(value), 255)])


def start_opendkim(pf: Host) -> subprocess.Popen[bytes]:
    """OpenDKIM in ``pf``, verifying only, on 127.0.0.1:MILTER_PORT there."""
    directory = pf.directory / "opendkim"
    directory.mkdir(parents=True, exist_ok=True)
    # Debian's OpenDKIM resolves with libunbound, which answers the special-use
    # names of RFC 6761 (``test.`` among them) itself, NXDOMAIN, without asking
    # any server: its own configuration undoes that and forwards to the lab's DNS.
    unbound = directory / "unbound.conf"
    unbound.write_text(
        "server:\n"
        '    local-zone: "test." nodefault\n'
        "    do-not-query-localhost: no\n"
        "    use-syslog: no\n"
        f"    logfile: \"{directory}/unbound.log\"\n"
        "forward-zone:\n"
        '    name: "."\n'
        f"    forward-addr: {DNS_V4}\n", encoding="ascii")
    conf = directory / "opendkim.conf"
    conf.write_text(
        "# OpenDKIM of a Pillarbox netlab test: verify only.\n"
        "Mode v\n"
        f"Socket inet:{MILTER_PORT}@127.0.0.1\n"
        f"PidFile {directory}/opendkim.pid\n"
        "Background no\n"
        "Syslog no\n"
        f"ResolverConfiguration {unbound}\n"
        f"Nameservers {DNS_V4}\n"
        f"AuthservID {MX}\n"
        "AlwaysAddARHeader yes\n"
        "On-BadSignature accept\n"
        "On-KeyNotFound accept\n"
        "On-DNSError accept\n", encoding="ascii")
    log = open(pf.directory / "opendkim.log", "ab")
    try:
        proc = pf.popen(["/usr/sbin/opendkim", "-f", "-x", str(conf)], stdout=log, stderr=log)
    finally:
        log.close()

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", MILTER_PORT), timeout=1):
                return True
        except OSError:
            return False
    deadline = time.monotonic() + 15
    while not pf.call(listening):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = (pf.directory / "opendkim.log").read_text(errors="replace")
            raise RuntimeError(f"OpenDKIM did not listen on 127.0.0.1:{MILTER_PORT} in "
                               f"{pf.name} (exit {proc.poll()}):\n{text}")
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_lab("postfix", "opendkim")
    with Lab(tmp_path_factory.mktemp("opendkim-milter") / "lab", ttl=60) as lab:
        tx = lab.host("tx", "198.51.100.10", "2001:db8:1::10", dns_name="mail.example.test")
        pf = lab.host("pf", "192.0.2.25", "2001:db8::25", dns_name=MX)
        lab.dns.mx("postfix.test", 10, MX)
        sender = LabPillarbox(tx, "mail.example.test", accounts=(ALICE, MALLORY), options={
            "submission.listen": "127.0.0.1:587",
            "queue.retry_first": "2s",
            "queue.retry_max": "4s",
        })
        selectors: dict[str, list[str]] = {}
        for name, value in keygen(sender.data_dir, "example.test", activate=True).items():
            publish(lab, name, value)
            selectors.setdefault("example.test", []).append(name.split(".")[0])
        # forged.test signs with one pair of keys; its DNS publishes another's.
        signing = keygen(sender.data_dir, "forged.test", activate=True)
        decoy = keygen(sender.data_dir, "decoy.test", activate=False)
        for (name, value), other in zip(sorted(signing.items()), sorted(decoy.values())):
            assert value.split(";")[1] == other.split(";")[1]      # same k=, other p=
            assert value != other
            publish(lab, name, other)
            selectors.setdefault("forged.test", []).append(name.split(".")[0])
        lab.start()
        opendkim = start_opendkim(pf)
        postfix = PostfixMX(pf, MX, ["postfix.test"], settings={
            "smtpd_milters": f"inet:127.0.0.1:{MILTER_PORT}",
            "non_smtpd_milters": "",
            "milter_default_action": "tempfail",
        }).start()
        sender.start()
        yield World(lab, tx, pf, sender, postfix, opendkim, selectors)


# ----------------------------------------------------------------- helpers

def submit(world: World, user: str, to: str, data: bytes) -> None:
    """Submission from ``tx`` itself: port 587, STARTTLS, AUTH PLAIN as ``user``."""
    def send() -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", 587, local_hostname="laptop.example.test",
                          timeout=15) as client:
            client.starttls(context=ctx)
            client.login(user, PASSWORD)
            refused = client.sendmail(user, [to], data)
            assert refused == {}, refused
    world.tx.call(send)


def message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Wed, 02 Dec 2026 00:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}.{time.time_ns()}@example.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Body of {subject}.\r\n\r\nWith  spaces \t and a trailing blank line.\r\n"
            "\r\n").encode()


def delivered(world: World, address: str, subject: str, timeout: float = 40) -> bytes:
    """The message with ``subject`` in the Maildir of ``address`` at the Postfix MX."""
    wanted = f"\nSubject: {subject}\n".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in world.postfix.maildir(address):
            if wanted in b"\n" + raw.replace(b"\r\n", b"\n"):
                return raw
        time.sleep(0.2)
    opendkim_log = (world.pf.directory / "opendkim.log").read_text(errors="replace")
    pytest.fail(f"{subject!r} not in the Maildir of {address} within {timeout:.0f} s\n"
                f"--- Pillarbox ---\n{world.sender.log()[-5000:]}\n"
                f"--- Postfix ---\n{world.postfix.log()[-5000:]}\n"
                f"--- OpenDKIM ---\n{opendkim_log[-2000:]}")


def dkim_results(raw: bytes) -> list[dict[str, str]]:
    """OpenDKIM's verdicts: each ``dkim=`` result of the ``Authentication-Results:``
    fields of ``MX`` (RFC 8601 2.2), as ``{"result", "header.d", "header.s",
    "header.a", ...}``; a comment in parentheses is kept as ``"comment"``."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for field in msg.get_all("Authentication-Results") or []:
        text = re.sub(r"\s+", " ", str(field)).strip()
        authserv, _, rest = text.partition(";")
        if authserv.strip().split()[0] != MX:
            continue
        for part in re.split(r";(?![^()]*\))", rest):     # not the ";" of a comment
            part = part.strip()
            m = re.match(r"dkim=(\w+)\s*(?:\((?P<comment>[^)]*)\))?\s*(?P<props>.*)$", part)
            if not m:
                continue
            entry = {"result": m.group(1), "comment": m.group("comment") or ""}
            entry |= dict(re.findall(r"([\w.]+)=(\"[^\"]*\"|\S+)", m.group("props")))
            out.append(entry)
    return out


def ar_fields(raw: bytes) -> str:
    """The Authentication-Results: fields as they are, for failure messages."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return "\n".join(f"Authentication-Results: {f}" for f in
                     msg.get_all("Authentication-Results") or []) or "(none)"


def received(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return "\n".join(f"Received: {f}" for f in msg.get_all("Received") or [])


def signature_selectors(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return sorted(re.search(r"\bs=([\w-]+)", re.sub(r"\s+", "", str(f)))[1]  # type: ignore[index]
                  for f in msg.get_all("DKIM-Signature") or [])


def verdicts(raw: bytes) -> dict[str, tuple[str, str]]:
    """selector -> (result, header.a) of OpenDKIM's results that name header.d and header.s."""
    return {r["header.s"]: (r["result"], r.get("header.a", "")) for r in dkim_results(raw)
            if "header.s" in r}


# ------------------------------------------------------------ the scenarios

def test_opendkim_milter_passes_our_rsa_and_ed25519_signatures(world: World) -> None:
    mark = world.lab.dns.mark()
    submit(world, ALICE, "paul@postfix.test", message(ALICE, "paul@postfix.test", "signed"))
    raw = delivered(world, "paul@postfix.test", "signed")
    ours = world.selectors["example.test"]
    # OpenDKIM, in the MX's host, asked the lab's DNS for both keys.
    asked = {(q.name, q.client) for q in world.lab.dns.queries(mark) if q.type == "TXT"}
    for selector in ours:
        assert any(name == f"{selector}._domainkey.example.test" and client in world.pf.addresses
                   for name, client in asked), asked
    assert signature_selectors(raw) == sorted(ours), raw[:3000]
    results = dkim_results(raw)
    assert results, f"no dkim= result of {MX} in:\n{raw[:3000]!r}"
    assert all(r.get("header.d") == "example.test" for r in results), ar_fields(raw)
    assert verdicts(raw) == {
        next(s for s in ours if s.startswith("r")): ("pass", "rsa-sha256"),
        next(s for s in ours if s.startswith("e")): ("pass", "ed25519-sha256"),
    }, results
    # It came over SMTP from Pillarbox in tx, and smtpd (with the milter) took it.
    assert re.search(rb"Received: from mail\.example\.test \(\S+ "
                     rb"\[(198\.51\.100\.10|IPv6:2001:db8:1::10)\]\)\n\t\(using TLSv1\.[23] ",
                     raw), received(raw)
    # smtpd spoke to the milter without trouble (else milter_default_action: tempfail).
    assert not [t for _, t in world.postfix.lines() if "milter" in t.lower()], \
        world.postfix.log()[-3000:]


def test_a_key_the_dns_does_not_publish_fails(world: World) -> None:
    """forged.test's signatures are made with keys whose public halves are not in
    its DNS (another pair's are): both verify against the wrong key and fail."""
    submit(world, MALLORY, "paul@postfix.test",
           message(MALLORY, "paul@postfix.test", "wrong key"))
    raw = delivered(world, "paul@postfix.test", "wrong key")
    assert signature_selectors(raw) == sorted(world.selectors["forged.test"]), raw[:3000]
    results = dkim_results(raw)
    assert all(r["header.d"] == "forged.test" for r in results), results
    assert {s: v[0] for s, v in verdicts(raw).items()} == {
        s: "fail" for s in world.selectors["forged.test"]}, results


def test_a_message_altered_after_signing_fails(world: World) -> None:
    """Pillarbox's signed message, as the MX received it, with its body changed in
    flight: re-sent from ``tx`` to the MX by smtplib (what a meddling relay does)."""
    submit(world, ALICE, "rita@postfix.test", message(ALICE, "rita@postfix.test", "to alter"))
    original = delivered(world, "rita@postfix.test", "to alter")
    assert set(v[0] for v in verdicts(original).values()) == {"pass"}, dkim_results(original)
    # Back to what Pillarbox sent: above its own Received: field, Postfix and
    # virtual(8) added trace fields, and OpenDKIM its result; drop those.
    text = original.replace(b"\r\n", b"\n")
    head, _, body = text.partition(b"\n\n")
    fields = re.split(rb"\n(?![ \t])", head)
    first = next(i for i, f in enumerate(fields) if f.startswith(b"Received: from laptop"))
    sent = b"\r\n".join(fields[first:]).replace(b"\n", b"\r\n") + b"\r\n\r\n" + \
        body.replace(b"\n", b"\r\n")
    altered = sent.replace(b"Body of to alter.", b"Body of to alter, changed.")
    assert altered != sent

    def resend() -> None:
        with smtplib.SMTP(world.pf.ipv4 or "", 25, local_hostname="relay.example.test",
                          timeout=15) as client:
            client.sendmail(ALICE, ["sam@postfix.test"], altered)
    world.tx.call(resend)
    raw = delivered(world, "sam@postfix.test", "to alter")
    assert b"Body of to alter, changed." in raw
    assert {s: v[0] for s, v in verdicts(raw).items()} == {
        s: "fail" for s in world.selectors["example.test"]}, dkim_results(raw)
