"""Interop with a real peer: Postfix's smtp(8) client relaying into Pillarbox.

A private Postfix instance (``tests/interop/postfix.py``) is a null client
whose ``relayhost`` is Pillarbox, with ``smtp_tls_security_level = encrypt``
(STARTTLS is mandatory, the self-signed certificate is not verified) and
SMTPUTF8 on.  Five messages go in through Postfix's ``sendmail`` and out
through its SMTP client:

1. plain ASCII, with the lines that exercise dot transparency (RFC 5321
   4.5.2) and a text line of exactly 998 octets (4.5.3.1.6);
2. an 8-bit UTF-8 body with ASCII headers: ``BODY=8BITMIME`` (RFC 6152);
3. to ``jörg@example.test`` from a non-ASCII sender: ``SMTPUTF8`` (RFC 6531);
4. with DSN options ``-N success,failure -V <envid> -R hdrs`` (RFC 3461);
5. to the unknown ``nobody@example.test``: ``550 5.1.1`` at RCPT, so Postfix
   bounces it and relays its non-delivery report back to the sender, alice.

Postfix logs the whole SMTP conversation with Pillarbox (``debug_peer_list``),
so the test sees what went over the wire: which extensions Postfix used and
that it pipelined MAIL, RCPT and DATA (RFC 2920).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.conftest import Server, need_tool
from tests.interop.postfix import Delivery, PrivatePostfix

ALICE = "alice@example.test"
JOERG = "jörg@example.test"
BOB = "bob@client.test"
BJOERN = "björn@client.test"
ENVID = "pillarbox-interop-envid-1"

# A queue id of Pillarbox: 13 hex digits of microseconds, 5 random ones.
_PILLARBOX_ID = r"[0-9A-F]{18}"


def _need_root() -> None:
    """A private Postfix's master runs as root; without it, skip (fail under CI)."""
    missing = None
    if os.geteuid() != 0:
        missing = "a private Postfix instance needs root (its master(8) runs as root)"
    else:
        try:
            pwd.getpwnam("postfix")
            grp.getgrnam("postdrop")
        except KeyError:
            missing = "the 'postfix' user or 'postdrop' group is missing (broken postfix package)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)


