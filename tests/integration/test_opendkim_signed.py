"""Our DKIM verifier against signatures made by a real signer: OpenDKIM.

OpenDKIM is the other side of ``test_dkim_signing.py`` (where it verifies our
signatures): here it *signs*, and Pillarbox verifies, both inside a running
server (the ``Authentication-Results:`` field of the delivered message) and
directly (:func:`pillarbox.policy.dkim.verify.verify` with a
:class:`~pillarbox.policy.dns.StaticResolver`), each result compared with
dkimpy's verifier on the same bytes.

How OpenDKIM signs here (Debian's ``opendkim`` 2.11, with ``opendkim-tools``):

* Keys: ``opendkim-genkey -b 2048`` and ``-b 1024`` (RSA; the ``.txt`` file is
  the zone line, its quoted strings are the TXT record). ``opendkim-genkey``
  makes no Ed25519 keys, so that one is a PKCS#8 PEM made with
  ``cryptography``, which OpenDKIM reads as it is (RFC 8463 signatures).
* Signing: ``opendkim -x CONF -t FILE`` (test mode) with ``Mode s``, a
  ``KeyTable`` (``name domain:selector:path``) and a ``SigningTable``
  (``refile:``, the pattern ``*`` so that any author is signed, whatever its
  domain), ``MultipleSignatures yes`` (one signature per key), and
  ``Canonicalization``. ``SignatureAlgorithm`` is one per run, so the RSA keys
  sign in one run and the Ed25519 key in a second run over its output.
  ``RequireSafeKeys no``: the keys live in a temporary directory under /tmp.
  Test mode prints each new ``DKIM-Signature:`` field on standard output after
  a line ``opendkim: FILE:``, folded with CRLF; the message itself is not
  printed, so the fields are put on top of the input, as a milter's
  ``smfi_insheader(ctx, 0, …)`` does.
* ``opendkim-testmsg`` (the other way) signs only with the library's
  defaults: ``rsa-sha1`` and ``c=relaxed/simple``, which RFC 8301 §3.1 forbids
  accepting; it is not used.
* What OpenDKIM hashes under ``c=simple`` headers: its test harness (and a
  milter without the MTA's leading-space option) hands it each field as name
  and value without the whitespace after the colon, and OpenDKIM hashes
  ``Name: value`` (one space). A field such as ``Subject:\\thi`` or
  ``Subject:  hi`` is therefore signed as ``Subject: hi``, and OpenDKIM alone
  accepts the signature of the original (it reads its input the same way):
  dkimpy and Pillarbox both say fail, and both pass once the field is written
  the way OpenDKIM hashed it (``test_simple_headers_are_hashed_with_one_space``).
  The messages signed with ``c=simple`` headers here have one space after each
  colon; folding, trailing white space and the rest are kept as they are.
* Ed25519 with ``c=simple`` headers: the signatures of Debian's OpenDKIM
  2.11.0~beta2 fail in OpenDKIM's own verifier too (as in dkimpy and ours),
  so Ed25519 signs only with relaxed headers here;
  ``test_ed25519_with_simple_headers_all_verifiers_agree`` checks that all
  three verifiers give the same verdict on them, whatever it is.

OpenDKIM's own verifier (``Mode v`` with ``TestPublicKeys``, no DNS) checks
its signatures too; it reports the top signature only.  The tools are
Debian's ``opendkim`` and ``opendkim-tools`` (installed by ``.ci/run``);
without them these tests skip, naming the tool, and under CI=true they fail.

Messages: folded header fields and trailing white space, an 8-bit UTF-8 body
(and a UTF-8 Subject, sent with SMTPUTF8), and two multipart messages of the
MIME corpus (``tests/mime/data``: the RFC 2049 example and MimeKit's
``simple-multipart.eml``), each signed with ``relaxed/relaxed`` and
``simple/simple`` (and the mixed pairs, for the direct checks).
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pillarbox.policy.dkim.verify import DKIMResult, Result, verify
from pillarbox.policy.dns import StaticResolver
from tests.conftest import ROOT, Server, add_account, need_tool
from tests.dnsserver import DNSServer, dnsmasq

SIGNER = "signer.test"
HOST = "mx.example.test"
ALICE = "alice@example.test"
CORPUS = ROOT / "tests" / "mime" / "data"
CANONS = ("relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed")


@dataclass(frozen=True)
class Key:
    selector: str
    algorithm: str      # OpenDKIM's SignatureAlgorithm
    path: Path
    strings: tuple[str, ...]   # the TXT record's character strings (each <= 255)

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{SIGNER}"

    @property
    def record(self) -> str:
        return "".join(self.strings)


@dataclass(frozen=True)
class Signer:
    opendkim: str
    directory: Path
    rsa: tuple[Key, ...]
    ed25519: Key

    @property
    def keys(self) -> tuple[Key, ...]:
        return (*self.rsa, self.ed25519)

    def default_keys(self, canon: str) -> tuple[Key, ...]:
        """Every key, less Ed25519 under simple headers (module docstring)."""
        return self.keys if canon.startswith("relaxed") else self.rsa

    def selectors(self, canon: str) -> list[str]:
        """The s= of :meth:`sign`'s signatures, top to bottom: the last run's
        on top, and within a run the SigningTable's last key on top."""
        chosen = self.default_keys(canon)
        return [k.selector for algorithm in ("ed25519-sha256", "rsa-sha256")
                for k in reversed(chosen) if k.algorithm == algorithm]

    def sign(self, message: bytes, canon: str, *, keys: tuple[Key, ...] | None = None,
             extra: tuple[str, ...] = ()) -> bytes:
        """``message`` signed by OpenDKIM with ``keys`` (default: the RSA keys
        in one run, then, with relaxed headers, Ed25519 over the result)."""
        chosen = self.default_keys(canon) if keys is None else keys
        signed = message
        for algorithm in ("rsa-sha256", "ed25519-sha256"):
            batch = [k for k in chosen if k.algorithm == algorithm]
            if batch:
                signed = self._run(signed, canon, algorithm, batch, extra)
        return signed

    def _run(self, message: bytes, canon: str, algorithm: str, keys: list[Key],
             extra: tuple[str, ...]) -> bytes:
        d = self.directory
        (d / "KeyTable").write_text("".join(
            f"{k.selector} {SIGNER}:{k.selector}:{k.path}\n" for k in keys))
        (d / "SigningTable").write_text("".join(f"* {k.selector}\n" for k in keys))
        conf = d / "sign.conf"
        conf.write_text("\n".join([
            "Mode s", "Syslog no", "Background no", "RequireSafeKeys no",
            f"KeyTable refile:{d / 'KeyTable'}", f"SigningTable refile:{d / 'SigningTable'}",
            "MultipleSignatures yes", f"Canonicalization {canon}",
            f"SignatureAlgorithm {algorithm}", *extra,
        ]) + "\n")
        path = d / "message.eml"
        path.write_bytes(message)
        done = subprocess.run([self.opendkim, "-x", str(conf), "-t", str(path)],
                              capture_output=True, timeout=60)
        out = done.stdout.decode("ascii", "replace")
        assert done.returncode == 0 and "no signature added" not in out, (out, done.stderr)
        fields = re.findall(r"^(DKIM-Signature:.*?)(?=\n(?:opendkim: )|\n*\Z)",
                            out.replace("\r\n", "\n"), re.S | re.M)
        assert len(fields) == len(keys), out
        # Each inserted on top in turn, as a milter's smfi_insheader(ctx, 0, ...)
        # does (the last ends on top); folded lines CRLF-terminated (RFC 5322 §2.2.3).
        return b"".join(f.rstrip("\n").replace("\n", "\r\n").encode() + b"\r\n"
                        for f in reversed(fields)) + message

    def verifies(self, message: bytes) -> str:
        """What OpenDKIM's own verifier says (it reports the top signature only)."""
        d = self.directory
        keys = d / "TestPublicKeys"
        keys.write_text("".join(f"{k.name} {k.record}\n" for k in self.keys))
        conf = d / "verify.conf"
        conf.write_text(f"Mode v\nSyslog no\nBackground no\nTestPublicKeys {keys}\n")
        path = d / "verify.eml"
        path.write_bytes(message)
        done = subprocess.run([self.opendkim, "-x", str(conf), "-t", str(path)],
                              capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr


def _genkey(tool: str, directory: Path, bits: int, selector: str) -> Key:
    subprocess.run([tool, "-b", str(bits), "-d", SIGNER, "-s", selector, "-D", str(directory)],
                   check=True, capture_output=True, timeout=120)
    zone = (directory / f"{selector}.txt").read_text()
    strings = tuple(re.findall(r'"([^"]*)"', zone))
    assert "".join(strings).startswith("v=DKIM1;") and all(len(s) <= 255 for s in strings)
    return Key(selector, "rsa-sha256", directory / f"{selector}.private", strings)


def _ed25519_key(directory: Path, selector: str) -> Key:
    key = ed25519.Ed25519PrivateKey.generate()
    path = directory / f"{selector}.private"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return Key(selector, "ed25519-sha256", path,
               (f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}",))


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    opendkim = need_tool("opendkim")
    genkey = need_tool("opendkim-genkey")
    directory = tmp_path_factory.mktemp("opendkim")
    rsa = (_genkey(genkey, directory, 2048, "od2048"), _genkey(genkey, directory, 1024, "od1024"))
    return Signer(opendkim, directory, rsa, _ed25519_key(directory, "oded"))


# --- the messages --------------------------------------------------------------

def _crlf(text: bytes) -> bytes:
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


FOLDED = _crlf(b"""\
From: "A. Sender"
  <news@signer.test>
To: alice@example.test,
\tbob@example.test
Subject: a subject folded over
 two lines, with trailing white space \t
Date: Wed, 02 Dec 2026 03:00:00 +0000
Message-ID: <folded@signer.test>
X-Trailing: value with spaces after it   \n\
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Body lines with trailing white space  \t
  and leading white space,
\tand  runs   of   spaces.


""")

UTF8 = _crlf("""\
From: Jörg <news@signer.test>
To: alice@example.test
Subject: Grüße aus Köln
Date: Wed, 02 Dec 2026 03:00:00 +0000
Message-ID: <utf8@signer.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße aus Köln — ¡señor!
山田太郎 · Ελληνικά · עברית \t
""".encode())

MESSAGES: dict[str, bytes] = {
    "folded": FOLDED,
    "utf8": UTF8,
    "rfc2049-multipart": _crlf((CORPUS / "rfc-examples" / "000.eml").read_bytes()),
    "mimekit-multipart": _crlf((CORPUS / "mimekit" / "simple-multipart.eml").read_bytes()),
}


def _with_one_space(message: bytes) -> None:
    """The messages keep to the form OpenDKIM hashes under c=simple (module docstring)."""
    head = message.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            assert re.match(rb"[!-9;-~]+: \S", line), line


# --- the verifiers -------------------------------------------------------------

def _resolver(signer: Signer) -> StaticResolver:
    return StaticResolver({(k.name, "TXT"): (k.record,) for k in signer.keys})


def ours(signer: Signer, message: bytes) -> list[DKIMResult]:
    return asyncio.run(verify(message, _resolver(signer)))


def dkimpy_says(signer: Signer, message: bytes) -> list[bool]:
    records = {k.name: k.record for k in signer.keys}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name.decode().rstrip(".").lower(), "").encode()

    checker = dkimpy.DKIM(message)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    return [_dkimpy_one(checker, i, dnsfunc) for i in range(count)]


def _dkimpy_one(checker: dkimpy.DKIM, idx: int, dnsfunc: object) -> bool:
    try:
        return bool(checker.verify(idx=idx, dnsfunc=dnsfunc))
    except dkimpy.DKIMException:   # DKIM.verify raises for a body hash mismatch
        return False


def compared(signer: Signer, message: bytes) -> list[str]:
    """Each signature's result by our verifier, checked against dkimpy's
    (pass where it says valid, fail where it does not)."""
    mine = ours(signer, message)
    theirs = dkimpy_says(signer, message)
    assert len(mine) == len(theirs), (mine, theirs)
    for r, valid in zip(mine, theirs):
        assert (r.result is Result.PASS) == valid, (r.render(), valid)
    return [r.result.value for r in mine]


def tampered_body(message: bytes) -> bytes:
    head, sep, body = message.partition(b"\r\n\r\n")
    i = next(i for i, c in enumerate(body) if chr(c).isalpha())
    changed = body[:i] + (b"X" if body[i:i + 1] != b"X" else b"Y") + body[i + 1:]
    return head + sep + changed


def tampered_header(message: bytes) -> bytes:
    out = re.sub(rb"(?m)^Date: [^\r]*", b"Date: Thu, 03 Dec 2026 04:00:00 +0000", message, count=1)
    assert out != message
    return out


# --- direct: our verifier and dkimpy on OpenDKIM's signatures ------------------

@pytest.mark.parametrize("canon", CANONS)
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_opendkim_signatures_verify_like_dkimpy(signer: Signer, name: str, canon: str) -> None:
    message = MESSAGES[name]
    if canon.startswith("simple"):
        _with_one_space(message)
    signed = signer.sign(message, canon)
    n = len(signer.selectors(canon))
    assert compared(signer, signed) == ["pass"] * n
    results = ours(signer, signed)
    bits = {"oded": 256, "od2048": 2048, "od1024": 1024}
    assert [(r.selector, r.key_bits) for r in results] == [
        (s, bits[s]) for s in signer.selectors(canon)]
    assert {r.domain for r in results} == {SIGNER}
    assert all(r.identity == f"@{SIGNER}" for r in results)
    # OpenDKIM agrees with itself (it reports the top signature).
    said = signer.verifies(signed)
    assert "verification" in said and "succeeded" in said, said

    assert compared(signer, tampered_body(signed)) == ["fail"] * n
    assert {r.reason for r in ours(signer, tampered_body(signed))} == {"body hash mismatch"}
    assert compared(signer, tampered_header(signed)) == ["fail"] * n
    assert {r.reason for r in ours(signer, tampered_header(signed))} == {"bad signature"}


@pytest.mark.parametrize("canon", CANONS)
def test_refolding_survives_relaxed_only(signer: Signer, canon: str) -> None:
    """A relay that unfolds a field and squeezes white space (RFC 6376 §3.4.2)
    keeps relaxed header signatures valid and breaks simple ones; trailing
    white space stripped from body lines (§3.4.4) likewise for the body."""
    signed = signer.sign(FOLDED, canon)
    head, _, body = signed.partition(b"\r\n\r\n")
    refolded = head.replace(b"folded over\r\n two lines", b"folded over two lines").replace(
        b"   \r\n", b"\r\n")
    assert refolded != head
    header_canon, body_canon = canon.split("/")
    want = "pass" if header_canon == "relaxed" else "fail"
    n = len(signer.selectors(canon))
    assert compared(signer, refolded + b"\r\n\r\n" + body) == [want] * n
    stripped = re.sub(rb"[ \t]+\r\n", b"\r\n", body)
    assert stripped != body
    want = "pass" if body_canon == "relaxed" else "fail"
    assert compared(signer, head + b"\r\n\r\n" + stripped) == [want] * n


@pytest.mark.parametrize("canon", ("relaxed/relaxed", "simple/simple"))
def test_oversigned_fields_and_a_longer_header_list(signer: Signer, canon: str) -> None:
    """``SignHeaders`` names more fields (one absent: it adds nothing, RFC 6376
    §5.4.2) and ``OversignHeaders`` lists From and Subject once more than
    present, so a Subject added on top breaks the signature; without
    oversigning the same addition does not (the bottom instance is signed)."""
    wide = ("SignHeaders From,To,Subject,Date,Message-ID,MIME-Version,Content-Type,"
            "X-Trailing,Reply-To",)
    over = signer.sign(FOLDED, canon, extra=(*wide, "OversignHeaders From,Subject"))
    plain = signer.sign(FOLDED, canon, extra=wide)
    n = len(signer.selectors(canon))
    for signed, oversigned in ((over, True), (plain, False)):
        h = re.search(rb"[; ]h=([^;]*);", signed.replace(b"\r\n\t", b" ")).group(1)  # type: ignore[union-attr]
        names = [x.strip().lower() for x in h.split(b":")]
        assert b"message-id" in names and b"x-trailing" in names
        assert names.count(b"subject") == (2 if oversigned else 1), names
        assert compared(signer, signed) == ["pass"] * n
        added = b"Subject: something else\r\n" + signed
        assert compared(signer, added) == (["fail"] if oversigned else ["pass"]) * n
        # A second From on top: oversigned, the signature breaks; not, our
        # policy refuses it (RFC 6376 §8.15), and dkimpy refuses it too.
        two_from = b"From: someone@else.test\r\n" + signed
        assert dkimpy_says(signer, two_from) == [False] * n
        mine = ours(signer, two_from)
        if oversigned:
            assert {(r.result, r.reason) for r in mine} == {(Result.FAIL, "bad signature")}
        else:
            assert {(r.result, r.reason) for r in mine} == {
                (Result.POLICY, "a From field is not covered by the signature")}


def _large_body() -> bytes:
    """Some 60 KB of lines with white space in every place canonicalization
    cares about (inside, at the end, blank lines), and trailing blank lines."""
    lines = []
    for i in range(1500):
        lines.append(f"line {i}\t with  runs \t of WSP {'x' * (i % 37)} {' ' * (i % 3)}")
        if i % 50 == 0:
            lines += ["", " \t", ""]
    return ("\r\n".join(lines) + "\r\n\r\n\r\n").encode()


@pytest.mark.parametrize("canon", CANONS)
def test_a_large_body_read_in_chunks(signer: Signer, canon: str) -> None:
    """The body hashed as it is read (``verify(..., body_chunks=...)``, as the
    server does for large messages), cut at every kind of place (inside CRLF,
    inside WSP runs), gives the same results as the whole message and dkimpy."""
    message = FOLDED.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" + _large_body()
    signed = signer.sign(message, canon)
    n = len(signer.selectors(canon))
    assert compared(signer, signed) == ["pass"] * n
    head, sep, body = signed.partition(b"\r\n\r\n")
    for size in (1, 2, 3, 17, 4096):
        if size == 1:
            body_part = body[:5000]           # 1-octet chunks: a part of it only
            rest = body[5000:]
            chunks = [body_part[i:i + 1] for i in range(len(body_part))] + [rest]
        else:
            chunks = [body[i:i + size] for i in range(0, len(body), size)]
        got = asyncio.run(verify(head + sep, _resolver(signer), body_chunks=chunks))
        assert [r.result for r in got] == [Result.PASS] * n, (size, [r.render() for r in got])
    broken = body.replace(b"line 1499", b"line 1498")
    chunks = [broken[i:i + 1000] for i in range(0, len(broken), 1000)]
    got = asyncio.run(verify(head + sep, _resolver(signer), body_chunks=chunks))
    assert [r.reason for r in got] == ["body hash mismatch"] * n
    assert compared(signer, head + sep + broken) == ["fail"] * n


def test_simple_headers_are_hashed_with_one_space(signer: Signer) -> None:
    """OpenDKIM's c=simple hashes ``Name: value`` whatever white space followed
    the colon (module docstring): dkimpy and we agree the original fails, and
    both pass the field as OpenDKIM hashed it; under relaxed all is well."""
    message = UTF8.replace("Subject: Grüße".encode(), "Subject:\tGrüße".encode())
    signed = signer.sign(message, "simple/simple", keys=signer.rsa[:1])
    assert "succeeded" in signer.verifies(signed)          # OpenDKIM reads it its own way
    assert compared(signer, signed) == ["fail"]
    assert [r.reason for r in ours(signer, signed)] == ["bad signature"]
    as_hashed = signed.replace("Subject:\tGrüße".encode(), "Subject: Grüße".encode())
    assert compared(signer, as_hashed) == ["pass"]
    assert compared(signer, signer.sign(message, "relaxed/relaxed")) == ["pass"] * 3


@pytest.mark.parametrize("canon", ("simple/simple", "simple/relaxed"))
def test_ed25519_with_simple_headers_all_verifiers_agree(signer: Signer, canon: str) -> None:
    signed = signer.sign(MESSAGES["utf8"], canon, keys=(signer.ed25519,))
    [verdict] = compared(signer, signed)
    said = signer.verifies(signed)
    assert ("succeeded" in said) == (verdict == "pass"), (verdict, said)
    assert verdict in ("pass", "fail")


def test_a_key_record_missing_or_revoked(signer: Signer) -> None:
    """Unpublished and revoked (``p=``) keys: permerror for us, invalid for dkimpy."""
    signed = signer.sign(MESSAGES["folded"], "relaxed/relaxed", keys=signer.rsa[:1])
    empty = StaticResolver({})
    [missing] = asyncio.run(verify(signed, empty))
    assert missing.result is Result.PERMERROR and "no key" in missing.reason
    revoked = StaticResolver({(signer.rsa[0].name, "TXT"): ("v=DKIM1; k=rsa; p=",)})
    [r] = asyncio.run(verify(signed, revoked))
    assert r.result is Result.PERMERROR and r.reason == "key revoked"
    assert not dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=")


# --- end to end: a running Pillarbox asking the test DNS ------------------------

@pytest.fixture(scope="module")
def dns(signer: Signer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSServer]:
    zone = ["txt-record=" + k.name + "," + ",".join(f'"{s}"' for s in k.strings)
            for k in signer.keys]
    with dnsmasq(tmp_path_factory.mktemp("dns"), zone) as server:
        yield server


@pytest.fixture(scope="module")
def server(dns: DNSServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("opendkim-server") / "data"
    data_dir.mkdir()
    add_account(data_dir, ALICE)
    # policy.dkim is on by default; SPF and DMARC stay off (the Server default),
    # so the DKIM results alone decide nothing and every message is delivered.
    server = Server(data_dir, {"server.hostname": HOST, "dns.nameservers": dns.nameserver})
    server.start()
    yield server
    server.stop()


def _send(server: Server, message: bytes) -> None:
    options = ["BODY=8BITMIME"] if max(message) > 127 else []
    if max(message.partition(b"\r\n\r\n")[0]) > 127:
        options.append("SMTPUTF8")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        code, reply = client.mail("bounce@signer.test", options)
        assert code == 250, reply
        code, reply = client.rcpt(ALICE)
        assert code == 250, reply
        code, reply = client.data(message)
        assert code == 250, reply


def _delivered(server: Server, marker: bytes, before: int) -> bytes:
    assert server.wait_delivered(before + 1) == before + 1, server.log()
    found = [m for m in server.inbox(ALICE) if marker in m]
    assert len(found) == 1
    return found[0]


def _dkim_results(raw: bytes) -> list[dict[str, str]]:
    """Each ``dkim=`` resinfo of our Authentication-Results field, as a dict of
    the result and its properties (RFC 8601 §2.2)."""
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    fields = [" ".join(str(v).split()) for v in msg.get_all("Authentication-Results", [])]
    [ours_] = [f for f in fields if f.startswith(f"{HOST};")]
    found = []
    for part in re.split(r";\s*", re.sub(r'"[^"]*"', '""', ours_)):
        if part.startswith("dkim="):
            words = dict(w.split("=", 1) for w in part.split() if "=" in w)
            found.append(words)
    return found


@pytest.mark.parametrize("canon", ("relaxed/relaxed", "simple/simple"))
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_pillarbox_server_passes_opendkim_signatures(signer: Signer, server: Server,
                                                     name: str, canon: str) -> None:
    signed = signer.sign(MESSAGES[name], canon)
    broken = {"body": tampered_body(signed), "header": tampered_header(signed)}
    marker = f"X-Test-Case: {name} {canon}".encode()
    for label, message in (("good", signed), *broken.items()):
        before = server.delivered()
        # The marker goes on top, above the signatures: it is not signed.
        _send(server, marker + f" {label}".encode() + b"\r\n" + message)
        raw = _delivered(server, marker + f" {label}".encode(), before)
        results = _dkim_results(raw)
        assert [(r["header.d"], r["header.s"]) for r in results] == [
            (SIGNER, s) for s in signer.selectors(canon)], results
        want = "pass" if label == "good" else "fail"
        assert [r["dkim"] for r in results] == [want] * len(results), results
        # What the server said is what our verifier and dkimpy say of the bytes sent.
        assert compared(signer, message) == [want] * len(results)
