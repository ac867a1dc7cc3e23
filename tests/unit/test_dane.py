"""DANE (pillarbox.deliver.dane): TLSA matching against certificates made here with
``cryptography``, every usage/selector/matching combination, DANE-TA chains;
the AD-bit handling against a small DNS server on 127.0.0.1 (dnspython's codec,
real UDP) that sets or clears AD as a validating resolver would; and the peer
chain read from a real TLS handshake on loopback.  No root needed; the lab test
with real DNSSEC (unbound, ldns-signzone) is tests/integration/test_dane_lab.py."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pillarbox.deliver.dane import (
    DANE,
    DANEPolicy,
    TLSARecord,
    ValidatingResolver,
    host_security,
    match_chain,
    mx_security,
    name_matches,
    peer_chain,
    tlsa_for,
    usable_records,
)

T = TypeVar("T")
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


# ------------------------------------------------------------ certificates

@dataclass
class Cert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def spki(self) -> bytes:
        return self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def record(self, usage: int, selector: int, mtype: int) -> TLSARecord:
        data = self.der if selector == 0 else self.spki
        if mtype == 1:
            data = hashlib.sha256(data).digest()
        elif mtype == 2:
            data = hashlib.sha512(data).digest()
        return TLSARecord(usage, selector, mtype, data)


def make_cert(cn: str, *, sans: tuple[str, ...] | None = None, issuer: Cert | None = None,
              ca: bool = False, not_before: datetime.datetime = NOW - DAY,
              not_after: datetime.datetime = NOW + 30 * DAY, rsa_key: bool = False) -> Cert:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    key = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(
        ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before)
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans is None and not ca:
        sans = (cn,)
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    signer = issuer.key if issuer else key
    return Cert(builder.sign(signer, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki() -> dict[str, Cert]:
    root = make_cert("Test Root CA", ca=True, rsa_key=True)
    inter = make_cert("Test Intermediate CA", ca=True, issuer=root)
    leaf = make_cert("mx.example.test", issuer=inter)
    # Same names as the real ones, other keys: a forger's chain.
    fake_root = make_cert("Test Root CA", ca=True)
    fake_inter = make_cert("Test Intermediate CA", ca=True, issuer=fake_root)
    fake_leaf = make_cert("mx.example.test", issuer=fake_inter)
    return {"root": root, "inter": inter, "leaf": leaf, "self": make_cert("mx.example.test"),
            "fake_root": fake_root, "fake_inter": fake_inter, "fake_leaf": fake_leaf}


def chain(*certs: Cert) -> list[bytes]:
    return [c.der for c in certs]


NAMES = ("mx.example.test",)
COMBOS = [(s, m) for s in (0, 1) for m in (0, 1, 2)]


# ---------------------------------------------------------------- DANE-EE

@pytest.mark.parametrize("selector,mtype", COMBOS)
def test_dane_ee_matches_the_leaf(pki: dict[str, Cert], selector: int, mtype: int) -> None:
    leaf = pki["self"]
    record = leaf.record(3, selector, mtype)
    verdict = match_chain([record], chain(leaf), NAMES)
    assert verdict.ok and verdict.matched == record
    assert str(verdict) == f"DANE DANE-EE {record.short()} matched"


@pytest.mark.parametrize("selector,mtype", COMBOS)
def test_dane_ee_wrong_record_fails(pki: dict[str, Cert], selector: int, mtype: int) -> None:
    good = pki["self"].record(3, selector, mtype)
    wrong = TLSARecord(3, selector, mtype, bytes([good.data[0] ^ 1]) + good.data[1:])
    verdict = match_chain([wrong], chain(pki["self"]), NAMES)
    assert not verdict.ok and verdict.reason == "the certificate does not match"
    # Another certificate with the same name does not match either.
    assert not match_chain([good], chain(pki["fake_leaf"]), NAMES).ok


def test_dane_ee_ignores_names_and_dates(pki: dict[str, Cert]) -> None:
    """RFC 7672 §3.1.1: with DANE-EE neither the name nor the validity dates count."""
    old = make_cert("somewhere.else", not_before=NOW - 90 * DAY, not_after=NOW - 60 * DAY)
    assert match_chain([old.record(3, 1, 1)], chain(old), NAMES).ok
    assert match_chain([old.record(3, 0, 1)], chain(old), NAMES).ok


def test_dane_ee_matches_the_leaf_only(pki: dict[str, Cert]) -> None:
    full = chain(pki["leaf"], pki["inter"], pki["root"])
    assert not match_chain([pki["inter"].record(3, 1, 1)], full, NAMES).ok
    assert not match_chain([pki["root"].record(3, 0, 1)], full, NAMES).ok
    assert match_chain([pki["leaf"].record(3, 1, 1)], full, NAMES).ok


# ---------------------------------------------------------------- DANE-TA

@pytest.mark.parametrize("selector,mtype", COMBOS)
@pytest.mark.parametrize("anchor", ["root", "inter"])
def test_dane_ta_chain_to_anchor(pki: dict[str, Cert], anchor: str, selector: int,
                                 mtype: int) -> None:
    record = pki[anchor].record(2, selector, mtype)
    verdict = match_chain([record], chain(pki["leaf"], pki["inter"], pki["root"]), NAMES)
    assert verdict.ok and verdict.matched == record, verdict.reason


def test_dane_ta_unordered_chain_and_extra_certificates(pki: dict[str, Cert]) -> None:
    record = pki["root"].record(2, 1, 1)
    assert match_chain([record], chain(pki["leaf"], pki["root"], pki["inter"]), NAMES).ok
    assert match_chain([record], chain(pki["leaf"], pki["fake_inter"], pki["inter"],
                                       pki["root"]), NAMES).ok
    assert match_chain([record], chain(pki["leaf"], pki["inter"], pki["root"]) + [b"junk"],
                       NAMES).ok


def test_dane_ta_anchor_not_in_chain_fails(pki: dict[str, Cert]) -> None:
    """The server must send the trust anchor (RFC 7672 §3.1.2)."""
    verdict = match_chain([pki["root"].record(2, 1, 1)], chain(pki["leaf"], pki["inter"]),
                          NAMES)
    assert not verdict.ok
    assert "does not lead to a DANE-TA trust anchor" in verdict.reason


def test_dane_ta_forged_chain_with_the_anchor_appended_fails(pki: dict[str, Cert]) -> None:
    """The real anchor sent beside a forged chain with the same names: no signature
    path from the leaf to it."""
    for extra in ([pki["root"]], [pki["inter"], pki["root"]]):
        forged = chain(pki["fake_leaf"], pki["fake_inter"], *extra)
        verdict = match_chain([pki["root"].record(2, 0, 1)], forged, NAMES)
        assert not verdict.ok and "does not lead" in verdict.reason


def test_dane_ta_checks_the_leaf_name(pki: dict[str, Cert]) -> None:
    record = pki["inter"].record(2, 1, 1)
    full = chain(pki["leaf"], pki["inter"], pki["root"])
    verdict = match_chain([record], full, ("other.example.test",))
    assert not verdict.ok
    assert verdict.reason == (
        f"the chain leads to the trust anchor of TLSA {record.short()}, but the certificate "
        "names mx.example.test, not other.example.test")
    # Any of the reference names will do (TLSA base domain or MX host name, §3.2.2).
    assert match_chain([record], full, ("other.example.test", "MX.Example.Test.")).ok


def test_dane_ta_wildcard_and_cn_only(pki: dict[str, Cert]) -> None:
    inter = pki["inter"]
    wild = make_cert("*.example.test", issuer=inter)
    record = inter.record(2, 0, 2)
    assert match_chain([record], chain(wild, inter), ("mx.example.test",)).ok
    assert not match_chain([record], chain(wild, inter), ("a.mx.example.test",)).ok
    assert not match_chain([record], chain(wild, inter), ("example.test",)).ok
    cn_only = make_cert("mx.example.test", issuer=inter, sans=())
    assert match_chain([record], chain(cn_only, inter), NAMES).ok


def test_dane_ta_checks_dates_below_the_anchor(pki: dict[str, Cert]) -> None:
    inter = pki["inter"]
    expired = make_cert("mx.example.test", issuer=inter, not_before=NOW - 60 * DAY,
                        not_after=NOW - 2 * DAY)
    verdict = match_chain([inter.record(2, 1, 1)], chain(expired, inter), NAMES)
    assert not verdict.ok and verdict.reason.startswith(
        "the certificate of mx.example.test expired on ")
    future = make_cert("mx.example.test", issuer=inter, not_before=NOW + DAY)
    verdict = match_chain([inter.record(2, 1, 1)], chain(future, inter), NAMES)
    assert not verdict.ok and "is not valid before" in verdict.reason
    # The anchor's own dates are not checked (it is trusted as it is).
    old_root = make_cert("Old Root", ca=True, not_before=NOW - 90 * DAY,
                         not_after=NOW - 30 * DAY)
    leaf = make_cert("mx.example.test", issuer=old_root)
    assert match_chain([old_root.record(2, 1, 1)], chain(leaf, old_root), NAMES).ok


def test_dane_ta_intermediate_must_be_a_ca(pki: dict[str, Cert]) -> None:
    root = pki["root"]
    not_ca = make_cert("not-a-ca.example.test", issuer=root)
    leaf = make_cert("mx.example.test", issuer=not_ca)
    verdict = match_chain([root.record(2, 1, 1)], chain(leaf, not_ca, root), NAMES)
    assert not verdict.ok and "is not a CA certificate" in verdict.reason


def test_dane_ta_does_not_match_the_leaf_itself(pki: dict[str, Cert]) -> None:
    leaf = pki["self"]
    assert not match_chain([leaf.record(2, 1, 1)], chain(leaf), NAMES).ok


# ------------------------------------------------------- unusable records

def test_unusable_records(pki: dict[str, Cert]) -> None:
    leaf = pki["self"]
    good = leaf.record(3, 1, 1)
    unusable = [
        leaf.record(0, 1, 1), leaf.record(1, 1, 1),          # PKIX-TA, PKIX-EE (§3.1.3)
        TLSARecord(4, 1, 1, good.data), TLSARecord(3, 2, 1, good.data),
        TLSARecord(3, 1, 3, good.data), TLSARecord(3, 1, 1, good.data[:20]),
        TLSARecord(3, 1, 2, good.data), TLSARecord(3, 0, 0, b""),
    ]
    reasons = [r.unusable() for r in unusable]
    assert all(reasons), reasons
    assert "is not for SMTP" in (reasons[1] or "")
    assert usable_records(unusable) == ()
    verdict = match_chain(unusable, chain(leaf), NAMES)
    assert not verdict.ok and verdict.reason == "no usable TLSA record"
    assert match_chain([*unusable, good], chain(leaf), NAMES).ok


def test_digest_agility(pki: dict[str, Cert]) -> None:
    """RFC 7671 §9: per usage and selector, only the strongest digest present counts."""
    leaf = pki["self"]
    sha256, sha512 = leaf.record(3, 1, 1), leaf.record(3, 1, 2)
    wrong512 = TLSARecord(3, 1, 2, bytes(64))
    wrong256 = TLSARecord(3, 1, 1, bytes(32))
    assert usable_records([sha256, wrong512]) == (wrong512,)
    assert not match_chain([sha256, wrong512], chain(leaf), NAMES).ok
    assert match_chain([wrong256, sha512], chain(leaf), NAMES).ok
    # Other selectors and exact matches are kept.
    assert match_chain([wrong512, leaf.record(3, 0, 1)], chain(leaf), NAMES).ok
    assert match_chain([wrong512, leaf.record(3, 1, 0)], chain(leaf), NAMES).ok


def test_record_text() -> None:
    record = TLSARecord.from_text("3 1 1 0A1B2C3D 4e5f" + "00" * 26)
    assert (record.usage, record.selector, record.mtype) == (3, 1, 1)
    assert str(record) == "3 1 1 0a1b2c3d4e5f" + "00" * 26
    assert record.short() == "3 1 1 0a1b2c3d4e5f0000…"
    for bad in ("3 1 1", "x 1 1 00", "3 1 1 zz"):
        with pytest.raises(ValueError):
            TLSARecord.from_text(bad)


def test_name_matches() -> None:
    assert name_matches("MX.example.test.", "mx.example.test")
    assert name_matches("*.example.test", "mx.example.test")
    assert not name_matches("*.example.test", "example.test")
    assert not name_matches("*.example.test", "a.b.example.test")
    assert not name_matches("m*.example.test", "mx.example.test")
    assert not name_matches("mx.example.test", "mx2.example.test")


def test_unreadable_certificate() -> None:
    verdict = match_chain([TLSARecord(3, 1, 1, bytes(32))], [b"not DER"], NAMES)
    assert not verdict.ok and "cannot be read" in verdict.reason
    assert not match_chain([TLSARecord(3, 1, 1, bytes(32))], [], NAMES).ok


# -------------------------------------------------------------- the policy

def policy(records: tuple[TLSARecord, ...], mode: str = "verify") -> DANEPolicy:
    return DANEPolicy("mx.example.test", mode, "mx.example.test",  # type: ignore[arg-type]
                      "_25._tcp.mx.example.test", records, "",
                      ("mx.example.test",))


def test_policy_check_reply(pki: dict[str, Cert]) -> None:
    leaf = pki["self"]
    wrong = TLSARecord(3, 1, 1, bytes(range(32)))
    verdict = policy((wrong,)).check(chain(leaf), "mx.example.test[192.0.2.25]:25")
    assert not verdict.ok
    assert verdict.reason == (
        "451 4.7.5 DANE: no TLSA record of _25._tcp.mx.example.test matches the certificate "
        "of mx.example.test[192.0.2.25]:25 (3 1 1 0001020304050607…; the certificate "
        f"offered is {leaf.record(3, 1, 1)})")
    ta = pki["root"].record(2, 1, 1)
    verdict = policy((ta,)).check(chain(leaf))
    assert verdict.reason == ("451 4.7.5 DANE: TLSA _25._tcp.mx.example.test "
                              f"({ta.short()}): the certificate chain does not lead to a "
                              "DANE-TA trust anchor of the TLSA records")
    assert policy((leaf.record(3, 1, 1),)).check(chain(leaf)).ok
    encrypt = policy((), "encrypt")
    assert encrypt.requires_tls and encrypt.applies and encrypt.check(chain(leaf)).ok
    none = policy((), "none")
    assert not none.applies and not none.requires_tls
    with pytest.raises(ValueError):
        none.check(chain(leaf))
    assert policy((wrong,)).no_tls_reply("mx.example.test[192.0.2.25]:25") == (
        "450 4.7.4 DANE: TLSA records at _25._tcp.mx.example.test require STARTTLS, but "
        "mx.example.test[192.0.2.25]:25 did not offer it")


# --------------------------------------------------- AD bit, a fake resolver

@dataclass
class Resolver(asyncio.DatagramProtocol):
    """A stand-in for a validating resolver on 127.0.0.1: ``answers`` maps
    (name, type) to (rcode, AD, [records as zone-file text]); ``asked`` keeps each
    query's (name, type, DO, AD) so a test can see what was sent."""

    answers: dict[tuple[str, str], tuple[str, bool, list[str]]]
    asked: list[tuple[str, str, bool, bool]] = field(default_factory=list)
    transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.asked.append((name, rdtype, bool(query.ednsflags & dns.flags.DO),
                           bool(query.flags & dns.flags.AD)))
        reply = dns.message.make_response(query)
        rcode, ad, records = self.answers.get((name, rdtype), ("NXDOMAIN", True, []))
        reply.set_rcode(dns.rcode.from_text(rcode))
        if ad:
            reply.flags |= dns.flags.AD
        for text in records:
            owner, ttl, rdclass, rrtype, rdata = text.split(None, 4)
            reply.answer.append(dns.rrset.from_text(owner.rstrip(".") + ".", int(ttl),
                                                    rdclass, rrtype, rdata))
        self.transport.sendto(reply.to_wire(), addr)


