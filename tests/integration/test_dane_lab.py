"""DANE with real DNSSEC (issue 8, "How it is checked": DNSSEC-signed zones for DANE,
a validating resolver, and a DANE domain with a wrong TLSA record).

The zones are signed here: ``ldns-keygen`` makes a KSK and a ZSK per zone,
``ldns-signzone`` signs the zone file (NSEC), and an authoritative unbound
serves the signed files (``auth-zone:``).  A second unbound validates
(``module-config: "validator iterator"``) with each zone's DS as its trust
anchor and a stub zone pointing at the authoritative one: it is the
"validating resolver on loopback" that ``pillarbox.deliver.dane`` trusts.
No answer is made up: AD comes from unbound's validation, SERVFAIL from a
signature that no longer fits its record.

=================  ==============================================================
name               what it is
=================  ==============================================================
dane.test          MX mx.dane.test; TLSA 3 1 1 (the MX's key) and 2 0 1 (its CA)
wrong.dane.test    MX mx-wrong.dane.test; TLSA 3 1 1 of another key: the bad record
ta.dane.test       MX mx-ta.dane.test; TLSA 2 1 1 (the CA's key) only
other.dane.test    MX mx-other.dane.test; TLSA 2 1 1, but the certificate does not
                   name mx-other.dane.test
pkix.dane.test     MX mx-pkix.dane.test; TLSA 1 1 1 only (PKIX-EE: unusable for SMTP)
plain.test         unsigned; a (wrong) TLSA that must be ignored: insecure, no DANE
bogus.test         signed, its TLSA record changed after signing: bogus
badmx.test         signed, its MX record changed after signing: bogus
=================  ==============================================================

Every MX host has the address 192.0.2.25.  Two tiers:

- on loopback (needs ``unbound`` and ``ldnsutils``, not root): both unbound
  instances on 127.0.0.1, free ports; (a) the validating resolver sets AD for
  the signed MX and TLSA records (and the authoritative one does not), and
  (b) our lookups give secure TLSA records, insecure for the unsigned zone,
  failures for the bogus ones;
- in the network lab (``tests/netlab``, root): the authoritative unbound in host
  ``auth``, the validating one on the loopback of host ``tx``, and a private
  Postfix MX with STARTTLS at 192.0.2.25 whose certificate chain (leaf and CA)
  is made here.  From ``tx``: MX routing and DANE lookups through the
  validating resolver, STARTTLS with ``SMTPClient``, then (c) the chain the
  Postfix really sent matches the right TLSA records and fails the wrong ones
  with the reason that goes into the DSN; and once remote.py takes ``dane=``
  (``/work/notes/dane-remote.patch``), the same through ``RemoteDelivery``:
  the domain with the wrong TLSA record is deferred with that reason and the
  Postfix gets nothing for it, the others get their mail.

Skips without the tools or root, fails instead under ``CI=true`` (``.ci/run``
installs ``unbound`` and ``ldnsutils``).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pillarbox.deliver.dane import (
    DANE,
    DANEPolicy,
    DANEVerdict,
    TLSARecord,
    ValidatingResolver,
    mx_security,
    peer_chain,
    tlsa_for,
)
from pillarbox.deliver.mx import MXResolver
from pillarbox.net.smtp_client import SMTPClient, Timeouts

MX_IP = "192.0.2.25"
AUTH_IP = "192.0.2.54"
TOOLS = {"unbound": "unbound", "ldns-keygen": "ldnsutils", "ldns-signzone": "ldnsutils"}


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


def require_dnssec_tools() -> None:
    for tool, package in TOOLS.items():
        if _tool(tool) is None:
            problem = f"{tool} is not installed (Debian package {package}; see .ci/run)"
            if os.environ.get("CI") == "true":
                pytest.fail(problem)
            pytest.skip(problem)


# ------------------------------------------------------------ certificates

@dataclass
class PKI:
    """A CA and the MX's certificate it issued, as files for Postfix and as the
    TLSA records that describe them."""

    ca: x509.Certificate
    leaf: x509.Certificate
    chain_file: Path
    key_file: Path

    @staticmethod
    def der(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    @staticmethod
    def spki(cert: x509.Certificate) -> bytes:
        return cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)

    def record(self, which: str, usage: int, selector: int) -> TLSARecord:
        cert = self.leaf if which == "leaf" else self.ca
        data = self.der(cert) if selector == 0 else self.spki(cert)
        return TLSARecord(usage, selector, 1, hashlib.sha256(data).digest())


def make_pki(directory: Path) -> PKI:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DANE Lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["mx.dane.test", "mx-wrong.dane.test", "mx-ta.dane.test", "mx-pkix.dane.test"]
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    chain_file, key_file = directory / "mx-chain.pem", directory / "mx-key.pem"
    chain_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                           + ca.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return PKI(ca, leaf, chain_file, key_file)


def other_key_record() -> TLSARecord:
    """3 1 1 of a key the MX does not have: a TLSA record left behind by a key change."""
    spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TLSARecord(3, 1, 1, hashlib.sha256(spki).digest())


# ------------------------------------------------------------------ zones

@dataclass
class Zone:
    """A zone file (SOA, NS and ``records``), signed with ldns unless ``signed`` is
    false; :meth:`tamper` changes a record's data after signing (bogus)."""

    origin: str
    records: list[tuple[str, str, str]]     # owner (relative, "@"), type, data
    signed: bool = True
    tampered: list[tuple[str, str]] = field(default_factory=list)
    path: Path | None = None
    ds_file: Path | None = None

    def tamper(self, old: str, new: str) -> Zone:
        self.tampered.append((old, new))
        return self

    def build(self, directory: Path, ns_address: str) -> None:
        work = directory / self.origin
        work.mkdir(parents=True, exist_ok=True)
        lines = [f"$ORIGIN {self.origin}.", "$TTL 60",
                 f"@ IN SOA ns.{self.origin}. hostmaster.{self.origin}. 1 1200 180 1209600 60",
                 f"@ IN NS ns.{self.origin}.", f"ns IN A {ns_address}"]
        lines += [f"{owner} IN {rtype} {data}" for owner, rtype, data in self.records]
        source = work / "zone"
        source.write_text("\n".join(lines) + "\n", encoding="ascii")
        if not self.signed:
            self.path = source
            return
        keys = []
        for extra in (["-k"], []):              # the KSK, then the ZSK
            done = subprocess.run([_tool("ldns-keygen") or "ldns-keygen", "-a",
                                   "ECDSAP256SHA256", *extra, self.origin], cwd=work,
                                  capture_output=True, text=True, check=True, timeout=60)
            keys.append(done.stdout.strip())
        signed = work / "zone.signed"
        subprocess.run([_tool("ldns-signzone") or "ldns-signzone", "-f", str(signed),
                        str(source), *keys], cwd=work, capture_output=True, text=True,
                       check=True, timeout=60)
        text = signed.read_text(encoding="ascii")
        for old, new in self.tampered:
            assert old in text, f"{old!r} is not in the signed {self.origin}"
            text = text.replace(old, new)
        signed.write_text(text, encoding="ascii")
        self.path = signed
        self.ds_file = work / f"{keys[0]}.ds"


