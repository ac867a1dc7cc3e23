"""DKIM verification (RFC 6376 §6, RFC 8463): the RFC vectors, dkimpy's
signatures, and every result of RFC 8601 §2.7.1 for the reason it names."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import dkim as dkimpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pillarbox.policy.dkim import Canon, Result, Signer, VerifyPolicy, sign, verify
from pillarbox.policy.dkim.keys import generate_key, key_record
from pillarbox.policy.dkim.canon import split_message
from pillarbox.policy.dkim.record import (
    DKIMSignature,
    KeyRecord,
    KeyRecordError,
    SignatureSyntaxError,
    TagListError,
    parse_key_record,
    parse_tag_list,
)
from pillarbox.policy.dkim.verify import DKIMResult, _Message
from pillarbox.policy.dns import Answer, StaticResolver


def need_nacl() -> None:
    """dkimpy does Ed25519 with PyNaCl (a test dependency): skip without it, fail under CI."""
    try:
        import nacl  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("PyNaCl is not installed (pyproject.toml, test extra)")
        pytest.skip("dkimpy needs PyNaCl for Ed25519")

# ../shared/testdata/dkim beside the checkout (issue 8).
DATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "dkim"

NOW = float(int(time.time()))   # dkimpy signs with the real clock

# RFC 8463 Appendix A.2: the keys of football.example.com.
BRISBANE = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
TEST_RSA = ("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
            "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
            "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
            "Ip3G+2kryOTIKT+l/K4w3QIDAQAB")
FOOTBALL = {
    ("brisbane._domainkey.football.example.com", "TXT"): (BRISBANE,),
    ("test._domainkey.football.example.com", "TXT"): (TEST_RSA,),
}

# RFC 8463 Appendix A.3: the signed message, byte for byte.
RFC8463 = b"""DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=brisbane; t=1528637909; h=from : to :
 subject : date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus
 Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=test; t=1528637909; h=from : to : subject :
 date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3
 DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz
 dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=
From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>

Hi.

We lost the game.  Are you hungry yet?