def with_resolver(answers: dict[tuple[str, str], tuple[str, bool, list[str]]],
                  body: Callable[[ValidatingResolver, Resolver], Awaitable[T]]) -> T:
    async def main() -> T:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            lambda: Resolver(answers), local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            return await body(ValidatingResolver(["127.0.0.1"], port, timeout=3), server)
        finally:
            transport.close()
    return asyncio.run(main())


def tlsa_text(name: str, record: TLSARecord) -> str:
    return f"{name} 60 IN TLSA {record}"


SECURE_MX = {
    ("example.test", "MX"): ("NOERROR", True, ["example.test 60 IN MX 10 mx.example.test."]),
    ("mx.example.test", "A"): ("NOERROR", True, ["mx.example.test 60 IN A 192.0.2.25"]),
    ("mx.example.test", "AAAA"): ("NOERROR", True, []),
}


def test_ad_bit_decides(pki: dict[str, Cert]) -> None:
    record = pki["self"].record(3, 1, 1)
    answers = {
        **SECURE_MX,
        ("_25._tcp.mx.example.test", "TLSA"):
            ("NOERROR", True, [tlsa_text("_25._tcp.mx.example.test", record)]),
        ("unsigned.test", "MX"):
            ("NOERROR", False, ["unsigned.test 60 IN MX 10 mx.unsigned.test."]),
        ("bogus.test", "MX"): ("SERVFAIL", False, []),
        ("nomx.test", "MX"): ("NOERROR", True, []),
        ("_25._tcp.insecure.test", "TLSA"):
            ("NOERROR", False, [tlsa_text("_25._tcp.insecure.test", record)]),
        ("_25._tcp.broken.test", "TLSA"): ("SERVFAIL", False, []),
    }

    async def body(resolver: ValidatingResolver, server: Resolver) -> None:
        assert (await mx_security(resolver, "example.test")).status == "secure"
        assert (await mx_security(resolver, "nomx.test")).status == "secure"
        insecure = await mx_security(resolver, "unsigned.test")
        assert insecure.status == "insecure"
        assert insecure.reason == "the MX records of unsigned.test are not DNSSEC-signed"
        failed = await mx_security(resolver, "bogus.test")
        assert failed.status == "failed"
        assert failed.reason.startswith("DNSSEC lookup of MX bogus.test: server failure "
                                        "(SERVFAIL from 127.0.0.1")
        result = await tlsa_for(resolver, "mx.example.test", 25)
        assert (result.status, result.records) == ("secure", (record,))
        assert (await tlsa_for(resolver, "insecure.test")).status == "insecure"
        assert (await tlsa_for(resolver, "broken.test")).status == "failed"
        nothing = await tlsa_for(resolver, "other.test")      # NXDOMAIN with AD
        assert (nothing.status, nothing.records) == ("secure", ())
        # Every query asked for DNSSEC data (DO) and for the AD bit (RFC 6840 §5.7).
        assert server.asked and all(do and ad for _, _, do, ad in server.asked)

    with_resolver(answers, body)


