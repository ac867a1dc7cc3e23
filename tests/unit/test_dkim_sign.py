"""DKIM signing (RFC 6376 §5, RFC 8463) and keys: checked by our verifier and by dkimpy."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import stat
import time
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pillarbox.policy.dkim import Canon, Result, Signer, VerifyPolicy, sign, verify
from pillarbox.policy.dkim.canon import split_message
from pillarbox.policy.dkim.keys import (
    generate_key,
    key_record,
    make_selector,
    private_key_pem,
    read_private_key,
    record_name,
    write_private_key,
    zone_lines,
)
from pillarbox.policy.dkim.record import DKIMSignature, KeyRecord
from pillarbox.policy.dkim.sign import DEFAULT_HEADERS, signature_fields
from pillarbox.policy.dns import StaticResolver


def need_nacl() -> None:
    """dkimpy does Ed25519 with PyNaCl (a test dependency): skip without it, fail under CI."""
    try:
        import nacl  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("PyNaCl is not installed (pyproject.toml, test extra)")
        pytest.skip("dkimpy needs PyNaCl for Ed25519")

NOW = 1_796_000_000.0

MESSAGE = (b"Received: from client by mail.example.com\r\n"
           b"From: Alice <alice@example.com>\r\nTo: bob@example.org,\r\n carol@example.net\r\n"
           b"Subject: The report \t(final)\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
           b"Message-ID: <r1@example.com>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nX-Mailer: test\r\n\r\n"
           b"Here it is.  \r\n\tIndented\r\n\r\n\r\n")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    key = generate_key("rsa")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    key = generate_key("ed25519")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def zone(**keys: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> dict[str, str]:
    return {f"{s}._domainkey.example.com": key_record(k) for s, k in keys.items()}


def ours(message: bytes, records: dict[str, str], policy: VerifyPolicy = VerifyPolicy(),
         now: float = NOW) -> list[str]:
    resolver = StaticResolver({(n, "TXT"): (v,) for n, v in records.items()})
    return [r.result.value for r in asyncio.run(verify(message, resolver, now=now, policy=policy))]


def dkimpy_results(message: bytes, records: dict[str, str]) -> list[bool]:
    if b"ed25519" in message:
        need_nacl()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()

    checker = dkimpy.DKIM(message)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    return [bool(checker.verify(idx=i, dnsfunc=dnsfunc)) for i in range(count)]


# ----------------------------------------------------------------- signatures others accept

@pytest.mark.parametrize("canon", [(Canon.RELAXED, Canon.RELAXED), (Canon.SIMPLE, Canon.SIMPLE),
                                   (Canon.RELAXED, Canon.SIMPLE), (Canon.SIMPLE, Canon.RELAXED)])
def test_dual_signature_verified_by_dkimpy_and_us(canon: tuple[Canon, Canon], rsa_key: rsa.RSAPrivateKey,
                                                  ed_key: ed25519.Ed25519PrivateKey) -> None:
    h, b = canon
    signers = [Signer("example.com", "r1", rsa_key, header_canon=h, body_canon=b),
               Signer("example.com", "e1", ed_key, header_canon=h, body_canon=b)]
    signed = sign(MESSAGE, signers) + MESSAGE
    records = zone(r1=rsa_key, e1=ed_key)
    assert ours(signed, records, now=time.time()) == ["pass", "pass"]
    assert dkimpy_results(signed, records) == [True, True]


def test_body_length_and_identity_verified_by_dkimpy(rsa_key: rsa.RSAPrivateKey) -> None:
    signer = Signer("example.com", "r1", rsa_key, identity="alice@news.example.com", body_length=True,
                    expire_after=3600)
    signed = sign(MESSAGE, [signer]) + MESSAGE
    sig = DKIMSignature.parse(split_message(signed)[0][0].value)
    assert sig.identity == "alice@news.example.com" and sig.body_length is not None
    assert sig.expiration is not None and sig.timestamp is not None and sig.expiration - sig.timestamp == 3600
    assert dkimpy_results(signed, zone(r1=rsa_key)) == [True]
    assert ours(signed, zone(r1=rsa_key), VerifyPolicy(allow_body_length=True),
                now=time.time()) == ["pass"]


def test_tampering_breaks_our_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    signed = sign(MESSAGE, [Signer("example.com", "r1", rsa_key)], now=NOW) + MESSAGE
    records = zone(r1=rsa_key)
    assert ours(signed, records) == ["pass"]
    # Over-signed fields cannot be added, even those the message lacks (Cc, Reply-To).
    for added in (b"From: x@evil.example\r\n", b"Subject: x\r\n", b"Cc: x@evil.example\r\n",
                  b"Reply-To: x@evil.example\r\n", b"To: x@evil.example\r\n"):
        assert ours(added + signed, records) == ["fail"], added
    # Fields that are not signed may come and go; the signed ones may not change.
    assert ours(b"Received: from relay\r\nX-Spam: no\r\n" + signed, records) == ["pass"]
    assert ours(signed.replace(b"X-Mailer: test\r\n", b""), records) == ["pass"]
    assert ours(signed.replace(b"charset=utf-8", b"charset=latin1"), records) == ["fail"]
    assert ours(signed.replace(b"Indented", b"indented"), records) == ["fail"]
    assert ours(signed + b"appended\r\n", records) == ["fail"]


# ----------------------------------------------------------------- what is signed, and how

def test_header_selection(ed_key: ed25519.Ed25519PrivateKey) -> None:
    field = signature_fields(MESSAGE, [Signer("example.com", "e1", ed_key)], now=NOW)[0]
    sig = DKIMSignature.parse(split_message(field)[0][0].value)
    assert sig.signed_headers == (b"from", b"from", b"reply-to", b"subject", b"subject", b"date",
                                  b"message-id", b"to", b"to", b"cc", b"mime-version", b"content-type")
    assert b"received" not in sig.signed_headers and b"x-mailer" not in sig.signed_headers
    assert sig.header_canon is Canon.RELAXED and sig.body_canon is Canon.RELAXED
    assert sig.domain == "example.com" and sig.selector == "e1" and sig.timestamp == int(NOW)
    assert sig.algorithm == "ed25519-sha256"


def test_folding(rsa_key: rsa.RSAPrivateKey) -> None:
    long_list = tuple(f"x-header-number-{i}" for i in range(30))
    signer = Signer("example.com", "a-rather-long-selector-name", rsa_key,
                    headers=DEFAULT_HEADERS + long_list, oversign=("from",) + long_list)
    field = signature_fields(MESSAGE, [signer], now=NOW)[0]
    assert field.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert field.endswith(b"\r\n") and field.count(b"\r\n") > 5
    lines = field[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
    assert all(line[:1] == b" " for line in lines[1:])
    fields, _ = split_message(field + MESSAGE)
    assert len(fields) == 10 and fields[0].name == b"dkim-signature"
    assert DKIMSignature.parse(fields[0].value).signed_headers.count(b"x-header-number-29") == 1


def test_body_hashed_once_per_canonicalization(monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey,
                                               ed_key: ed25519.Ed25519PrivateKey) -> None:
    sign_module = importlib.import_module("pillarbox.policy.dkim.sign")  # the package's `sign` is the function
    calls: list[Canon] = []
    real = sign_module.canonical_body

    def counting(body: bytes, canon: Canon) -> bytes:
        calls.append(canon)
        return real(body, canon)

    monkeypatch.setattr(sign_module, "canonical_body", counting)
    sign(MESSAGE, [Signer("example.com", "r1", rsa_key), Signer("example.com", "e1", ed_key)])
    assert calls == [Canon.RELAXED]
    calls.clear()
    sign(MESSAGE, [Signer("example.com", "r1", rsa_key),
                   Signer("example.com", "e1", ed_key, body_canon=Canon.SIMPLE)])
    assert calls == [Canon.RELAXED, Canon.SIMPLE]


def test_empty_body_and_no_body(ed_key: ed25519.Ed25519PrivateKey) -> None:
    records = zone(e1=ed_key)
    for message in (b"From: a@example.com\r\nSubject: x\r\n\r\n", b"From: a@example.com\r\n",
                    b"From: a@example.com\r\n\r\nno final line end"):
        for body_canon in (Canon.SIMPLE, Canon.RELAXED):
            signed = sign(message, [Signer("example.com", "e1", ed_key, body_canon=body_canon)], now=NOW) + message
            assert ours(signed, records) == ["pass"], (message, body_canon)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"domain": "exa mple.com"}, "not a valid domain name"),
    ({"selector": ""}, "not a valid domain name"),
    ({"headers": ("subject",), "oversign": ()}, "From must be signed"),
    ({"headers": ("from", "received")}, "received must not be signed"),
    ({"identity": "joe@example.net"}, "not within d=example.com"),
    ({"identity": "example.com"}, "not within"),
    ({"identity": "joe;x@example.com"}, "cannot go in a tag list"),
    ({"expire_after": 0}, "expire_after must be positive"),
])
def test_signer_refuses_bad_configuration(kwargs: dict[str, object], error: str,
                                          ed_key: ed25519.Ed25519PrivateKey) -> None:
    args: dict[str, object] = {"domain": "example.com", "selector": "s", "key": ed_key} | kwargs
    with pytest.raises(ValueError, match=error):
        Signer(**args)  # type: ignore[arg-type]


def test_utf8_identity(ed_key: ed25519.Ed25519PrivateKey) -> None:
    signed = sign(MESSAGE, [Signer("example.com", "e1", ed_key, identity="jöe@example.com")], now=NOW) + MESSAGE
    assert "i=jöe@example.com;".encode() in signed
    assert ours(signed, zone(e1=ed_key)) == ["pass"]


def test_signer_domain_forms(ed_key: ed25519.Ed25519PrivateKey) -> None:
    assert Signer("Example.COM", "S1", ed_key).domain == "example.com"
    assert Signer("bücher.example", "s", ed_key).domain == "xn--bcher-kva.example"
    with pytest.raises(ValueError, match="RSA or Ed25519"):
        Signer("example.com", "s", ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


# ----------------------------------------------------------------- keys

def test_key_files(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    for name, key in (("rsa.pem", rsa_key), ("ed.pem", ed_key)):
        path = tmp_path / name
        old = os.umask(0)
        try:
            write_private_key(path, key)
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        back = read_private_key(path)
        assert private_key_pem(back) == private_key_pem(key)
        write_private_key(path, key)          # replacing works, and leaves no temporary file
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ValueError, match="missing.pem"):
        read_private_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_bytes(b"not a key")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        read_private_key(tmp_path / "junk.pem")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ec.pem").write_bytes(ec_pem)
    with pytest.raises(ValueError, match="neither RSA nor Ed25519"):
        read_private_key(tmp_path / "ec.pem")


def test_key_generation_limits() -> None:
    with pytest.raises(ValueError, match="1024 to 4096"):
        generate_key("rsa", 512)
    with pytest.raises(ValueError, match="unknown DKIM key algorithm"):
        generate_key("dsa")


def test_records_and_zone_lines(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    ed = key_record(ed_key)
    assert ed.startswith("v=DKIM1; k=ed25519; p=") and len(ed.split("p=")[1]) == 44   # 32 octets
    parsed = KeyRecord.parse(ed)
    assert parsed.key is not None and parsed.key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw) == ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    line = zone_lines("r202612", "Example.com", rsa_key)
    name, rest = line.split(" IN TXT ")
    assert name == "r202612._domainkey.example.com."
    strings = re.findall(r'"[^"]*"', rest)
    assert " ".join(strings) == rest
    assert len(strings) == 2 and all(s.startswith('"') and s.endswith('"') for s in strings)
    assert all(len(s) - 2 <= 255 for s in strings) and len(strings[0]) - 2 == 255
    assert "".join(s[1:-1] for s in strings) == key_record(rsa_key)
    assert KeyRecord.parse(key_record(rsa_key)).key_bits == 2048
    assert zone_lines("e1", "example.com", ed_key) == f'e1._domainkey.example.com. IN TXT "{ed}"'
    assert record_name("S", "example.com") == "s._domainkey.example.com"
    with pytest.raises(ValueError):
        record_name("bad selector", "example.com")


def test_make_selector(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    assert make_selector(rsa_key, NOW) == "r202611" and make_selector(ed_key, NOW) == "e202611"
    assert Signer("example.com", make_selector(ed_key, NOW), ed_key).selector == "e202611"
    assert make_selector(rsa_key, NOW, taken={"r202611", "R202611b"}) == "r202611c"


def test_generated_keys_sign_and_verify(tmp_path: Path) -> None:
    keys = {"r": generate_key("rsa"), "e": generate_key("ed25519")}
    for s, key in keys.items():
        write_private_key(tmp_path / s, key)
    signers = [Signer("example.com", s, read_private_key(tmp_path / s)) for s in keys]
    signed = sign(MESSAGE, signers, now=NOW) + MESSAGE
    records = {f"{s}._domainkey.example.com": key_record(k) for s, k in keys.items()}
    assert ours(signed, records) == ["pass", "pass"]
    assert [r.result for r in asyncio.run(verify(signed, StaticResolver(), now=NOW))] == [Result.PERMERROR] * 2


def test_streamed_body_signs_the_same(ed_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    body = b"".join(b"line %d with  spaces \t\r\n" % i for i in range(20_000)) + b"\r\n\r\n"
    message = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    head_len = message.index(b"\r\n\r\n") + 4 + 1000     # the header block and a little body
    chunks = [message[i : i + 7777] for i in range(head_len, len(message), 7777)]
    for canon in (Canon.SIMPLE, Canon.RELAXED):
        signers = [Signer("example.com", "e1", ed_key, body_canon=canon, body_length=True)]
        whole = sign(message, signers, now=NOW)
        streamed = sign(message[:head_len], signers, now=NOW, body_chunks=iter(chunks))
        assert streamed == whole                              # Ed25519 is deterministic
    signers = [Signer("example.com", "r1", rsa_key), Signer("example.com", "e1", ed_key)]
    streamed = sign(message[:head_len], signers, now=NOW, body_chunks=iter(chunks))
    assert ours(streamed + message, zone(r1=rsa_key, e1=ed_key)) == ["pass", "pass"]


def test_kept_templates_sign_as_a_new_signer(ed_key: ed25519.Ed25519PrivateKey) -> None:
    """The folded field and h= a signer keeps (per h= and value widths) give the same
    octets as a signer that never signed, whatever was signed before: other
    header sets, t= of another width, l= growing a digit, x=."""
    def signer() -> Signer:
        return Signer("example.com", "e1", ed_key, identity="alice@example.com",
                      body_length=True, expire_after=86400)
    kept = signer()
    small = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\nshort\r\n"
    large = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + b"long line\r\n" * 1000
    other = b"From: a@example.com\r\nSubject: x\r\nSubject: y\r\n\r\nbody\r\n"
    for message in (MESSAGE, small, large, other, MESSAGE, large):
        for now in (NOW, 99.0, NOW + 1):
            assert sign(message, [kept], now=now) == sign(message, [signer()], now=now)
    signed = sign(large, [kept]) + large
    assert ours(signed, zone(e1=ed_key), VerifyPolicy(allow_body_length=True),
                now=time.time()) == ["pass"]