Joe.
""".replace(b"\n", b"\r\n")

PLAIN = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Lunch?\r\n"
         b"Date: Mon, 21 Sep 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
         b"Shall we  meet at noon? \r\n\r\nAlice\r\n")


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def run(message: bytes, zone: dict[tuple[str, str], tuple[str, ...]] | StaticResolver,
        policy: VerifyPolicy = VerifyPolicy(), now: float = NOW) -> list[DKIMResult]:
    resolver = zone if isinstance(zone, StaticResolver) else StaticResolver(dict(zone))
    return asyncio.run(verify(message, resolver, now=now, policy=policy))


def results(message: bytes, zone: dict[tuple[str, str], tuple[str, ...]] | StaticResolver,
            policy: VerifyPolicy = VerifyPolicy(), now: float = NOW) -> list[tuple[str, str]]:
    return [(r.result.value, r.reason) for r in run(message, zone, policy, now)]


# ----------------------------------------------------------------- keys, dkimpy

@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    key = generate_key("rsa", 2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    key = generate_key("ed25519")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def zone_for(**keys: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | str) -> dict[tuple[str, str], tuple[str, ...]]:
    """``selector=key`` → the zone publishing each key under example.com."""
    return {(f"{s}._domainkey.example.com", "TXT"): (k if isinstance(k, str) else key_record(k),)
            for s, k in keys.items()}


def pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def ed_seed_b64(key: ed25519.Ed25519PrivateKey) -> bytes:
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return base64.b64encode(raw)


def dkimpy_sign(message: bytes, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, selector: str = "sel",
                canon: tuple[bytes, bytes] = (b"relaxed", b"simple"), length: bool = False,
                algorithm: bytes | None = None, headers: list[bytes] | None = None) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        need_nacl()
        private, algorithm = ed_seed_b64(key), b"ed25519-sha256"
    else:
        private, algorithm = pkcs1_pem(key), algorithm or b"rsa-sha256"
    field = dkimpy.DKIM(message, signature_algorithm=algorithm).sign(
        selector.encode(), b"example.com", private, canonicalize=canon, length=length,
        include_headers=headers)
    return field + message


# ----------------------------------------------------------------- RFC vectors

def test_rfc8463_appendix_a() -> None:
    got = run(RFC8463, FOOTBALL)
    assert [(r.result, r.algorithm, r.selector) for r in got] == [
        (Result.PASS, "ed25519-sha256", "brisbane"), (Result.PASS, "rsa-sha256", "test")]
    assert got[0].domain == "football.example.com" and got[0].identity == "@football.example.com"
    assert got[0].header_b == "/gCrinpc" and got[1].header_b == "F45dVWDf"
    assert got[1].key_bits == 1024


@pytest.mark.parametrize("name", ["rfc6376.signed.msg", "rfc6376.signed.rsa.msg"])
def test_shared_vectors(name: str) -> None:
    message = crlf((DATA / name).read_bytes())
    got = run(message, FOOTBALL)
    assert got and all(r.result is Result.PASS for r in got), got
    # The unsigned original and the signed one carry the same body and fields.
    assert message.endswith(crlf((DATA / "rfc6376.msg").read_bytes()))


def test_rfc8032_key_reproduces_rfc8463_signature() -> None:
    # Ed25519 is deterministic: the RFC 8032 §7.1 key behind "brisbane" must give
    # back the very b= of RFC 8463 A.3 over the header data we compute.
    seed = base64.b64decode((DATA / "rfc8032_7_1.key").read_text().strip())
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    msg = _Message(RFC8463)
    field = msg.by_name[b"dkim-signature"][0]
    sig = DKIMSignature.parse(field.value)
    produced = key.sign(hashlib.sha256(msg.header_data(sig, field)).digest())
    assert produced == sig.signature


def test_ed25519test_files() -> None:
    # ed25519test.key signs, ed25519test.dns is its public key record.
    seed = base64.b64decode((DATA / "ed25519test.key").read_text().strip())
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    zone = {("sel._domainkey.example.com", "TXT"): ((DATA / "ed25519test.dns").read_text().strip(),)}
    message = crlf((DATA / "ed25519test.msg").read_bytes())
    signed = sign(message, [Signer("example.com", "sel", key)], now=NOW) + message
    assert results(signed, zone) == [("pass", "")]
    signed = dkimpy_sign(message, key, "sel", (b"simple", b"simple"))
    assert results(signed, zone) == [("pass", "")]


# ----------------------------------------------------------------- dkimpy's signatures

@pytest.mark.parametrize("canon", [(b"simple", b"simple"), (b"relaxed", b"relaxed"),
                                   (b"relaxed", b"simple"), (b"simple", b"relaxed")])
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkimpy_signatures_pass(canon: tuple[bytes, bytes], kind: str, rsa_key: rsa.RSAPrivateKey,
                                ed_key: ed25519.Ed25519PrivateKey) -> None:
    key = rsa_key if kind == "rsa" else ed_key
    signed = dkimpy_sign(PLAIN, key, "sel", canon)
    got = run(signed, zone_for(sel=key))
    assert [(r.result, r.algorithm) for r in got] == [(Result.PASS, f"{kind}-sha256")]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkimpy_body_length(kind: str, rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    key = rsa_key if kind == "rsa" else ed_key
    signed = dkimpy_sign(PLAIN, key, "sel", (b"relaxed", b"relaxed"), length=True)
    zone = zone_for(sel=key)
    assert results(signed, zone) == [("policy", "l= (partial body signature) refused")]
    allow = VerifyPolicy(allow_body_length=True)
    assert results(signed, zone, allow) == [("pass", "")]
    # What l= is for, and why it is refused by default: text appended after signing.
    assert results(signed + b"Buy now!\r\n", zone, allow) == [("pass", "")]


def test_dkimsign_console_script(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    script = Path(sys.executable).with_name("dkimsign")
    if not script.exists():
        pytest.skip("dkimsign is not installed beside this Python")
    keyfile = tmp_path / "k.pem"
    keyfile.write_bytes(pkcs1_pem(rsa_key))
    out = subprocess.run([str(script), "sel", "example.com", str(keyfile), "--hcanon", "relaxed",
                          "--bcanon", "relaxed"], input=PLAIN, capture_output=True, check=True, timeout=60)
    assert out.stdout.startswith(b"DKIM-Signature:"), out.stderr
    assert results(out.stdout, zone_for(sel=rsa_key)) == [("pass", "")]


def test_dkimpy_sha1_refused_by_default(rsa_key: rsa.RSAPrivateKey) -> None:
    signed = dkimpy_sign(PLAIN, rsa_key, algorithm=b"rsa-sha1")
    zone = zone_for(sel=rsa_key)
    assert results(signed, zone) == [("policy", "rsa-sha1 refused (RFC 8301)")]
    assert results(signed, zone, VerifyPolicy(allow_sha1=True)) == [("pass", "")]


def _small_rsa_key(bits: int = 512) -> rsa.RSAPrivateKey:
    """An RSA key too small for cryptography to generate (it refuses under 1024 bits)."""
    rng = random.Random(bits)

    def prime(size: int) -> int:
        while True:
            c = rng.getrandbits(size) | (3 << (size - 2)) | 1
            if all(pow(a, c - 1, c) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
                return c

    p, q, e = prime(bits // 2), prime(bits // 2), 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                 rsa.RSAPublicNumbers(e, p * q)).private_key()


def test_weak_rsa_key_refused() -> None:
    small = _small_rsa_key(512)
    signed = dkimpy_sign(PLAIN, small)
    zone = zone_for(sel=small)
    assert results(signed, zone) == [("policy", "RSA key of 512 bits is too weak")]
    assert results(signed, zone, VerifyPolicy(min_rsa_bits=512)) == [("pass", "")]


# ----------------------------------------------------------------- fail, with the reason

def test_tampering(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = dkimpy_sign(PLAIN, rsa_key, "r", (b"relaxed", b"relaxed"))
    signed = sign(signed, [Signer("example.com", "e", ed_key)], now=NOW) + signed
    zone = zone_for(r=rsa_key, e=ed_key)
    assert [r for r, _ in results(signed, zone)] == ["pass", "pass"]
    body = signed.replace(b"meet at noon", b"meet at one")
    assert results(body, zone) == [("fail", "body hash mismatch")] * 2
    header = signed.replace(b"Subject: Lunch?", b"Subject: Dinner?")
    assert results(header, zone) == [("fail", "bad signature")] * 2
    # relaxed/relaxed forgives what mail systems do to whitespace
    spaced = signed.replace(b"Subject: Lunch?", b"Subject:   Lunch? ").replace(b"noon? ", b"noon?\t\t")
    assert [r for r, _ in results(spaced, zone)] == ["pass", "pass"]
    # a damaged b= is a bad signature, not a crash
    sig_at = signed.index(b" b=", signed.index(b"a=rsa")) + 3
    broken = signed[:sig_at] + (b"A" if signed[sig_at:sig_at + 1] != b"A" else b"B") + signed[sig_at + 1:]
    assert results(broken, zone)[1] == ("fail", "bad signature")


def test_simple_header_canon_is_exact(rsa_key: rsa.RSAPrivateKey) -> None:
    signed = dkimpy_sign(PLAIN, rsa_key, canon=(b"simple", b"simple"))
    zone = zone_for(sel=rsa_key)
    assert results(signed.replace(b"Subject: Lunch?", b"Subject:  Lunch?"), zone) == [("fail", "bad signature")]
    assert results(signed.replace(b"noon? ", b"noon?"), zone) == [("fail", "body hash mismatch")]
    assert results(signed.replace(b"Subject:", b"SUBJECT:"), zone) == [("fail", "bad signature")]


def test_relaxed_header_names_any_case(rsa_key: rsa.RSAPrivateKey) -> None:
    signed = dkimpy_sign(PLAIN, rsa_key, canon=(b"relaxed", b"simple"))
    assert results(signed.replace(b"Subject:", b"SUBJECT :"), zone_for(sel=rsa_key)) == [("pass", "")]


def test_added_from_and_oversigning(rsa_key: rsa.RSAPrivateKey) -> None:
    ours = sign(PLAIN, [Signer("example.com", "sel", rsa_key)], now=NOW) + PLAIN
    zone = zone_for(sel=rsa_key)
    assert results(ours, zone) == [("pass", "")]
    extra_subject = b"Subject: You won\r\n" + ours
    assert results(extra_subject, zone) == [("fail", "bad signature")]   # Subject is over-signed
    forged = b"From: Bank <alerts@bank.example>\r\n" + ours
    assert results(forged, zone) == [("fail", "bad signature")]      # so is From
    # A signature that names From once: a second From is refused by policy
    # (RFC 6376 §8.15) ...
    theirs = dkimpy_sign(PLAIN, rsa_key, canon=(b"relaxed", b"relaxed"), headers=[b"from", b"subject"])
    forged = b"From: Bank <alerts@bank.example>\r\n" + theirs
    assert results(forged, zone) == [("policy", "a From field is not covered by the signature")]
    # ... and passes only when that policy is off, since the RFC itself signs bottom up.
    assert results(forged, zone, VerifyPolicy(require_all_from_signed=False)) == [("pass", "")]


def test_header_in_h_twice_or_absent(rsa_key: rsa.RSAPrivateKey) -> None:
    zone = zone_for(sel=rsa_key)
    # h= names Subject twice with one Subject present (the second is null) and
    # X-Absent, which the message lacks: both verify, and both lock the field.
    theirs = dkimpy_sign(PLAIN, rsa_key, headers=[b"from", b"subject", b"subject", b"x-absent", b"to"])
    assert b"subject : subject : x-absent" in theirs.split(b"\r\n\r\n")[0].replace(b"\r\n", b"")
    assert results(theirs, zone) == [("pass", "")]
    assert results(b"Subject: Re: Lunch?\r\n" + theirs, zone) == [("fail", "bad signature")]
    assert results(b"X-Absent: now here\r\n" + theirs, zone) == [("fail", "bad signature")]
    assert results(b"X-Other: fine\r\n" + theirs, zone) == [("pass", "")]
    # Our signer names present fields once per instance and over-signed ones once more.
    signer = Signer("example.com", "sel", rsa_key, headers=("from", "subject"), oversign=("x-absent",))
    ours = sign(PLAIN, [signer], now=NOW) + PLAIN
    assert DKIMSignature.parse(_Message(ours).by_name[b"dkim-signature"][0].value).signed_headers == (b"from", b"subject", b"x-absent")
    assert results(ours, zone) == [("pass", "")]
    assert results(b"X-Absent: now here\r\n" + ours, zone) == [("fail", "bad signature")]


# ----------------------------------------------------------------- errors and keys

def _ours(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, message: bytes = PLAIN, **kw: object) -> bytes:
    return sign(message, [Signer("example.com", "sel", key, **kw)], now=NOW) + message  # type: ignore[arg-type]


def test_key_problems(ed_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    signed = _ours(ed_key)
    assert results(signed, {}) == [("permerror", "no key for signature (sel._domainkey.example.com)")]
    no_txt = {("sel._domainkey.example.com", "A"): ("192.0.2.1",)}
    assert results(signed, no_txt)[0][0] == "permerror"
    assert results(signed, zone_for(sel="v=DKIM1; k=ed25519; p=")) == [("permerror", "key revoked")]
    timeout = StaticResolver(failing={"sel._domainkey.example.com"})
    assert results(signed, timeout) == [("temperror", "key lookup failed: timed out")]
    assert results(signed, zone_for(sel=rsa_key)) == [
        ("permerror", "key type k=rsa does not fit a=ed25519-sha256")]
    assert results(signed, zone_for(sel="v=DKIM1; k=ed25519; h=sha1; p=" + key_record(ed_key).split("p=")[1])) == [
        ("permerror", "key does not allow sha256 (h=)")]
    assert results(signed, zone_for(sel="v=DKIM2; p=abcd"))[0][1].startswith("bad key record: v='DKIM2'")
    assert results(signed, zone_for(sel="k=ed25519; p=AAAA"))[0] == (
        "permerror", "bad key record: an Ed25519 key has 32 octets, this one 3 (RFC 8463 §4)")
    # a junk TXT record beside the key is skipped
    both = {("sel._domainkey.example.com", "TXT"): ("google-site-verification=abc", key_record(ed_key))}
    assert results(signed, both) == [("pass", "")]


def test_testing_and_strict_flags(rsa_key: rsa.RSAPrivateKey) -> None:
    p = key_record(rsa_key).split("p=")[1]
    signed = _ours(rsa_key, identity="joe@mail.example.com")
    assert results(signed, zone_for(sel=f"v=DKIM1; t=s; p={p}")) == [
        ("permerror", "key requires i= domain to equal d= (t=s)")]
    got = run(signed, zone_for(sel=f"v=DKIM1; t=y; p={p}"))
    assert got[0].result is Result.PASS and got[0].testing and got[0].identity == "joe@mail.example.com"
    tampered = signed.replace(b"Lunch", b"Brunch")
    assert results(tampered, zone_for(sel=f"v=DKIM1; t=y:s; p={p}"))[0][0] == "permerror"
    assert results(tampered, zone_for(sel=f"v=DKIM1; t=y; p={p}")) == [
        ("neutral", "bad signature (key in testing mode, t=y)")]


def test_time_limits(ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = _ours(ed_key, expire_after=86400)
    zone = zone_for(sel=ed_key)
    assert results(signed, zone) == [("pass", "")]
    later = NOW + 86400 + 3600 + 1
    assert results(signed, zone, now=later) == [("permerror", f"signature expired (x={int(NOW) + 86400})")]
    assert results(signed, zone, now=NOW - 7200) == [
        ("permerror", f"signature timestamp in the future (t={int(NOW)})")]


def _resign(message: bytes, key: ed25519.Ed25519PrivateKey, old: bytes, new: bytes) -> bytes:
    """``message`` with its (only) signature's tags edited and the signature made anew over them."""
    msg = _Message(message.replace(old, new, 1))
    field = msg.by_name[b"dkim-signature"][0]
    try:
        sig = DKIMSignature.parse(field.value)
    except SignatureSyntaxError:
        return message.replace(old, new, 1)
    produced = base64.b64encode(key.sign(hashlib.sha256(msg.header_data(sig, field)).digest()))
    text = message.replace(old, new, 1)
    start = text.index(b"b=", text.index(b"bh=") + 3) + 2
    end = text.index(b"\r\n", start)
    while text[end + 2:end + 3] in (b" ", b"\t"):
        end = text.index(b"\r\n", end + 2)
    return text[:start] + produced + text[end:]