def test_nxdomain_without_ad_is_insecure() -> None:
    async def body(resolver: ValidatingResolver, server: Resolver) -> None:
        assert (await tlsa_for(resolver, "gone.test")).status == "insecure"
    with_resolver({("_25._tcp.gone.test", "TLSA"): ("NXDOMAIN", False, [])}, body)


def test_host_security_and_cname() -> None:
    answers = {
        ("mx.example.test", "A"): ("NOERROR", True, [
            "mx.example.test 60 IN CNAME mail.hoster.test.",
            "mail.hoster.test 60 IN A 192.0.2.25"]),
        ("mx.example.test", "AAAA"): ("NOERROR", True, [
            "mx.example.test 60 IN CNAME mail.hoster.test."]),
        ("half.test", "A"): ("NOERROR", True, ["half.test 60 IN A 192.0.2.26"]),
        ("half.test", "AAAA"): ("NOERROR", False, ["half.test 60 IN AAAA 2001:db8::26"]),
        ("bad.test", "A"): ("SERVFAIL", False, []),
    }

    async def body(resolver: ValidatingResolver, server: Resolver) -> None:
        cname = await host_security(resolver, "MX.example.test.")
        assert (cname.status, cname.base_domains) == (
            "secure", ("mail.hoster.test", "mx.example.test"))
        half = await host_security(resolver, "half.test")
        assert (half.status, half.reason) == (
            "insecure", "the AAAA records of half.test are not DNSSEC-signed")
        assert (await host_security(resolver, "bad.test")).status == "failed"
    with_resolver(answers, body)


