"""Outbound DKIM over real sockets: ``pillarbox dkim`` in a subprocess beside ``pillarbox serve``.

* keys made with ``pillarbox dkim keygen`` (RSA-2048 and Ed25519), their zone-file
  lines parsed into the DNS the verifiers ask;
* a message submitted on the submission port (STARTTLS, AUTH) and delivered
  locally carries two DKIM-Signature fields, which our verifier and dkimpy
  both accept;
* rotation: ``rotate`` makes pending keys that do not sign, ``activate``
  switches the running server within seconds, and mail signed by the old keys
  still verifies while their records stay published;
* AUTH on port 25 is signed like submission; a client of
  ``smtp.trusted_networks`` (127.0.0.2 here) is signed, an unauthenticated
  client from outside is not;
* a damaged or missing key file: the domain's other key signs, then none,
  and the mail is still delivered, with the file named in the log;
* OpenDKIM (``opendkim -t``, Debian's opendkim package) verifies our signatures.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dkim as dkimpy
import pytest

from pillarbox.policy.dkim.verify import verify
from pillarbox.policy.dns import StaticResolver
from pillarbox.receive.signing import CHECK_EVERY
from tests.conftest import Server, add_account, need_tool

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret"
TRUSTED = "127.0.0.2"
ZONE_LINE = re.compile(r'^(\S+)\. IN TXT ((?:"[^"]*" ?)+)$')


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pillarbox", "-o", f"server.data_dir={data_dir}", *args],
        capture_output=True, text=True, check=check, cwd=data_dir.parent,
    )


def records(output: str) -> dict[str, str]:
    """The TXT records of the zone-file lines in ``output``, strings joined (RFC 6376 §3.6.2.2)."""
    out = {}
    for line in output.splitlines():
        m = ZONE_LINE.match(line)
        if m:
            strings = re.findall(r'"([^"]*)"', m.group(2))
            assert all(len(s) <= 255 for s in strings)
            out[m.group(1).lower()] = "".join(strings)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("dkim") / "data"
    data_dir.mkdir()
    add_account(data_dir, ALICE, PASSWORD)
    add_account(data_dir, BOB, PASSWORD)
    server = Server(data_dir, {
        "auth.allow_plaintext_on_loopback": "false",
        "smtp.trusted_networks": f"{TRUSTED}/32",
    })
    server.dns = {}  # type: ignore[attr-defined]   # every record printed so far
    server.start()
    yield server
    server.stop()


def submit(server: Server, subject: str, sender: str = ALICE, to: str = BOB) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=15) as client:
        client.starttls(context=ctx)
        client.login(ALICE, PASSWORD)
        client.sendmail(sender, [to], message(sender, to, subject))


def message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Body of {subject}.\r\n\r\n\r\nWith  spaces \t and trailing blank lines.\r\n"
            "\r\n\r\n").encode()


def wait_inbox(server: Server, subject: str, to: str = BOB, timeout: float = 15) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in server.inbox(to):
            if f"Subject: {subject}\r\n".encode() in msg:
                return msg
        time.sleep(0.05)
    raise AssertionError(f"{subject!r} not delivered to {to}")


def selectors(msg: bytes) -> list[str]:
    """The s= of each DKIM-Signature field (its tags come before the colons of h=)."""
    unfolded = msg.replace(b"\r\n ", b" ")
    return [s.decode() for s in re.findall(rb"DKIM-Signature:[^:]*?\bs=([a-z0-9-]+);", unfolded)]


def ours(msg: bytes, dns: dict[str, str]) -> list[tuple[str, str]]:
    resolver = StaticResolver({(n, "TXT"): (v,) for n, v in dns.items()})
    return [(r.selector, r.result.value) for r in asyncio.run(verify(msg, resolver))]


def dkimpy_results(msg: bytes, dns: dict[str, str]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return dns.get(name.decode().rstrip(".").lower(), "").encode()

    checker = dkimpy.DKIM(msg)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    return [bool(checker.verify(idx=i, dnsfunc=dnsfunc)) for i in range(count)]


def keygen(server: Server, *args: str) -> str:
    out = cli(server.data_dir, "dkim", *args).stdout
    server.dns.update(records(out))  # type: ignore[attr-defined]
    return out


def test_1_keygen_prints_records_and_submission_is_dual_signed(server: Server) -> None:
    out = keygen(server, "keygen", "example.test")
    found = records(out)
    assert sorted(found) == sorted(f"{s}._domainkey.example.test" for s in selectors_of(out))
    assert {v.split(";")[1].strip() for v in found.values()} == {"k=rsa", "k=ed25519"}
    rsa_line = next(line for line in out.splitlines() if "k=rsa" in line)
    assert rsa_line.count('" "') == 1, "a 2048-bit key record is split into two strings"
    assert "do not sign yet" in out
    # Pending keys do not sign.
    submit(server, "before-activate")
    assert selectors(wait_inbox(server, "before-activate")) == []

    rsa_sel = next(s for s in selectors_of(out) if s.startswith("r"))
    done = cli(server.data_dir, "dkim", "activate", "example.test", rsa_sel).stdout
    assert "now signs with" in done
    time.sleep(CHECK_EVERY + 0.5)   # the worker looks at the store's keys again
    submit(server, "signed")
    msg = wait_inbox(server, "signed")
    assert sorted(selectors(msg)) == sorted(selectors_of(out))
    # Below our Received: line, which stays the first trace field.
    assert msg.index(b"Received:") < msg.index(b"DKIM-Signature:"), "signatures below Received"
    assert b"Message-ID:" in msg and b"Date:" in msg      # added before signing (RFC 6409 §8)
    dns = server.dns  # type: ignore[attr-defined]
    assert sorted(r for _, r in ours(msg, dns)) == ["pass", "pass"]
    assert dkimpy_results(msg, dns) == [True, True]
    # Tampering is noticed: the signatures cover the header fields and body.
    forged = msg.replace(b"Subject: signed", b"Subject: SIGNED")
    assert [r for _, r in ours(forged, dns)] == ["fail", "fail"]
    assert "dkim=" in server.log() and rsa_sel in server.log()


def selectors_of(output: str) -> list[str]:
    return [m.group(1).split(".")[0] for m in map(ZONE_LINE.match, output.splitlines()) if m]


def test_2_remote_recipient_is_signed_in_the_queue(server: Server) -> None:
    # Mail to other domains waits in the queue (no DNS here): its blob is signed too.
    submit(server, "to-remote", to="carol@remote.example")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = server.query("SELECT id FROM queue")
        if rows:
            break
        time.sleep(0.05)
    from pillarbox.store.sqlite.store import SQLiteStore
    store = SQLiteStore(server.data_dir)
    try:
        blobs = [store.read_blob(r[0]) for r in rows]
    finally:
        store.close()
    msg = next(b for b in blobs if b"Subject: to-remote" in b)
    assert sorted(r for _, r in ours(msg, server.dns)) == ["pass", "pass"]  # type: ignore[attr-defined]


def test_3_rotation_keeps_old_records_valid_and_switches_on_activate(server: Server) -> None:
    old = sorted(selectors(wait_inbox(server, "signed")))
    out = keygen(server, "rotate", "example.test")
    new = sorted(selectors_of(out))
    assert set(new).isdisjoint(old) and "do not sign yet" in out
    listing = cli(server.data_dir, "dkim", "list", "example.test").stdout
    assert listing.count("pending") == 2 and listing.count("active since") == 2
    time.sleep(CHECK_EVERY + 0.5)
    submit(server, "after-rotate")
    assert sorted(selectors(wait_inbox(server, "after-rotate"))) == old

    done = cli(server.data_dir, "dkim", "activate", "example.test", new[0]).stdout
    assert done.count("keep its record published until") == 2
    listing = cli(server.data_dir, "dkim", "list").stdout
    assert listing.count("retired") == 2 and "keep published until" in listing
    time.sleep(CHECK_EVERY + 0.5)
    submit(server, "after-activate")
    msg = wait_inbox(server, "after-activate")
    assert sorted(selectors(msg)) == new
    dns = server.dns  # type: ignore[attr-defined]
    assert sorted(r for _, r in ours(msg, dns)) == ["pass", "pass"]
    assert dkimpy_results(msg, dns) == [True, True]
    # The old records stay published for the overlap: mail they signed still verifies.
    earlier = wait_inbox(server, "signed")
    assert sorted(r for _, r in ours(earlier, dns)) == ["pass", "pass"]
    assert dkimpy_results(earlier, dns) == [True, True]
    # An active key cannot be removed; a retired one can, with its file.
    refused = cli(server.data_dir, "dkim", "remove", "example.test", new[0], check=False)
    assert refused.returncode == 1 and "is active" in refused.stderr
    removed = cli(server.data_dir, "dkim", "remove", "example.test", old[0]).stdout
    assert "should stay published until" in removed
    assert not (server.data_dir / "dkim" / "example.test" / f"{old[0]}.pem").exists()
    assert (server.data_dir / "dkim" / "example.test" / f"{new[0]}.pem").stat().st_mode & 0o777 == 0o600


def test_3b_auth_on_port_25_is_signed(server: Server) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as client:
        client.starttls(context=ctx)
        client.login(ALICE, PASSWORD)
        client.sendmail(ALICE, [BOB], message(ALICE, BOB, "auth-on-25"))
    msg = wait_inbox(server, "auth-on-25")
    assert sorted(r for _, r in ours(msg, server.dns)) == ["pass", "pass"]  # type: ignore[attr-defined]


def test_4_trusted_network_relay_is_signed(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=15,
                      source_address=(TRUSTED, 0)) as client:
        client.sendmail("app@example.test", [BOB],
                        message("app@example.test", BOB, "from-the-web-app"))
    msg = wait_inbox(server, "from-the-web-app")
    dns = server.dns  # type: ignore[attr-defined]
    assert len(selectors(msg)) == 2
    assert sorted(r for _, r in ours(msg, dns)) == ["pass", "pass"]
    assert dkimpy_results(msg, dns) == [True, True]


def test_5_unauthenticated_client_is_not_signed(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as client:
        client.sendmail("someone@outside.example", [BOB],
                        message(ALICE, BOB, "forged-from-outside"))
    msg = wait_inbox(server, "forged-from-outside")
    assert b"DKIM-Signature:" not in msg
    assert b"Authentication-Results:" in msg     # judged as mail from elsewhere instead


def test_6_opendkim_verifies_our_signatures(server: Server) -> None:
    """OpenDKIM's own verifier (``opendkim -t``, test mode, keys from TestPublicKeys:
    no DNS), each signature alone since it reports only the first."""
    opendkim = need_tool("opendkim")
    msg = wait_inbox(server, "after-activate")
    dns = server.dns  # type: ignore[attr-defined]
    head, _, body = msg.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    sigs = [f for f in fields if f.lower().startswith(b"dkim-signature:")]
    rest = [f for f in fields if not f.lower().startswith(b"dkim-signature:")]
    assert len(sigs) == 2
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text("".join(f"{name} {value}\n" for name, value in dns.items()))
        conf = Path(tmp) / "opendkim.conf"
        conf.write_text(f"Mode v\nSyslog no\nBackground no\nTestPublicKeys {keys}\n"
                        "Nameservers 127.0.0.1\n")

        def opendkim_says(message: bytes) -> str:
            path = Path(tmp) / "message.eml"
            path.write_bytes(message)
            result = subprocess.run([opendkim, "-x", str(conf), "-t", str(path)],
                                    capture_output=True, text=True, timeout=30)
            return result.stdout + result.stderr

        for sig in sigs:
            said = opendkim_says(b"\r\n".join([sig, *rest]) + b"\r\n\r\n" + body)
            assert "verification" in said and "succeeded" in said, said
        tampered = (b"\r\n".join([sigs[0], *rest]) + b"\r\n\r\n" + body).replace(
            b"Subject: after-activate", b"Subject: tampered")
        said = opendkim_says(tampered)
        assert "failed" in said and "succeeded" not in said, said


def test_7_an_unreadable_key_sends_unsigned_and_says_why(server: Server) -> None:
    """Last: it breaks the keys.  The workers read the keys again when the store's
    version changes (here: keys made for another domain)."""
    active = [line.split()[1] for line in
              cli(server.data_dir, "dkim", "list", "example.test").stdout.splitlines()
              if "active since" in line]
    assert len(active) == 2
    (server.data_dir / "dkim" / "example.test" / f"{active[0]}.pem").write_text("damaged\n")
    keygen(server, "keygen", "elsewhere.test")
    time.sleep(CHECK_EVERY + 0.5)
    submit(server, "one-key-left")
    msg = wait_inbox(server, "one-key-left")
    assert selectors(msg) == [active[1]]
    (server.data_dir / "dkim" / "example.test" / f"{active[1]}.pem").unlink()
    cli(server.data_dir, "dkim", "remove", "elsewhere.test", selectors_of(
        cli(server.data_dir, "dkim", "list", "--records", "elsewhere.test").stdout)[0])
    time.sleep(CHECK_EVERY + 0.5)
    submit(server, "no-key-left")
    assert b"DKIM-Signature:" not in wait_inbox(server, "no-key-left")
    log = server.log()
    assert "dkim key unusable" in log and f"{active[0]}.pem" in log and f"{active[1]}.pem" in log