@pytest.mark.parametrize(("old", "new", "result"), [
    (b"d=example.com;", b"d=example.com; i=joe@example.net;",
     ("permerror", "i= domain example.net is not d=example.com nor a subdomain of it")),
    (b"d=example.com;", b"d=example.com; i=joe@sub.example.com;", ("pass", "")),
    (b"h=from:from:", b"h=", ("permerror", "h= does not include From, which must be signed")),
    (b"v=1;", b"v=2;", ("permerror", "v='2', only version 1 is defined")),
    (b"a=ed25519-sha256;", b"a=ed448-sha256;", ("permerror", "unknown algorithm a='ed448-sha256'")),
    (b"c=relaxed/relaxed;", b"c=relaxed/fancy;", ("permerror", "unknown canonicalization c='relaxed/fancy'")),
    (b"v=1;", b"", ("permerror", "required tag v= missing")),
    (b"s=sel;", b"s=sel; s=sel;", ("permerror", "tag s= appears twice")),
    (b"v=1;", b"v=1; q=dns/txt;", ("pass", "")),
    (b"v=1;", b"v=1; q=http/well-known;", ("permerror", "q='http/well-known' names no query method we know (dns/txt)")),
    (b"v=1;", b"v=1; x=100;", ("permerror", f"x=100 is earlier than t={int(NOW)}")),
    (b"v=1;", b"v=1; z=From:alice@example.com|Subject:b=3Dx;", ("pass", "")),
    (b"d=example.com;", b"d=exa mple.com;", ("permerror", "d='exa mple.com' is not a valid domain name")),
])
def test_signature_rules(old: bytes, new: bytes, result: tuple[str, str], ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = _resign(_ours(ed_key), ed_key, old, new)
    got = run(signed, zone_for(sel=ed_key))
    assert [(r.result.value, r.reason) for r in got] == [result]
    if result[0] == "permerror":
        assert got[0].header_b, "an unreadable signature still shows its b="


def test_unsigned_message_and_many_signatures(ed_key: ed25519.Ed25519PrivateKey) -> None:
    assert run(PLAIN, {}) == []
    signers = [Signer("example.com", "sel", ed_key)] * 3
    signed = sign(PLAIN, signers, now=NOW) + PLAIN
    got = run(signed, zone_for(sel=ed_key), VerifyPolicy(max_signatures=2))
    assert [r.result for r in got] == [Result.PASS, Result.PASS, Result.POLICY]
    garbage = b"DKIM-Signature: this is not a tag list\r\n" + PLAIN
    assert results(garbage, {}) == [("permerror", "tag without '=': 'this is not a tag list'")]


def test_concurrent_lookups_and_key_cache(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = sign(PLAIN, [Signer("example.com", "r", rsa_key), Signer("example.com", "e", ed_key),
                          Signer("example.com", "r", rsa_key)], now=NOW) + PLAIN
    resolver = StaticResolver(dict(zone_for(r=rsa_key, e=ed_key)))
    parse_key_record.cache_clear()
    for _ in range(3):
        assert [r.result for r in run(signed, resolver)] == [Result.PASS] * 3
    assert sorted(set(resolver.queries)) == [("e._domainkey.example.com", "TXT"), ("r._domainkey.example.com", "TXT")]
    assert len(resolver.queries) == 6           # one query per key name per message
    info = parse_key_record.cache_info()
    assert info.misses == 2 and info.hits == 7  # each record parsed once


def test_header_b_tells_signatures_apart(ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = _ours(ed_key)
    field = _Message(signed).by_name[b"dkim-signature"][0]
    sig = DKIMSignature.parse(field.value)
    # A copy of the signature whose b= differs only from the 11th character on.
    b = sig.b_text
    twin_b = b[:10] + ("A" if b[10] != "A" else "B") + b[11:]
    head = field.raw[: field.raw.rindex(b" b=") + 3]   # our signer puts b= last
    twin = head + twin_b.encode() + b"\r\n"
    got = run(twin + signed, zone_for(sel=ed_key))
    assert [r.result for r in got] == [Result.FAIL, Result.PASS]
    assert got[0].header_b == twin_b[:11] and got[1].header_b == b[:11]
    # Alone, a signature shows the first 8 characters.
    assert run(signed, zone_for(sel=ed_key))[0].header_b == b[:8]


def test_render() -> None:
    r = DKIMResult(Result.PASS, "example.com", "sel", "@example.com", "rsa-sha256", "", "ab/cd+ef", 2048)
    assert r.render() == ('dkim=pass (2048-bit key) header.d=example.com header.i=@example.com '
                          'header.s=sel header.a=rsa-sha256 header.b="ab/cd+ef"')
    f = DKIMResult(Result.FAIL, "example.com", reason='body hash "mismatch"')
    assert str(f) == 'dkim=fail reason="body hash \\"mismatch\\"" header.d=example.com'


# ----------------------------------------------------------------- tag lists and records

def test_tag_list_spans() -> None:
    data = b" v=1; b= abc\r\n def ;bh=x=; z= ;"
    tags = parse_tag_list(data)
    assert tags["b"][0] == b"abc\r\n def"
    start, end = tags["b"][1:]
    assert data[start:end] == b" abc\r\n def "
    assert tags["bh"][0] == b"x=" and tags["z"][0] == b""
    assert parse_tag_list(b"") == {} and parse_tag_list(b"a=1;") == {"a": (b"1", 2, 3)}
    for bad in (b"a=1;;b=2", b"1a=2", b"a=1; a=2", b"a", b"a=\x00"):
        with pytest.raises(TagListError):
            parse_tag_list(bad)


def test_key_record_forms(rsa_key: rsa.RSAPrivateKey) -> None:
    rec = KeyRecord.parse(key_record(rsa_key))
    assert rec.key_type == "rsa" and rec.key_bits == 2048 and not rec.revoked
    # the bare RSAPublicKey (PKCS#1) that some publish instead of SubjectPublicKeyInfo
    pkcs1 = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    bare = KeyRecord.parse("p=" + base64.b64encode(pkcs1).decode())
    assert bare.key is not None and bare.key.public_numbers() == rsa_key.public_key().public_numbers()  # type: ignore[union-attr]
    folded = key_record(rsa_key).replace("p=", "p= ").replace("MII", "M I\tI")
    assert KeyRecord.parse(folded).key_bits == 2048
    assert KeyRecord.parse("v=DKIM1; s=email:tlsrpt; t=y:s:x; p=").revoked
    flags = KeyRecord.parse("v=DKIM1; t=y : s; p=")
    assert flags.testing and flags.strict
    for bad, why in [("p=AAAA; v=DKIM1", "v= is not the first tag"), ("k=dsa; p=", "unknown key type"),
                     ("s=tlsrpt; p=", "not for email"), ("v=DKIM1", "p= missing"),
                     ("p=!!!!", "not valid base64"), ("p=AAAA", "not an RSA public key")]:
        with pytest.raises(KeyRecordError, match=why):
            KeyRecord.parse(bad)


def test_signature_parse_values(ed_key: ed25519.Ed25519PrivateKey) -> None:
    field = _Message(_ours(ed_key, identity="Joe@Sub.Example.com", body_length=True)).by_name[b"dkim-signature"][0]
    sig = DKIMSignature.parse(field.value)
    assert sig.identity == "Joe@sub.example.com" and sig.identity_domain == "sub.example.com"
    assert sig.body_length == len(b"Shall we meet at noon?\r\n\r\nAlice\r\n")
    assert sig.header_canon is Canon.RELAXED and sig.key_name == "sel._domainkey.example.com"
    assert sig.timestamp == int(NOW) and sig.expiration is None
    assert DKIMSignature.parse(b"v=1; a=rsa-sha256; d=EXAMPLE.com; s=s; h=From; bh=AAAA; b=AAAA; c=relaxed"
                               ).body_canon is Canon.SIMPLE


class SlowResolver:
    """A resolver with a cold cache: every answer takes ``delay`` seconds."""

    def __init__(self, zone: dict[tuple[str, str], tuple[str, ...]], delay: float) -> None:
        self.inner = StaticResolver(dict(zone))
        self.delay = delay
        self.active = self.peak = 0

    async def query(self, name: str, rdtype: str) -> Answer:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            return await self.inner.query(name, rdtype)
        finally:
            self.active -= 1


def test_cold_lookups_go_out_together(ed_key: ed25519.Ed25519PrivateKey) -> None:
    signers = [Signer("example.com", s, ed_key) for s in ("a", "b", "c", "d")]
    signed = sign(PLAIN, signers, now=NOW) + PLAIN
    zone = zone_for(a=ed_key, b=ed_key, c=ed_key)          # no key at d: permerror
    zone[("c._domainkey.example.com", "TXT")] = ("v=DKIM1; k=ed25519; p=",)
    slow = SlowResolver(zone, 0.05)
    got = asyncio.run(verify(signed, slow, now=NOW))
    assert [r.result for r in got] == [Result.PASS, Result.PASS, Result.PERMERROR, Result.PERMERROR]
    assert slow.peak == 3          # the first alone, then the three others at once
    failing = StaticResolver(dict(zone), failing={"b._domainkey.example.com"})
    assert [r.result for r in run(signed, failing)] == [
        Result.PASS, Result.TEMPERROR, Result.PERMERROR, Result.PERMERROR]


# ----------------------------------------------------------------- robustness

_MUTATIONS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3),
                                st.sampled_from([b"", b";", b"=", b" ", b"\r\n", b"\r\n ", b"\t", b":",
                                                 b"b=", b"\xff", b"\x00", b"A", b"l=99;", b"h=to;"])),
                      min_size=1, max_size=6)