def test_dane_host_modes(pki: dict[str, Cert]) -> None:
    leaf = pki["self"]
    good = leaf.record(3, 1, 1)
    answers = {
        **SECURE_MX,
        ("_25._tcp.mx.example.test", "TLSA"):
            ("NOERROR", True, [tlsa_text("_25._tcp.mx.example.test", good)]),
        ("mx2.example.test", "A"): ("NOERROR", True, ["mx2.example.test 60 IN A 192.0.2.26"]),
        ("mx2.example.test", "AAAA"): ("NOERROR", True, []),
        ("_25._tcp.mx2.example.test", "TLSA"): ("NOERROR", True, [
            tlsa_text("_25._tcp.mx2.example.test", leaf.record(1, 1, 1))]),
        ("mx3.example.test", "A"): ("NOERROR", True, ["mx3.example.test 60 IN A 192.0.2.27"]),
        ("mx3.example.test", "AAAA"): ("NOERROR", True, []),
        ("_25._tcp.mx3.example.test", "TLSA"): ("SERVFAIL", False, []),
        ("mx4.example.test", "A"): ("NOERROR", True, ["mx4.example.test 60 IN A 192.0.2.28"]),
        ("mx4.example.test", "AAAA"): ("NOERROR", True, []),
        ("mx5.example.test", "A"): ("NOERROR", False, ["mx5.example.test 60 IN A 192.0.2.29"]),
        # CNAME: the TLSA records at the expanded name come first (RFC 7672 §2.2.2).
        ("mx6.example.test", "A"): ("NOERROR", True, [
            "mx6.example.test 60 IN CNAME mail.hoster.test.",
            "mail.hoster.test 60 IN A 192.0.2.30"]),
        ("mx6.example.test", "AAAA"): ("NOERROR", True, [
            "mx6.example.test 60 IN CNAME mail.hoster.test."]),
        ("_25._tcp.mail.hoster.test", "TLSA"):
            ("NOERROR", True, [tlsa_text("_25._tcp.mail.hoster.test", good)]),
    }

    async def body(resolver: ValidatingResolver, server: Resolver) -> None:
        dane = DANE(resolver)
        assert (await dane.domain("Example.Test.")).status == "secure"
        verify = await dane.host("mx.example.test", mx_secure=True)
        assert (verify.mode, verify.records, verify.server_name) == (
            "verify", (good,), "mx.example.test")
        assert verify.applies and verify.requires_tls
        assert verify.check(chain(leaf)).ok
        encrypt = await dane.host("mx2.example.test", mx_secure=True)
        assert encrypt.mode == "encrypt" and encrypt.requires_tls
        assert "PKIX-EE(1) is not for SMTP" in encrypt.reason
        failed = await dane.host("mx3.example.test", mx_secure=True)
        assert failed.mode == "failed" and not failed.requires_tls
        assert failed.reply.startswith("451 4.4.3 DANE: DNSSEC lookup of TLSA "
                                       "_25._tcp.mx3.example.test: server failure")
        none = await dane.host("mx4.example.test", mx_secure=True)   # validated NXDOMAIN
        assert none.mode == "none" and not none.applies
        assert (await dane.host("mx5.example.test", mx_secure=True)).mode == "none"
        # With an insecure MX RRset nothing is even asked (RFC 7672 §2.2.1).
        asked = len(server.asked)
        assert (await dane.host("mx.example.test", mx_secure=False)).mode == "none"
        assert len(server.asked) == asked
        cname = await dane.host("mx6.example.test", mx_secure=True)
        assert (cname.mode, cname.server_name, cname.tlsa_name, cname.reference_names) == (
            "verify", "mail.hoster.test", "_25._tcp.mail.hoster.test",
            ("mail.hoster.test", "mx6.example.test"))

    with_resolver(answers, body)


