"""Sending mail end to end, in a small Internet on this machine (issue 7, "How it is checked").

One lab for the module (``tests/netlab``): the sending Pillarbox in host
``tx`` (``mail.sender.test``, local domain ``sender.test``), a dnsmasq that
serves the test zones, and the peers, each in its own namespace on port 25:

=============  ===================  ============================================
domain         MX                   what it is
=============  ===================  ============================================
postfix.test   mx.postfix.test      a private Postfix with STARTTLS
pillarbox.test mx.pillarbox.test    a second Pillarbox; carol and dave exist
backup.test    10 mx1.backup.test   a dead host: IPv6 refused, IPv4 blackholed
               20 mx.postfix.test   ... so the Postfix takes it
soft.test      mx.soft.test         smtp-sink answering RCPT with 451, later not
plain.test     mx.plain.test        smtp-sink: no 8BITMIME, no SMTPUTF8
late.test      mx.late.test         nothing listening, until the test starts a sink
nomail.test    MX 0 .               null MX (RFC 7505)
nowhere.test   (none)               NXDOMAIN
=============  ===================  ============================================

Messages are injected with ``pillarbox sendmail`` run inside ``tx`` (a
local submission, so no relay rights are needed), one over SMTP from host
``lan``, which is in ``smtp.trusted_networks``; Pillarbox finds its
way by its normal MX lookup through the namespace's ``/etc/resolv.conf``:
nothing in the delivery path is mocked or redirected.  The only settings
changed are real options: short retries (``queue.retry_first``,
``queue.retry_max``), a short ``delivery.connect_timeout`` for the
blackholed MX, ``smtp.trusted_networks`` and ``server.hostname``.  Reports (DSNs) go to the sender's
local mailbox on ``tx`` and are read with Python's ``email`` package, field
by field.  Needs root (skips outside it, fails under ``CI=true``).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pillarbox.store.base import QueueEntry
from pillarbox.store.sqlite.store import SQLiteStore
from tests.netlab import Host, Lab, LabPillarbox, PostfixMX, SmtpSink, require_lab

T = TypeVar("T")

SENDER_HOST = "mail.sender.test"
#: Local accounts on the sending Pillarbox: one sender per scenario, so that each
#: test finds its own reports in its own INBOX.
SENDERS = ("alice@sender.test", "frank@sender.test", "grace@sender.test",
           "henry@sender.test", "ivan@sender.test", "judy@sender.test")
BIN = Path(sys.executable).parent


@dataclass
class World:
    lab: Lab
    tx: Host
    sender: LabPillarbox
    config: Path                    # the sending Pillarbox's pillarbox.toml, for sendmail
    postfix: PostfixMX
    pbx: LabPillarbox
    plain: SmtpSink
    soft_host: Host
    late_host: Host
    lan: Host


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_lab("postfix", "smtp-sink")
    with Lab(tmp_path_factory.mktemp("outbound") / "lab", ttl=60) as lab:
        tx = lab.host("tx", "198.51.100.10", "2001:db8:1::10")
        pf = lab.host("pf", "192.0.2.25", "2001:db8::25", dns_name="mx.postfix.test")
        pbx = lab.host("pbx", "203.0.113.25", "2001:db8:2::25", dns_name="mx.pillarbox.test")
        down = lab.host("down", "203.0.113.66", "2001:db8:3::66", dns_name="mx1.backup.test")
        soft = lab.host("soft", "192.0.2.45", "2001:db8::45", dns_name="mx.soft.test")
        plain = lab.host("plain", "192.0.2.80", "2001:db8::80", dns_name="mx.plain.test")
        late = lab.host("late", "192.0.2.90", "2001:db8::90", dns_name="mx.late.test")
        lan = lab.host("lan", "198.51.100.20")      # a client in smtp.trusted_networks
        (lab.dns.mx("postfix.test", 10, "mx.postfix.test")
            .mx("pillarbox.test", 10, "mx.pillarbox.test")
            .mx("backup.test", 10, "mx1.backup.test").mx("backup.test", 20, "mx.postfix.test")
            .mx("soft.test", 10, "mx.soft.test")
            .mx("plain.test", 10, "mx.plain.test")
            .mx("late.test", 10, "mx.late.test")
            .null_mx("nomail.test"))
        lab.start()
        # mx1.backup.test is dead: nothing listens on it; over IPv6 the connect is
        # refused, over IPv4 its answers to tx vanish (the connect times out).
        down.blackhole("198.51.100.10/32")

        postfix = PostfixMX(pf, "mx.postfix.test", ["postfix.test", "backup.test"]).start()
        pbx_mx = LabPillarbox(pbx, "mx.pillarbox.test",
                              accounts=("carol@pillarbox.test", "dave@pillarbox.test")).start()
        sink = SmtpSink(plain, options=["-8", "-h", "mx.plain.test"]).start()
        sender = LabPillarbox(tx, SENDER_HOST, accounts=SENDERS, options={
            "queue.retry_first": "2s",
            "queue.retry_max": "4s",
            "delivery.connect_timeout": "3s",
            "smtp.trusted_networks": "198.51.100.20/32",
        }).start()
        config = tx.directory / "pillarbox.toml"
        config.write_text(f'[server]\ndata_dir = "{sender.data_dir}"\n'
                          f'hostname = "{SENDER_HOST}"\n', encoding="utf-8")
        yield World(lab, tx, sender, config, postfix, pbx_mx, sink, soft, late, lan)


# ----------------------------------------------------------------- helpers

def wait_for(what: str, probe: Callable[[], T | None], timeout: float,
             diagnostics: Callable[[], str] = lambda: "") -> T:
    """``probe()`` until it gives something true; fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{diagnostics()}")
        time.sleep(0.2)