@pytest.fixture(scope="module")
def fuzz_case() -> tuple[bytes, StaticResolver]:
    rsa_k, ed_k = generate_key("rsa", 1024), generate_key("ed25519")
    signed = sign(PLAIN, [Signer("example.com", "r", rsa_k), Signer("example.com", "e", ed_k,
                                                                    header_canon=Canon.SIMPLE)], now=NOW)
    zone = zone_for(r=rsa_k, e=ed_k)
    zone[("x._domainkey.example.com", "TXT")] = ("v=DKIM1; p=\xff\ud800; k=rsa",)
    return signed + PLAIN, StaticResolver(dict(zone))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_MUTATIONS)
def test_mutated_messages_never_crash(fuzz_case: tuple[bytes, StaticResolver],
                                      mutations: list[tuple[int, int, bytes]]) -> None:
    """Invariant: whatever the bytes, verify() returns one result per
    DKIM-Signature field it finds, and never raises."""
    message, resolver = fuzz_case
    for at, cut, insert in mutations:
        at %= len(message) + 1
        message = message[:at] + insert + message[at + cut:]
    message = message.replace(b"s=r;", b"s=x;") if at % 7 == 0 else message
    got = asyncio.run(verify(message, resolver, now=NOW))
    fields = [f for f in split_message(message)[0] if f.name == b"dkim-signature"]
    assert len(got) == len(fields)
    assert all(isinstance(r.result, Result) for r in got)