def test_hosts_of_a_domain(pki: dict[str, Cert]) -> None:
    """Only hosts of the validated MX RRset get a policy; another host (routing got
    another answer) is failed, so it cannot escape DANE; no MX: the domain itself."""
    good = pki["self"].record(3, 1, 1)
    answers = {
        **SECURE_MX,
        ("_25._tcp.mx.example.test", "TLSA"):
            ("NOERROR", True, [tlsa_text("_25._tcp.mx.example.test", good)]),
        ("nomx.test", "MX"): ("NOERROR", True, []),
        ("nomx.test", "A"): ("NOERROR", True, ["nomx.test 60 IN A 192.0.2.40"]),
        ("nomx.test", "AAAA"): ("NOERROR", True, []),
        ("_25._tcp.nomx.test", "TLSA"): ("NOERROR", True, [tlsa_text("_25._tcp.nomx.test", good)]),
        ("unsigned.test", "MX"): ("NOERROR", False, ["unsigned.test 60 IN MX 10 mx.example.test."]),
    }

    async def body(resolver: ValidatingResolver, server: Resolver) -> None:
        dane = DANE(resolver)
        security = await dane.domain("example.test")
        assert security.exchanges == ("mx.example.test",)
        policies = await dane.hosts(security, ["MX.example.test", "evil.test"])
        assert policies["mx.example.test"].mode == "verify"
        assert policies["evil.test"].mode == "failed"
        assert policies["evil.test"].reply == (
            "451 4.4.3 DANE: evil.test is not among the DNSSEC-validated MX hosts of the "
            "domain (mx.example.test)")
        implicit = await dane.domain("nomx.test")
        assert implicit.implicit and implicit.exchanges == ("nomx.test",)
        assert (await dane.hosts(implicit, ["nomx.test"]))["nomx.test"].mode == "verify"
        assert await dane.hosts(await dane.domain("unsigned.test"), ["mx.example.test"]) == {}
    with_resolver(answers, body)