def sendmail(world: World, *args: str, data: bytes) -> str:
    """``pillarbox sendmail -v ARGS`` inside tx; the queue id it reports."""
    env = {**os.environ, "PILLARBOX_CONFIG": str(world.config), "NAME": ""}
    done = subprocess.run(
        world.tx.command([str(BIN / "pillarbox"), "sendmail", "-v", *args]),
        input=data, capture_output=True, env=env, timeout=60, cwd=world.tx.directory)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"sendmail exited {done.returncode}: {stderr}"
    found = re.search(r"queued as (\S+)", stderr)
    assert found, stderr
    return found.group(1)


_LINE = re.compile(r"^\S+ (?P<level>\w+) (?P<logger>\S+) (?P<event>[a-z][a-z ]*?) "
                   r"(?P<fields>\w+=.*)$")
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_events(server: LabPillarbox, event: str, **match: str) -> list[dict[str, str]]:
    """The structured log lines ``event`` of ``server`` whose fields include ``match``."""
    import json

    out = []
    for line in server.log().splitlines():
        m = _LINE.match(line)
        if not m or m["event"] != event:
            continue
        fields = {k: (json.loads(v) if v.startswith('"') else v)
                  for k, v in _FIELD.findall(m["fields"])}
        if all(fields.get(k) == v for k, v in match.items()):
            out.append(fields)
    return out


def queue_entry(world: World, queue_id: str) -> QueueEntry | None:
    store = SQLiteStore(world.sender.data_dir)
    try:
        return store.queue_get(queue_id)
    finally:
        store.close()


def sender_log(world: World) -> Callable[[], str]:
    return lambda: "--- sending Pillarbox's log (tail) ---\n" + world.sender.log()[-6000:]


def wait_gone_from_queue(world: World, queue_id: str, timeout: float = 30) -> None:
    wait_for(f"queue entry {queue_id} done", lambda: queue_entry(world, queue_id) is None,
             timeout, sender_log(world))


def reports(world: World, address: str, n: int = 1, timeout: float = 30) -> list[bytes]:
    """The first ``n`` messages in the INBOX of ``address`` on the sending Pillarbox."""
    return wait_for(f"{n} report(s) in the INBOX of {address}",
                    lambda: (lambda m: m if len(m) >= n else None)(world.sender.inbox(address)),
                    timeout, sender_log(world))


@dataclass
class DSN:
    msg: Message
    text: str                        # the first part, decoded
    per_message: Message
    per_recipient: list[Message]
    returned: Message | None