@pytest.fixture
def private_postfix(tmp_path: Path) -> Iterator:
    """Make private Postfix instances; stop each reliably, whatever happened.

    The instance lives in its own directory under /tmp rather than in
    ``tmp_path``: its daemons run as the ``postfix`` user and must reach
    their files, and pytest's base directory is private to root.  Its log
    is copied into ``tmp_path`` before the directory goes, for debugging.
    """
    postfix = need_tool("postfix")
    postconf = need_tool("postconf")
    _need_root()
    sendmail = subprocess.run(
        [postconf, "-d", "-h", "sendmail_path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    instances: list[PrivatePostfix] = []

    def make(settings: dict[str, str]) -> PrivatePostfix:
        root = Path(tempfile.mkdtemp(prefix="pillarbox-postfix-"))
        instance = PrivatePostfix(root, settings, postfix=postfix, sendmail=sendmail)
        instances.append(instance)
        return instance.start()

    try:
        yield make
    finally:
        for instance in instances:
            try:
                instance.stop()
            finally:
                if instance.log_path.exists():
                    shutil.copy(instance.log_path, tmp_path / f"{instance.root.name}.log")
                instance.remove()


# ------------------------------------------------------------------ messages


@dataclass(frozen=True)
class Outgoing:
    name: str
    sender: str
    recipient: str
    headers: str          # as a local program writes them: LF line ends
    body: str
    options: tuple[str, ...] = ()

    @property
    def message_id(self) -> str:
        return f"{self.name}.interop@client.test"

    def text(self) -> bytes:
        headers = self.headers + f"Date: {formatdate()}\nMessage-ID: <{self.message_id}>\n"
        return (headers + "\n" + self.body).encode("utf-8")

    def wire_headers(self) -> list[bytes]:
        """The header lines we wrote, as they must arrive: CRLF line ends."""
        return [line.encode("utf-8") + b"\r\n" for line in self.headers.splitlines()]

    def wire_body(self) -> bytes:
        return self.body.replace("\n", "\r\n").encode("utf-8")


PLAIN = Outgoing(
    "plain", BOB, ALICE,
    "From: Bob <bob@client.test>\nTo: Alice <alice@example.test>\n"
    "Subject: plain ASCII through Postfix\n",
    "Hello Alice,\n"
    ".\n"                                   # alone: text with sendmail -i, not the end
    ".leading dot\n"
    "..two leading dots\n"
    + "x" * 998 + "\n"                      # the longest text line RFC 5321 allows
    "Bye.\n",
)
EIGHT_BIT = Outgoing(
    "8bit", BOB, ALICE,
    "From: Bob <bob@client.test>\nTo: Alice <alice@example.test>\n"
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= in an 8-bit body\n"
    "MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
    "Content-Transfer-Encoding: 8bit\n",
    "Grüße aus Köln – ünïcödé, 日本語, ✉\n",
)
SMTPUTF8 = Outgoing(
    "smtputf8", BJOERN, JOERG,
    "From: Björn <björn@client.test>\nTo: Jörg <jörg@example.test>\n"
    "Subject: Grüße, Jörg\n"
    "MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
    "Content-Transfer-Encoding: 8bit\n",
    "Hallo Jörg, schöne Grüße von Björn.\n",
)
DSN = Outgoing(
    "dsn", BOB, ALICE,
    "From: Bob <bob@client.test>\nTo: Alice <alice@example.test>\n"
    "Subject: with DSN options\n",
    "Tell me when this arrives.\n",
    ("-N", "success,failure", "-V", ENVID, "-R", "hdrs"),
)
UNKNOWN = Outgoing(
    "unknown", ALICE, "nobody@example.test",
    "From: Alice <alice@example.test>\nTo: nobody@example.test\n"
    "Subject: to nobody\n",
    "There is nobody here.\n",
)
ARRIVING = (PLAIN, EIGHT_BIT, SMTPUTF8, DSN)


# ------------------------------------------------------------------- helpers


def _stored(server: Server, message: Outgoing) -> bytes:
    matches = [m for m in server.inbox(message.recipient)
               if f"Message-ID: <{message.message_id}>".encode() in m]
    assert len(matches) == 1, f"{message.name}: {len(matches)} copies in {message.recipient}"
    return matches[0]


def _header_lines(stored: bytes) -> list[bytes]:
    """The lines of the header section, each with its CRLF (folded fields stay folded)."""
    head = stored.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    return head.splitlines(keepends=True)


def _pillarbox_received(stored: bytes) -> str:
    """The first Received: field (ours: Return-Path and Delivered-To come before it)."""
    lines = _header_lines(stored)
    assert lines[0].startswith(b"Return-Path: "), lines[:3]
    assert lines[1].startswith(b"Delivered-To: "), lines[:3]
    assert lines[2].startswith(b"Received: "), lines[:3]
    field = [lines[2]]
    for line in lines[3:]:
        if line[:1] not in (b" ", b"\t"):
            break
        field.append(line)
    return b"".join(field).decode("utf-8")


def _transcripts(postfix: PrivatePostfix) -> dict[str, list[str]]:
    """Postfix's side of each SMTP conversation, ``> command`` / ``< reply``,
    per smtp(8) process (one process holds one conversation at a time)."""
    out: dict[str, list[str]] = {}
    wire = re.compile(r"^([<>]) \S+\[127\.0\.0\.1\]:\d+: (.*)$")
    for pid, text in postfix.pid_lines("smtp"):
        m = wire.match(text)
        if m:
            out.setdefault(pid, []).append(f"{m[1]} {m[2]}")
    return out


def _pipelined(transcript: list[str]) -> list[list[str]]:
    """Each run of commands Postfix sent before reading a reply."""
    runs, current = [], []
    for line in transcript:
        if line.startswith(">"):
            current.append(line[2:])
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


# ---------------------------------------------------------------------- test


def test_postfix_relays_into_pillarbox(server_factory, private_postfix):
    server = server_factory({"log.level": "debug"}, accounts=(ALICE, JOERG))
    postfix = private_postfix({
        "myhostname": "client.test",
        "mydomain": "client.test",
        "myorigin": "$myhostname",
        # A null client: no local delivery, everything goes to the relayhost.
        "mydestination": "",
        "local_transport": "error:5.1.1 no local delivery in this instance",
        "relayhost": f"[127.0.0.1]:{server.port}",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_loglevel": "1",
        "smtputf8_enable": "yes",
        # Postfix 3.7's sendmail(1) has no option that requests SMTPUTF8:
        # cleanup(8) sets the flag itself when the envelope or a header of
        # a message submitted this way has UTF-8 in it (the default for the
        # sendmail class, spelled out so the test does not depend on it).
        "smtputf8_autodetect_classes": "sendmail",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        # Log the SMTP conversation with Pillarbox, command by command.
        "debug_peer_list": "127.0.0.1",
    })

    for message in (*ARRIVING, UNKNOWN):
        postfix.sendmail(message.text(), message.sender, [message.recipient], message.options)

    # --- Postfix's view: every message's fate, from its log.
    queue_ids: dict[str, str] = {}

    def all_queued() -> bool:
        for message in (*ARRIVING, UNKNOWN):
            qid = postfix.queue_id(message.message_id)
            if qid is not None:
                queue_ids[message.name] = qid
        return len(queue_ids) == 5

    postfix.wait_until(all_queued, 15, "cleanup(8) lines for all five messages")

    def final(qid: str) -> list[Delivery]:
        return [d for d in postfix.deliveries() if d.queue_id == qid and d.status != "deferred"]

    postfix.wait_until(lambda: all(final(q) for q in queue_ids.values()), 20,
                       "a final delivery status for all five messages")
    relay = f"127.0.0.1[127.0.0.1]:{server.port}"
    pillarbox_ids: dict[str, str] = {}
    for message in ARRIVING:
        (d,) = final(queue_ids[message.name])
        assert (d.to, d.relay, d.dsn, d.status) == (message.recipient, relay, "2.0.0", "sent"), d
        m = re.fullmatch(rf"250 2\.0\.0 Ok: queued as ({_PILLARBOX_ID})", d.reply)
        assert m, d
        pillarbox_ids[message.name] = m[1]
    (refused,) = final(queue_ids[UNKNOWN.name])
    assert (refused.to, refused.dsn, refused.status) == ("nobody@example.test", "5.1.1", "bounced")
    assert refused.reply.startswith("host 127.0.0.1[127.0.0.1] said: 550 5.1.1 "), refused
    assert refused.reply.endswith("(in reply to RCPT TO command)"), refused

    # The non-delivery report goes back to the sender, alice, through Pillarbox.
    bounce_line = re.compile(
        rf"^{queue_ids[UNKNOWN.name]}: sender non-delivery notification: (\w+)$"
    )
    bounce_ids = [m[1] for _, t in postfix.lines("bounce") if (m := bounce_line.match(t))]
    assert len(bounce_ids) == 1, postfix.log()
    postfix.wait_until(lambda: bool(final(bounce_ids[0])), 10, "the bounce's delivery")
    (bounced,) = final(bounce_ids[0])
    assert (bounced.to, bounced.status) == (ALICE, "sent"), bounced
    bounce_pillarbox_id = re.fullmatch(rf"250 2\.0\.0 Ok: queued as ({_PILLARBOX_ID})",
                                       bounced.reply)
    assert bounce_pillarbox_id, bounced

    # Not one attempt was deferred, and nothing in Postfix's log complains
    # about the conversation with Pillarbox.
    assert not [d for d in postfix.deliveries() if d.status == "deferred"], postfix.log()
    complaints = [
        (daemon, text) for daemon, text in postfix.lines()
        if re.match(r"(warning|error|fatal|panic): ", text)
        and (daemon in ("smtp", "tlsmgr", "qmgr", "bounce")
             or "127.0.0.1" in text or str(server.port) in text)
    ]
    assert complaints == [], complaints

    # --- What went over the wire (Postfix's debug transcript).
    tls = re.compile(r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: "
                     r"(\S+) with cipher (\S+) \((\d+)/\d+ bits\)")
    sessions = [m.groups() for _, t in postfix.lines("smtp") if (m := tls.search(t))]
    assert len(sessions) == 6, sessions  # five messages and the bounce, a connection each
    assert len(set(sessions)) == 1, sessions
    tls_version, tls_cipher, tls_bits = sessions[0]

    transcripts = _transcripts(postfix)
    commands = [line[2:] for lines in transcripts.values() for line in lines if line[0] == ">"]
    mail_from = {name: [c for c in commands if c.startswith(f"MAIL FROM:<{sender}>")]
                 for name, sender in (("bob", BOB), ("smtputf8", BJOERN), ("bounce", ""))}
    assert len(mail_from["smtputf8"]) == 1 and mail_from["smtputf8"][0].endswith(" SMTPUTF8")
    assert "RCPT TO:<jörg@example.test> ORCPT=utf-8;j\\x{F6}rg@example.test" in commands
    bob = mail_from["bob"]
    assert len(bob) == 3, bob
    assert sum(c.endswith(" BODY=8BITMIME") for c in bob) == 1, bob
    assert sum(f" ENVID={ENVID} RET=HDRS" in c for c in bob) == 1, bob
    assert "RCPT TO:<alice@example.test> ORCPT=rfc822;alice@example.test NOTIFY=SUCCESS,FAILURE" \
        in commands
    assert len(mail_from["bounce"]) == 1, commands
    # Postfix pipelined each transaction: MAIL, RCPT and DATA in one go, then
    # read the three replies (RFC 2920 3.1).
    runs = [run for lines in transcripts.values() for run in _pipelined(lines)]
    transactions = [run for run in runs if run[0].startswith("MAIL FROM:")]
    assert len(transactions) == 6, runs
    for run in transactions:
        assert [c.split(":")[0].split()[0] for c in run] == ["MAIL", "RCPT", "DATA"], run
    assert postfix.log().count("Using ESMTP PIPELINING") >= 6

    # --- Pillarbox's view: what arrived, byte for byte.
    assert server.wait_delivered(5) == 5, server.log()
    for message in ARRIVING:
        stored = _stored(server, message)
        qid = pillarbox_ids[message.name]
        received = _pillarbox_received(stored)
        proto = "UTF8SMTPS" if message is SMTPUTF8 else "ESMTPS"
        assert received.startswith("Received: from client.test ([127.0.0.1])\r\n"), received
        assert f"\tby mx.test (Pillarbox) with {proto} id {qid}\r\n" in received, received
        assert f"\t(using {tls_version} with cipher {tls_cipher} ({tls_bits} bits))\r\n" \
            in received, received
        assert f"\tfor <{message.recipient}>;\r\n" in received, received
        lines = _header_lines(stored)
        assert lines[0] == f"Return-Path: <{message.sender}>\r\n".encode(), lines[0]
        assert lines[1] == f"Delivered-To: {message.recipient}\r\n".encode(), lines[1]
        for line in message.wire_headers():
            assert line in lines, (message.name, line)
        body = stored.split(b"\r\n\r\n", 1)[1]
        assert body == message.wire_body(), (message.name, body)
    # Postfix's bounce: a multipart/report from the null reverse path.
    (report,) = [m for m in server.inbox(ALICE) if m.startswith(b"Return-Path: <>\r\n")]
    assert f"with ESMTPS id {bounce_pillarbox_id[1]}".encode() in report
    assert b"Content-Type: multipart/report; report-type=delivery-status;" in report
    assert b"Final-Recipient: rfc822; nobody@example.test" in report
    assert b"Status: 5.1.1" in report
    assert b"Diagnostic-Code: smtp; 550 5.1.1" in report
    assert f"Message-ID: <{UNKNOWN.message_id}>".encode() in report  # the returned headers

    # --- Pillarbox's log: the same six sessions, over TLS, nothing amiss.
    log = server.log()
    for name, qid in (*pillarbox_ids.items(), ("bounce", bounce_pillarbox_id[1])):
        line = re.search(rf"^.* info smtp queued queue_id={qid} .*$", log, re.MULTILINE)
        assert line, (name, qid, log)
        assert " client=127.0.0.1 helo=client.test " in line[0], line[0]
        assert f" tls={tls_version} " in line[0], line[0]
    assert len(re.findall(rf" debug smtp tls client=127\.0\.0\.1 version={tls_version} "
                          rf"cipher={tls_cipher}$", log, re.MULTILINE)) == 6, log
    assert re.search(r" info smtp rejected client=127\.0\.0\.1 helo=client\.test "
                     r"from=alice@example\.test to=nobody@example\.test "
                     r"reply=\"550 5\.1\.1 ", log), log
    trouble = r"^\S+ (warning|error) |^\S+ \w+ smtp (tls failed|timeout) |^Traceback"
    assert not re.search(trouble, log, re.MULTILINE), log
    # The DATA Postfix pipelined behind the refused RCPT is answered 554
    # (RFC 2920 3.1) and is not a protocol error: there must be none at all,
    # and the session that carried it counts only the refused RCPT.
    assert not re.findall(r"^.* smtp protocol error .*$", log, re.MULTILINE), log
    assert re.search(r" smtp disconnect client=127\.0\.0\.1 .*messages=0 errors=1 ", log), log