def make_zones(pki: PKI) -> list[Zone]:
    ee = pki.record("leaf", 3, 1)
    wrong = other_key_record()
    bogus_data = other_key_record()
    return [
        Zone("dane.test", [
            ("@", "MX", "10 mx.dane.test."), ("mx", "A", MX_IP),
            ("_25._tcp.mx", "TLSA", str(ee)),
            ("_25._tcp.mx", "TLSA", str(pki.record("ca", 2, 0))),
            ("wrong", "MX", "10 mx-wrong.dane.test."), ("mx-wrong", "A", MX_IP),
            ("_25._tcp.mx-wrong", "TLSA", str(wrong)),
            ("ta", "MX", "10 mx-ta.dane.test."), ("mx-ta", "A", MX_IP),
            ("_25._tcp.mx-ta", "TLSA", str(pki.record("ca", 2, 1))),
            ("other", "MX", "10 mx-other.dane.test."), ("mx-other", "A", MX_IP),
            ("_25._tcp.mx-other", "TLSA", str(pki.record("ca", 2, 1))),
            ("pkix", "MX", "10 mx-pkix.dane.test."), ("mx-pkix", "A", MX_IP),
            ("_25._tcp.mx-pkix", "TLSA", str(pki.record("leaf", 1, 1))),
        ]),
        Zone("plain.test", [("@", "MX", "10 mx.plain.test."), ("mx", "A", MX_IP),
                            ("_25._tcp.mx", "TLSA", str(wrong))], signed=False),
        Zone("bogus.test", [("@", "MX", "10 mx.bogus.test."), ("mx", "A", MX_IP),
                            ("_25._tcp.mx", "TLSA", str(bogus_data))]
             ).tamper(bogus_data.data.hex(), ee.data.hex()),
        Zone("badmx.test", [("@", "MX", "10 mx.badmx.test."), ("mx", "A", MX_IP)]
             ).tamper("MX\t10 mx.badmx.test.", "MX\t20 mx.badmx.test."),
    ]