def parse_dsn(raw: bytes) -> DSN:
    """A report's parts (RFC 3464 2): the explanation, the per-message fields, one block
    of fields per recipient, and what is returned of the message."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts: list[Any] = msg.get_payload()      # type: ignore[assignment]  # multipart
    text, status, *rest = parts
    assert text.get_content_type() == "text/plain"
    blocks: list[Message]
    if status.get_content_type() == "message/delivery-status":
        blocks = status.get_payload()
    else:
        # message/global-delivery-status (RFC 6533 6.2): UTF-8 fields, which the email
        # package parses as one message/rfc822; read the blocks from the raw part.
        assert status.get_content_type() == "message/global-delivery-status"
        boundary = (msg.get_boundary() or "").encode()
        [part] = [p for p in raw.split(b"--" + boundary)
                  if b"Content-Type: message/global-delivery-status" in p.split(b"\r\n\r\n")[0]]
        body = part.split(b"\r\n\r\n", 1)[1].decode("utf-8")
        blocks = [email.message_from_string(b.strip() + "\n", policy=email.policy.compat32)
                  for b in re.split(r"\r\n\r\n", body.strip())]
    words = text.get_payload(decode=True).decode(text.get_content_charset() or "utf-8")
    return DSN(msg, words, blocks[0], blocks[1:], rest[0] if rest else None)


def check_report_envelope(msg: Message, to: str) -> None:
    """The header of a failure report (RFC 3464 2, RFC 3461 6.2, RFC 3834, RFC 5321 4.5.5)."""
    assert msg["Return-Path"] == "<>"            # the null reverse path
    assert msg["Delivered-To"] == to
    assert msg["To"] == to
    assert msg["From"] == f"MAILER-DAEMON@{SENDER_HOST}"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] and msg["Date"]


def message(sender: str, to: str, subject: str, body: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, time.time())))}@sender.test>\r\n"
            f"Date: Wed, 02 Dec 2026 00:00:00 +0000\r\n\r\n{body}").encode()


def body_of(raw: bytes) -> bytes:
    """What follows the header, line ends made CRLF (a Maildir file has LF)."""
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    return raw.split(b"\r\n\r\n", 1)[1]


def sink_message(dump: bytes) -> bytes:
    """The message in one of smtp-sink's dump files: without the X- lines it puts
    first and the empty line it puts last (smtp-sink(1), DUMP FILE FORMAT)."""
    lines = dump.split(b"\n")
    while lines and re.match(rb"X-(Client|Helo|Mail|Rcpt|Data)-[\w-]*:", lines[0]):
        lines.pop(0)
    assert lines[-2:] == [b"", b""], dump[-200:]
    return b"\n".join(lines[:-1])


def sink_dumps(world: World, sink: SmtpSink, queue_id: str, marker: bytes) -> list[bytes]:
    """The transactions at ``sink`` that hold ``marker``, once the sending Pillarbox is
    done with ``queue_id`` (smtp-sink writes a dump while it receives it)."""
    wait_gone_from_queue(world, queue_id)
    return [d for d in sink.messages() if marker in d]


def attempts(world: World, queue_id: str) -> list[dict[str, str]]:
    return log_events(world.sender, "attempt", queue_id=queue_id)


BODY = ("Dear Alice,\r\n\r\nthe figures are attached in spirit.\r\n"
        ".a line that starts with a dot\r\n" + "x" * 900 + "\r\n\r\n-- \r\nBob\r\n")


# ------------------------------------------------------------ the scenarios

def test_delivered_to_a_postfix_mx_over_starttls(world: World) -> None:
    data = message("alice@sender.test", "paul@postfix.test", "to Postfix", BODY)
    qid = sendmail(world, "-f", "alice@sender.test", "--", "paul@postfix.test", data=data)
    postfix = world.postfix
    (stored,) = wait_for("the message in paul's Maildir at the Postfix MX",
                         lambda: postfix.maildir("paul@postfix.test"), 30,
                         lambda: sender_log(world)() + "\n--- postfix ---\n" + postfix.log())
    assert body_of(stored) == body_of(data)
    assert b"Subject: to Postfix" in stored
    assert re.search(rb"\(using TLSv1\.[23] ", stored), "Postfix's Received: says no TLS"
    wait_gone_from_queue(world, qid)
    [attempt] = attempts(world, qid)
    assert attempt["mx"] == "mx.postfix.test" and attempt["result"] == "delivered"
    assert attempt["address"] in ("2001:db8::25", "192.0.2.25")
    assert re.fullmatch(r"TLSv1\.[23] \S+ unverified", attempt["tls"]), attempt
    assert attempt["reply"].startswith("250 ")


def test_delivered_to_a_pillarbox_mx_over_starttls(world: World) -> None:
    data = message("alice@sender.test", "carol@pillarbox.test", "to Pillarbox", BODY)
    qid = sendmail(world, "-f", "alice@sender.test", "--", "carol@pillarbox.test", data=data)
    pbx = world.pbx
    (stored,) = wait_for("the message in carol's INBOX at the Pillarbox MX",
                         lambda: [m for m in pbx.inbox("carol@pillarbox.test")
                                  if b"Subject: to Pillarbox" in m], 30,
                         lambda: sender_log(world)() + "\n--- MX ---\n" + pbx.log())
    assert body_of(stored) == body_of(data)
    assert b"Subject: to Pillarbox" in stored
    wait_gone_from_queue(world, qid)
    [attempt] = attempts(world, qid)
    assert attempt["mx"] == "mx.pillarbox.test" and attempt["result"] == "delivered"
    assert re.fullmatch(r"TLSv1\.[23] \S+ unverified", attempt["tls"]), attempt


def test_relayed_for_a_trusted_network_client_over_smtp(world: World) -> None:
    """The other way in: a client of ``smtp.trusted_networks`` relays over port 25."""
    data = message("alice@sender.test", "rita@postfix.test", "relayed for the LAN", BODY)

    def relay() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("198.51.100.10", 25, local_hostname="lan.sender.test",
                          timeout=10) as client:
            return client.sendmail("alice@sender.test", ["rita@postfix.test"], data)
    assert world.lan.call(relay) == {}
    postfix = world.postfix
    (stored,) = wait_for("the relayed message at the Postfix MX",
                         lambda: postfix.maildir("rita@postfix.test"), 30, sender_log(world))
    assert body_of(stored) == body_of(data)
    # Pillarbox's Received: names the client, then Postfix's says TLS.
    assert re.search(rb"Received: from lan\.sender\.test \(\S* ?\[198\.51\.100\.20\]\)",
                     stored), stored[:800]
    assert re.search(rb"\(using TLSv1\.[23] ", stored)
    [done] = log_events(world.sender, "delivered", to="rita@postfix.test")
    assert done["relay"] == "mx.postfix.test" and done["tls"].startswith("TLSv1.")


def test_first_mx_down_the_second_takes_it(world: World) -> None:
    data = message("alice@sender.test", "olga@backup.test", "via the backup MX", BODY)
    started = time.monotonic()
    qid = sendmail(world, "-f", "alice@sender.test", "--", "olga@backup.test", data=data)
    postfix = world.postfix
    (stored,) = wait_for("the message at the second MX (Postfix)",
                         lambda: postfix.maildir("olga@backup.test"), 40, sender_log(world))
    assert body_of(stored) == body_of(data)
    wait_gone_from_queue(world, qid)
    tried = attempts(world, qid)
    # One attempt: both addresses of mx1 given up (refused, then timed out), then mx.
    assert [(a["mx"], a.get("address"), a["result"]) for a in tried] == [
        ("mx1.backup.test", "2001:db8:3::66", "next"),
        ("mx1.backup.test", "203.0.113.66", "next"),
        ("mx.postfix.test", tried[2].get("address"), "delivered")], tried
    assert "4.4.1" in tried[0]["reply"] and "refused" in tried[0]["reply"].lower(), tried[0]
    assert tried[1]["reply"].startswith(("451 4.4.1", "451 4.4.2")), tried[1]
    assert 2.5 < float(tried[1]["seconds"]) < 10, tried[1]   # delivery.connect_timeout
    assert time.monotonic() - started < 40


def test_an_mx_that_answers_4xx_gets_it_on_a_later_try(world: World) -> None:
    soft = SmtpSink(world.soft_host, options=["-r", "RCPT", "-b", "451 4.3.2 Not now, please"])
    soft.start()
    data = message("alice@sender.test", "sam@soft.test", "try again", BODY)
    qid = sendmail(world, "-f", "alice@sender.test", "--", "sam@soft.test", data=data)
    first = wait_for("a deferred attempt at mx.soft.test",
                     lambda: attempts(world, qid), 20, sender_log(world))[0]
    assert first["mx"] == "mx.soft.test" and first["result"] == "deferred", first
    assert first["reply"] == "451 4.3.2 Not now, please", first
    entry = queue_entry(world, qid)
    assert entry is not None and entry.recipients[0].last_reply == "451 4.3.2 Not now, please"
    assert not [d for d in soft.messages() if b"try again" in d]
    soft.stop()

    accepting = SmtpSink(world.soft_host).start()
    (dump,) = sink_dumps(world, accepting, qid, b"Subject: try again")
    assert body_of(sink_message(dump)) == body_of(data)
    tried = attempts(world, qid)
    assert tried[-1]["result"] == "delivered" and len(tried) >= 2, tried
    assert [] == reports_now(world, "alice@sender.test", "sam@soft.test")
    accepting.stop()


def reports_now(world: World, address: str, about: str) -> list[bytes]:
    """Reports in the INBOX of ``address`` that mention ``about``."""
    return [m for m in world.sender.inbox(address)
            if b"Return-Path: <>" in m and about.encode() in m]


def rcpt_reply(address: str, rcpt: str) -> str:
    """What the server at ``address`` answers to ``RCPT TO:<rcpt>``, as one line."""
    with smtplib.SMTP(address, 25, local_hostname="probe.sender.test", timeout=10) as client:
        client.ehlo()
        client.mail("probe@sender.test")
        code, text = client.rcpt(rcpt)
    return f"{code} {text.decode()}"


def test_5xx_for_one_of_three_recipients_only_that_one_is_reported(world: World) -> None:
    rcpts = ["carol@pillarbox.test", "dave@pillarbox.test", "erin@pillarbox.test"]
    data = message("frank@sender.test", ", ".join(rcpts), "three of us", BODY)
    qid = sendmail(world, "-f", "frank@sender.test", "--", *rcpts, data=data)
    [raw] = reports(world, "frank@sender.test")
    for who in ("carol@pillarbox.test", "dave@pillarbox.test"):
        wait_for(f"the message for {who}",
                 lambda: [m for m in world.pbx.inbox(who) if b"three of us" in m], 20)
    dsn = parse_dsn(raw)
    check_report_envelope(dsn.msg, "frank@sender.test")
    assert dsn.msg["Subject"] == "Undelivered Mail Returned to Sender"

    per_message = dsn.per_message
    assert per_message["Reporting-MTA"] == f"dns;{SENDER_HOST}"
    assert per_message["Arrival-Date"]
    [erin] = dsn.per_recipient                   # only the one that failed
    assert erin["Final-Recipient"] == "rfc822;erin@pillarbox.test"
    assert erin["Action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", erin["Status"]), erin["Status"]
    assert erin["Status"] == "5.1.1"
    assert erin["Remote-MTA"] == "dns;mx.pillarbox.test"
    # The MX's reply, quoted exactly: what it answers to RCPT TO:<erin@...>, as the
    # sending Pillarbox logged it.
    refusal = world.tx.call(rcpt_reply, "2001:db8:2::25", "erin@pillarbox.test")
    assert refusal.startswith("550 5.1.1 "), refusal
    [logged] = log_events(world.sender, "failed", queue_id=qid)
    assert logged["to"] == "erin@pillarbox.test"
    assert logged["reply"] == refusal
    assert erin["Diagnostic-Code"] == f"smtp;{logged['reply']}"
    assert erin["Last-Attempt-Date"]
    assert erin["Will-Retry-Until"] is None
    assert "<erin@pillarbox.test>" in dsn.text and logged["reply"] in dsn.text
    assert "carol@" not in dsn.text and "dave@" not in dsn.text
    assert dsn.returned is not None and "Subject: three of us" in str(dsn.returned)
    wait_gone_from_queue(world, qid)


def _single_failure(world: World, sender: str, rcpt: str, subject: str
                    ) -> tuple[str, DSN]:
    data = message(sender, rcpt, subject, BODY)
    started = time.monotonic()
    qid = sendmail(world, "-f", sender, "--", rcpt, data=data)
    [raw] = reports(world, sender, timeout=20)
    assert time.monotonic() - started < 15          # immediate: no retry, no wait
    dsn = parse_dsn(raw)
    check_report_envelope(dsn.msg, sender)
    assert dsn.per_message["Reporting-MTA"] == f"dns;{SENDER_HOST}"
    [rec] = dsn.per_recipient
    assert rec["Final-Recipient"] == f"rfc822;{rcpt}"
    assert rec["Action"] == "failed"
    wait_gone_from_queue(world, qid)
    return qid, dsn


def test_null_mx_bounces_at_once(world: World) -> None:
    mark = world.lab.dns.mark()
    qid, dsn = _single_failure(world, "grace@sender.test", "nemo@nomail.test", "null MX")
    # RFC 7505 4.3: no address lookup, no connection; one MX query was all it took.
    asked = {(q.type, q.name) for q in world.lab.dns.queries(mark)
             if q.name.endswith("nomail.test")}
    assert asked == {("MX", "nomail.test")}, asked
    [rec] = dsn.per_recipient
    assert rec["Status"] == "5.1.10"
    assert rec["Remote-MTA"] is None
    assert "null MX" in rec["Diagnostic-Code"] and "nomail.test" in rec["Diagnostic-Code"]
    tried = attempts(world, qid)
    assert [(a["domain"], a["result"]) for a in tried] == [("nomail.test", "failed")]


def test_a_domain_that_does_not_exist_bounces(world: World) -> None:
    qid, dsn = _single_failure(world, "henry@sender.test", "who@nowhere.test", "no domain")
    [rec] = dsn.per_recipient
    assert rec["Status"] == "5.1.2"
    assert "nowhere.test" in rec["Diagnostic-Code"]
    assert rec["Remote-MTA"] is None


EIGHT_BIT = (
    "From: alice@sender.test\r\nTo: otto@plain.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    "Message-ID: <8bit-1@sender.test>\r\nDate: Wed, 02 Dec 2026 00:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Grüße aus dem Labor – 10 € für Ärger, ½ Stück.\r\n"
    "Ünïcödé on every line: ÀÉÎÕÜ\r\n"
    "--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\n"
).encode() + "Café crème, déjà vu.\r\n".encode("iso-8859-1") + b"--b1--\r\n"


def _texts(msg: EmailMessage) -> list[tuple[str, str]]:
    return [(p.get_content_type(), p.get_content()) for p in msg.walk()
            if p.get_content_maintype() == "text"]


def test_8bit_message_through_a_peer_without_8bitmime_arrives_equal(world: World) -> None:
    qid = sendmail(world, "-f", "alice@sender.test", "--", "otto@plain.test", data=EIGHT_BIT)
    sink = world.plain
    (dump,) = sink_dumps(world, sink, qid, b"<8bit-1@sender.test>")
    received = sink_message(dump)
    assert received.isascii(), "8-bit content went to a peer that lacks 8BITMIME"
    assert b"BODY=8BITMIME" not in dump                      # X-Mail-Args
    policy = email.policy.default
    original = email.message_from_bytes(EIGHT_BIT, policy=policy)
    arrived = email.message_from_bytes(received, policy=policy)
    assert _texts(arrived) == _texts(original)
    assert len(_texts(original)) == 2
    for part in arrived.walk():
        if part.get_content_maintype() == "text":
            assert part["Content-Transfer-Encoding"].lower() in ("quoted-printable", "base64")
    assert str(arrived["Subject"]) == "Grüße"
    wait_gone_from_queue(world, qid)
    [attempt] = attempts(world, qid)
    assert attempt["result"] == "delivered" and attempt["tls"] == "none"


def test_smtputf8_message_to_a_peer_without_smtputf8_bounces_5_6_7(world: World) -> None:
    rcpt = "jörg@plain.test"
    data = (f"From: ivan@sender.test\r\nTo: {rcpt}\r\nSubject: utf8\r\n"
            "Message-ID: <utf8-1@sender.test>\r\nDate: Wed, 02 Dec 2026 00:00:00 +0000\r\n"
            "\r\nHallo Jörg!\r\n").encode()
    qid = sendmail(world, "-f", "ivan@sender.test", "--", rcpt, data=data)
    [raw] = reports(world, "ivan@sender.test")
    dsn = parse_dsn(raw)
    check_report_envelope(dsn.msg, "ivan@sender.test")
    # RFC 6533: the address as it is, in UTF-8, in message/global-delivery-status.
    parts: list[Any] = dsn.msg.get_payload()  # type: ignore[assignment]  # multipart
    assert parts[1].get_content_type() == "message/global-delivery-status"
    assert dsn.per_message["Reporting-MTA"] == f"dns;{SENDER_HOST}"
    [rec] = dsn.per_recipient
    assert rec["Final-Recipient"] == f"utf-8;{rcpt}"
    assert rec["Action"] == "failed"
    assert rec["Status"] == "5.6.7"
    assert rec["Remote-MTA"] == "dns;mx.plain.test"
    assert "SMTPUTF8" in rec["Diagnostic-Code"] and " 5.6.7 " in rec["Diagnostic-Code"]
    assert not [d for d in world.plain.messages() if b"<utf8-1@sender.test>" in d]
    wait_gone_from_queue(world, qid)


def mailq(world: World) -> str:
    env = {**os.environ, "PILLARBOX_CONFIG": str(world.config)}
    done = subprocess.run(world.tx.command([str(BIN / "pillarbox-mailq")]), capture_output=True,
                          text=True, env=env, timeout=30, cwd=world.tx.directory)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sendmail_t_from_a_shell_script_and_mailq_while_the_mx_is_down(world: World) -> None:
    script = ("printf 'To: Lena <lena@late.test>\\nSubject: from cron\\n\\n"
              "the nightly job ran\\n' | pillarbox sendmail -t")
    env = {**os.environ, "PILLARBOX_CONFIG": str(world.config), "NAME": "",
           "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    done = subprocess.run(world.tx.command(["/bin/sh", "-c", script]), capture_output=True,
                          text=True, env=env, timeout=60, cwd=world.tx.directory)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""

    # Nothing listens on mx.late.test: the entry is deferred, and mailq says why.
    def deferred() -> re.Match[str] | None:
        return re.search(r"^(?P<id>[0-9A-F]+) +\d+ .{20}  root@sender\.test\n"
                         r"\((?P<why>451 4\.4\.1 [^)]*)\)\n +lena@late\.test$",
                         mailq(world), re.M)
    shown = wait_for("a deferred entry for lena@late.test in mailq", deferred, 20,
                     lambda: mailq(world) + sender_log(world)())
    qid = shown["id"]
    assert "mx.late.test" in shown["why"] and "refused" in shown["why"].lower(), shown["why"]
    entry = queue_entry(world, qid)
    assert entry is not None and entry.reverse_path == "root@sender.test"
    assert [r.address for r in entry.recipients] == ["lena@late.test"]

    sink = SmtpSink(world.late_host).start()
    (dump,) = sink_dumps(world, sink, qid, b"Subject: from cron")
    arrived = email.message_from_bytes(sink_message(dump), policy=email.policy.default)
    assert arrived["Subject"] == "from cron"
    assert arrived["To"] == "Lena <lena@late.test>"
    assert arrived["From"] and arrived["Date"] and arrived["Message-ID"]   # added
    assert arrived.get_content() == "the nightly job ran\n"
    assert b"X-Rcpt-Args: <lena@late.test>" in dump
    assert qid not in mailq(world)
    sink.stop()