def test_bad_key_records_never_crash(ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = _ours(ed_key)
    for record in ("v=DKIM1; k=ed25519; p=" + "A" * 43 + "=", "p=" + "A" * 10000, "v=DKIM1; p=\ud800",
                   "k=ed25519; p=" + base64.b64encode(b"\xff" * 32).decode(), ";;;", "=", "p"):
        got = run(signed, zone_for(sel=record))
        assert got[0].result in (Result.PERMERROR, Result.FAIL), (record, got)


def test_streamed_body_verifies_the_same(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    body = b"".join(b"paragraph %d \t of  text\r\n\r\n" % i for i in range(10_000))
    message = PLAIN.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    signed = sign(message, [Signer("example.com", "r", rsa_key, body_canon=Canon.SIMPLE),
                            Signer("example.com", "e", ed_key, body_length=True)], now=NOW) + message
    zone = StaticResolver(dict(zone_for(r=rsa_key, e=ed_key)))
    allow = VerifyPolicy(allow_body_length=True)

    def streamed(data: bytes) -> list[tuple[str, str]]:
        cut = data.index(b"\r\n\r\n") + 4
        chunks = (data[i : i + 4096] for i in range(cut, len(data), 4096))
        got = asyncio.run(verify(data[:cut], zone, now=NOW, policy=allow, body_chunks=chunks))
        return [(r.result.value, r.reason) for r in got]

    assert streamed(signed) == results(signed, zone, allow) == [("pass", "")] * 2
    appended = signed + b"appended\r\n"          # only the l= signature survives
    assert streamed(appended) == results(appended, zone, allow) == [("fail", "body hash mismatch"), ("pass", "")]
    cut_short = signed[: -len(b"paragraph 9999 \t of  text\r\n\r\n")]
    assert streamed(cut_short) == results(cut_short, zone, allow)
    assert streamed(cut_short)[1][1].startswith("l=")


_TAG_SOUP = st.lists(st.sampled_from([b"v=1", b"a=rsa-sha256", b"a=ed25519-sha256", b"b=AAAA", b"bh=AAAA",
                                      b"d=example.com", b"d=\xc3\xa9.example", b"h=from", b"h=:", b"s=s",
                                      b"i=@example.com", b"i=x", b"l=9", b"l=-1", b"t=1", b"x=0", b"q=dns",
                                      b"c=relaxed", b"c=x/y", b"p=", b"k=ed25519", b"t=y:s", b"=", b";", b" ",
                                      b"\r\n ", b"\xff", b"\x00", b"z=\xf0\x9f"]),
                     max_size=12).map(b";".join)


@settings(max_examples=300, deadline=None)
@given(_TAG_SOUP)
def test_parsers_raise_only_their_errors(data: bytes) -> None:
    """Invariant: the parsers accept or raise their own ValueError, nothing else."""
    try:
        DKIMSignature.parse(data)
    except SignatureSyntaxError:
        pass
    try:
        KeyRecord.parse(data.decode("utf-8", "replace"))
    except KeyRecordError:
        pass