# --------------------------------------------------------------- unbound

BASE = """server:
  interface: {address}
  port: {port}
  username: ""
  chroot: ""
  directory: "{directory}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  do-daemonize: no
  verbosity: 1
  do-ip6: no
  # RFC 6761 names are local zones by default; these test zones are real here.
  local-zone: "test." nodefault
"""


def auth_config(directory: Path, address: str, port: int, zones: list[Zone]) -> str:
    text = BASE.format(address=address, port=port, directory=directory)
    text += '  module-config: "iterator"\n  access-control: 0.0.0.0/0 allow\n'
    for zone in zones:
        text += (f'auth-zone:\n  name: "{zone.origin}"\n  zonefile: "{zone.path}"\n'
                 "  for-downstream: yes\n  for-upstream: no\n")
    return text


def validator_config(directory: Path, port: int, zones: list[Zone], auth: str,
                     auth_port: int) -> str:
    text = BASE.format(address="127.0.0.1", port=port, directory=directory)
    text += ('  module-config: "validator iterator"\n  do-not-query-localhost: no\n'
             "  val-log-level: 2\n")
    for zone in zones:
        if zone.ds_file is not None:
            text += f'  trust-anchor-file: "{zone.ds_file}"\n'
    for zone in zones:
        text += f'stub-zone:\n  name: "{zone.origin}"\n  stub-addr: {auth}@{auth_port}\n'
    return text


def answers(address: str, port: int, name: str = "dane.test") -> bool:
    try:
        dns.query.udp(dns.message.make_query(name, "SOA"), address, port=port, timeout=0.5)
    except (dns.exception.Timeout, OSError):
        return False
    return True