def test_domain_names() -> None:
    """Address literals have no MX (no DANE); U-labels are asked in A-labels."""
    answers = {("xn--bcher-kva.test", "MX"): ("NOERROR", True, [
        "xn--bcher-kva.test 60 IN MX 10 mx.example.test."])}

    async def body(resolver: ValidatingResolver, server: Resolver) -> None:
        dane = DANE(resolver)
        assert (await dane.domain("bücher.test")).status == "secure"
        literal = await dane.domain("[192.0.2.1]")
        assert literal.status == "insecure" and "address literal" in literal.reason
        assert (await dane.domain("bad..name")).status == "insecure"
        assert [a[:2] for a in server.asked] == [("xn--bcher-kva.test", "MX")]
        nxdomain = await dane.domain("nowhere.test")
        assert nxdomain.status == "secure"    # a validated NXDOMAIN: routing bounces it
    with_resolver(answers, body)


def test_resolver_must_be_trusted() -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        ValidatingResolver(["192.0.2.53"])
    ValidatingResolver(["192.0.2.53"], trust_network=True)
    resolver = ValidatingResolver(["::1", "127.0.0.53", "127.0.0.1:5353", "[::1]:5354"], 53)
    servers: Any = resolver._resolver.nameservers
    assert [(str(n.address), n.port) for n in servers] == [
        ("::1", 53), ("127.0.0.53", 53), ("127.0.0.1", 5353), ("::1", 5354)]
    with pytest.raises(ValueError, match="not a loopback address"):
        ValidatingResolver(["[2001:db8::53]:5353"])
    for bad in ([], ["resolver.example"]):
        with pytest.raises(ValueError):
            ValidatingResolver(bad)


# --------------------------------------------- the chain from a handshake

def test_peer_chain_from_a_real_handshake(pki: dict[str, Cert], tmp_path: Path) -> None:
    """Python 3.11's ssl gives the whole chain the server sent, leaf first."""
    leaf, inter, root = pki["leaf"], pki["inter"], pki["root"]
    cert_file, key_file = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(c.cert.public_bytes(serialization.Encoding.PEM)
                                   for c in (leaf, inter, root)))
    key_file.write_bytes(leaf.key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE

    async def main() -> tuple[bytes, ...]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="mx.example.test")
            obj = writer.get_extra_info("ssl_object")
            assert isinstance(obj, ssl.SSLObject)
            got = peer_chain(obj)
            writer.close()
            return got
        finally:
            server.close()
            await server.wait_closed()

    got = asyncio.run(main())
    assert got == (leaf.der, inter.der, root.der)
    assert match_chain([root.record(2, 1, 1)], got, NAMES).ok