def start_unbound(config: Path, log: Path, popen: Callable[..., subprocess.Popen[bytes]],
                  ready: Callable[[], bool]) -> subprocess.Popen[bytes]:
    check = subprocess.run([_tool("unbound-checkconf") or "unbound-checkconf", str(config)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr + config.read_text()
    with open(log, "ab") as out:
        proc = popen([_tool("unbound") or "unbound", "-d", "-c", str(config)],
                     stdout=out, stderr=out)
    deadline = time.monotonic() + 15
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"unbound ({config.name}) did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def query(address: str, port: int, name: str, rtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, want_dnssec=True)
    return dns.query.udp(q, address, port=port, timeout=5)


# ------------------------------------------- tier 1: both resolvers on loopback

def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (unbound needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class Loopback:
    pki: PKI
    zones: list[Zone]
    auth_port: int
    port: int


def _popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    require_dnssec_tools()
    directory = tmp_path_factory.mktemp("dane")
    pki = make_pki(directory / "pki")
    zones = make_zones(pki)
    for zone in zones:
        zone.build(directory / "zones", "127.0.0.1")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        auth_port, port = free_port(), free_port()
        auth_conf = directory / "auth.conf"
        auth_conf.write_text(auth_config(directory, "127.0.0.1", auth_port, zones))
        procs.append(start_unbound(auth_conf, directory / "auth.log", _popen,
                                   lambda: answers("127.0.0.1", auth_port)))
        val_conf = directory / "validator.conf"
        val_conf.write_text(validator_config(directory, port, zones, "127.0.0.1", auth_port))
        procs.append(start_unbound(val_conf, directory / "validator.log", _popen,
                                   lambda: answers("127.0.0.1", port)))
        yield Loopback(pki, zones, auth_port, port)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_validating_resolver_sets_ad(loopback: Loopback) -> None:
    """(a) AD for the signed MX and TLSA RRsets, from validation: the authoritative
    server does not set it; the unsigned zone gets none; bogus data is SERVFAIL."""
    port, auth = loopback.port, loopback.auth_port
    for name, rtype in (("dane.test", "MX"), ("_25._tcp.mx.dane.test", "TLSA"),
                        ("mx.dane.test", "A"), ("mx.dane.test", "AAAA"),
                        ("nothing.dane.test", "TLSA")):
        reply = query("127.0.0.1", port, name, rtype)
        assert reply.flags & dns.flags.AD, (name, rtype, reply)
        assert not query("127.0.0.1", auth, name, rtype).flags & dns.flags.AD
    tlsa = query("127.0.0.1", port, "_25._tcp.mx.dane.test", "TLSA")
    assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in tlsa.answer)
    plain = query("127.0.0.1", port, "plain.test", "MX")
    assert plain.rcode() == dns.rcode.NOERROR and plain.answer
    assert not plain.flags & dns.flags.AD
    for name, rtype in (("_25._tcp.mx.bogus.test", "TLSA"), ("badmx.test", "MX")):
        assert query("127.0.0.1", port, name, rtype).rcode() == dns.rcode.SERVFAIL
        # ... while the authoritative server serves the changed record as it is.
        assert query("127.0.0.1", auth, name, rtype).rcode() == dns.rcode.NOERROR


def test_our_lookups_through_the_validating_resolver(loopback: Loopback) -> None:
    """(b) ``pillarbox.deliver.dane`` over the validating unbound: secure TLSA
    records as published, insecure for the unsigned zone, failed for bogus data."""
    pki = loopback.pki

    async def main() -> None:
        resolver = ValidatingResolver(["127.0.0.1"], loopback.port, timeout=5)
        assert (await mx_security(resolver, "dane.test")).status == "secure"
        assert (await mx_security(resolver, "plain.test")).status == "insecure"
        badmx = await mx_security(resolver, "badmx.test")
        assert badmx.status == "failed"
        assert badmx.reason == ("DNSSEC lookup of MX badmx.test: server failure "
                                "(SERVFAIL from 127.0.0.1)")
        result = await tlsa_for(resolver, "mx.dane.test", 25)
        assert result.status == "secure"
        assert sorted(map(str, result.records)) == sorted(
            [str(pki.record("leaf", 3, 1)), str(pki.record("ca", 2, 0))])
        assert (await tlsa_for(resolver, "mx.plain.test")).status == "insecure"
        assert (await tlsa_for(resolver, "mx.bogus.test")).status == "failed"
        absent = await tlsa_for(resolver, "nothing.dane.test")
        assert (absent.status, absent.records) == ("secure", ())

        dane = DANE(resolver)
        verify = await dane.host("mx.dane.test", mx_secure=True)
        assert verify.mode == "verify" and len(verify.records) == 2
        assert (await dane.host("mx-pkix.dane.test", mx_secure=True)).mode == "encrypt"
        assert (await dane.host("mx.plain.test", mx_secure=True)).mode == "none"
        bogus = await dane.host("mx.bogus.test", mx_secure=True)
        assert bogus.mode == "failed"
        assert bogus.reply == ("451 4.4.3 DANE: DNSSEC lookup of TLSA _25._tcp.mx.bogus.test: "
                               "server failure (SERVFAIL from 127.0.0.1)")

    asyncio.run(main())


# ------------------------------------------------- tier 2: the network lab

@dataclass
class Attempt:
    policy: DANEPolicy
    verdict: DANEVerdict | None
    peer: str = ""
    chain: tuple[bytes, ...] = ()


async def attempt(domain: str) -> Attempt:
    """What remote delivery does for ``domain`` under DANE, up to the end of the
    TLS handshake: MX routing and DANE lookups through the validating resolver on
    this host's loopback, STARTTLS, then the chain the server sent is checked."""
    resolver = ValidatingResolver(["127.0.0.1"], 53, timeout=5)
    dane = DANE(resolver, families=("A",))
    security = await dane.domain(domain)
    route = await MXResolver(nameservers=["127.0.0.1"], ipv6=False, timeout=5).route(domain)
    host = route.hosts[0]
    policy = await dane.host(host.name, mx_secure=security.status == "secure")
    if not policy.requires_tls:
        return Attempt(policy, None)
    timeouts = Timeouts(connect=5, greeting=10, command=10, tls_handshake=10)
    client = await SMTPClient.connect(host.addresses[0], 25, helo_name="tx.dane.test",
                                      host_name=host.name, timeouts=timeouts)
    try:
        assert (await client.hello()).is_positive and client.extensions.starttls
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE       # DANE decides, not the Web PKI
        reply = await client.starttls(context, policy.server_name)
        assert reply.is_positive and client.tls is not None
        assert client.ssl_object is not None
        chain = peer_chain(client.ssl_object)
        return Attempt(policy, policy.check(chain, client.peer), client.peer, chain)
    finally:
        await client.quit()


@dataclass
class World:
    tx: Any                  # tests.netlab.Host (imported lazily: the lab needs root)
    pki: PKI
    postfix: Any             # tests.netlab.PostfixMX


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.netlab import Lab, PostfixMX, require_lab

    require_dnssec_tools()
    require_lab("postfix")
    with Lab(tmp_path_factory.mktemp("dane") / "lab", ttl=60) as lab:
        tx = lab.host("tx", "198.51.100.10")
        auth_host = lab.host("auth", AUTH_IP)
        mx = lab.host("mx", MX_IP)
        lab.start()
        pki = make_pki(mx.directory / "pki")
        zones = make_zones(pki)
        for zone in zones:
            zone.build(auth_host.directory / "zones", AUTH_IP)
        auth_conf = auth_host.directory / "auth.conf"
        auth_conf.write_text(auth_config(auth_host.directory, AUTH_IP, 53, zones))
        start_unbound(auth_conf, auth_host.directory / "unbound.log", auth_host.popen,
                      lambda: tx.call(answers, AUTH_IP, 53))
        val_conf = tx.directory / "validator.conf"
        val_conf.write_text(validator_config(tx.directory, 53, zones, AUTH_IP, 53))
        start_unbound(val_conf, tx.directory / "unbound.log", tx.popen,
                      lambda: tx.call(answers, "127.0.0.1", 53))
        domains = ["dane.test", "wrong.dane.test", "ta.dane.test", "other.dane.test",
                   "pkix.dane.test", "plain.test", "bogus.test"]
        postfix = PostfixMX(mx, "mx.dane.test", domains, settings={
            "smtpd_tls_cert_file": str(pki.chain_file),
            "smtpd_tls_key_file": str(pki.key_file)}).start()
        try:
            yield World(tx, pki, postfix)
        finally:
            postfix.stop()


def test_tlsa_records_against_a_real_mx(world: World) -> None:
    """(c) The chain a real Postfix MX sends, checked against the TLSA records."""
    tx, pki = world.tx, world.pki
    good = tx.run(attempt("dane.test"))
    assert good.policy.mode == "verify" and good.verdict is not None
    assert good.chain == (PKI.der(pki.leaf), PKI.der(pki.ca))
    assert good.verdict.ok and good.verdict.matched == pki.record("leaf", 3, 1)

    ta = tx.run(attempt("ta.dane.test"))
    assert ta.verdict is not None and ta.verdict.ok
    assert ta.verdict.matched == pki.record("ca", 2, 1)

    wrong = tx.run(attempt("wrong.dane.test"))
    assert wrong.verdict is not None and not wrong.verdict.ok
    record = wrong.policy.records[0]
    assert wrong.verdict.reason == (
        "451 4.7.5 DANE: no TLSA record of _25._tcp.mx-wrong.dane.test matches the "
        f"certificate of mx-wrong.dane.test[{MX_IP}]:25 ({record.short()}; the "
        f"certificate offered is {pki.record('leaf', 3, 1)})")

    other = tx.run(attempt("other.dane.test"))
    assert other.verdict is not None and not other.verdict.ok
    assert other.verdict.reason.startswith("451 4.7.5 DANE: TLSA _25._tcp.mx-other.dane.test (")
    assert ("but the certificate names mx.dane.test, mx-wrong.dane.test, mx-ta.dane.test, "
            "mx-pkix.dane.test, not mx-other.dane.test" in other.verdict.reason)

    pkix = tx.run(attempt("pkix.dane.test"))
    assert pkix.policy.mode == "encrypt"
    assert pkix.verdict is not None and pkix.verdict.ok and pkix.chain

    plain = tx.run(attempt("plain.test"))       # unsigned: DANE does not apply
    assert plain.policy.mode == "none" and plain.verdict is None

    bogus = tx.run(attempt("bogus.test"))
    assert bogus.policy.mode == "failed" and bogus.verdict is None
    assert bogus.policy.reply == (
        "451 4.4.3 DANE: DNSSEC lookup of TLSA _25._tcp.mx.bogus.test: server "
        "failure (SERVFAIL from 127.0.0.1)")


async def deliver(domain: str) -> Any:
    """One attempt of RemoteDelivery with DANE, as the queue manager makes it."""
    from pillarbox.deliver.outbound import OutboundMessage, OutboundRecipient
    from pillarbox.deliver.remote import RemoteDelivery

    body = f"Subject: DANE to {domain}\r\n\r\nHello over DANE.\r\n".encode()
    message = OutboundMessage("Q1", "alice@sender.test", (OutboundRecipient(0, f"bob@{domain}"),),
                              len(body), lambda: io.BytesIO(body))
    fast = Timeouts(connect=5, greeting=10, command=10, mail=10, rcpt=10, data_init=10,
                    data_block=10, data_end=10, tls_handshake=10)
    delivery = RemoteDelivery(  # type: ignore[call-arg]
        MXResolver(nameservers=["127.0.0.1"], ipv6=False, timeout=5),
        helo_name="tx.sender.test", timeouts=fast,
        dane=DANE(ValidatingResolver(["127.0.0.1"], 53, timeout=5), families=("A",)))
    try:
        return await delivery.deliver(domain, message)
    finally:
        await delivery.close()


def test_remote_delivery_under_dane(world: World) -> None:
    """The scenario of issue 8 through RemoteDelivery: the DANE domain with a wrong
    TLSA record gets no mail, deferred with the reason its DSN will give; the
    right records and the unsigned domain get theirs.  Needs remote.py wired to
    DANE (/work/notes/dane-remote.patch); skips until then."""
    import inspect

    from pillarbox.deliver.remote import RemoteDelivery

    if "dane" not in inspect.signature(RemoteDelivery).parameters:
        pytest.skip("RemoteDelivery takes no dane= yet (the wiring of dane-remote.patch)")
    tx, pki, postfix = world.tx, world.pki, world.postfix

    wrong = tx.run(deliver("wrong.dane.test")).outcomes[0]
    assert (wrong.result, wrong.status) == ("deferred", "4.7.5")
    assert wrong.reply.startswith("451 4.7.5 DANE: no TLSA record of "
                                  "_25._tcp.mx-wrong.dane.test matches the certificate of "
                                  f"mx-wrong.dane.test[{MX_IP}]:25 (3 1 1 ")
    assert wrong.reply.endswith(f"the certificate offered is {pki.record('leaf', 3, 1)})")
    bogus = tx.run(deliver("bogus.test")).outcomes[0]
    assert (bogus.result, bogus.reply) == ("deferred", (
        "451 4.4.3 DANE: DNSSEC lookup of TLSA _25._tcp.mx.bogus.test: server failure "
        "(SERVFAIL from 127.0.0.1)"))

    for domain in ("dane.test", "ta.dane.test", "plain.test"):
        delivered = tx.run(deliver(domain))
        outcome = delivered.outcomes[0]
        assert outcome.result == "delivered", (domain, outcome)
        assert delivered.tls is not None and delivered.tls.startswith("TLSv1.")
        postfix.wait_until(lambda: postfix.maildir(f"bob@{domain}"), 30, f"mail to {domain}")
        assert b"Hello over DANE." in postfix.maildir(f"bob@{domain}")[0]
    assert not postfix.maildir("bob@wrong.dane.test") and not postfix.maildir("bob@bogus.test")
    received = [line for _, line in postfix.lines("smtpd") if "TLS connection established" in line]
    assert received, postfix.log()[-3000:]
