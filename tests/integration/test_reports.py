"""DMARC aggregate reports end to end: a real server checks mail from domains
whose DMARC records (served by dnsmasq on loopback) ask for reports at a
local domain; the counts are flushed as the server stops; ``pillarbox
reports send`` queues the reports; the restarted server delivers them into
the local mailbox, where the attachment is read back and its rows checked."""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import gzip
import smtplib
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from tests.conftest import Server
from tests.dnsserver import DNSServer, dnsmasq

HOST = "mx.example.test"

ZONE = [
    # sender.test: passes SPF from 127.0.0.1, reports to a local mailbox of
    # another organisation, which authorises it (RFC 7489 7.1).
    'txt-record=sender.test,"v=spf1 ip4:127.0.0.1 -all"',
    'txt-record=_dmarc.sender.test,"v=DMARC1; p=none; rua=mailto:dmarc@example.test"',
    'txt-record=sender.test._report._dmarc.example.test,"v=DMARC1"',
    # doubtful.test: fails and asks for quarantine; a second rua is not authorised.
    'txt-record=doubtful.test,"v=spf1 -all"',
    'txt-record=_dmarc.doubtful.test,"v=DMARC1; p=quarantine; '
    'rua=mailto:dmarc@example.test,mailto:x@unverified.test"',
    'txt-record=doubtful.test._report._dmarc.example.test,"v=DMARC1"',
    # unauthorised.test: example.test does not take its reports.
    'txt-record=unauthorised.test,"v=spf1 ip4:127.0.0.1 -all"',
    'txt-record=_dmarc.unauthorised.test,"v=DMARC1; p=none; rua=mailto:dmarc@example.test"',
    "host-record=client.test,127.0.0.1",
]


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSServer]:
    with dnsmasq(tmp_path_factory.mktemp("dns"), ZONE) as server:
        yield server


def _send(server: Server, sender: str, subject: str) -> int:
    message = (f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
               f"Message-ID: <{subject}@x.test>\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(sender)
        client.rcpt("alice@example.test")
        code, _ = client.data(message)
        return code


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pillarbox"]
    for key, value in server.options.items():
        argv += ["-o", f"{key}={value}"]
    return subprocess.run(argv + ["reports", "send", *args], capture_output=True, text=True,
                          timeout=60, cwd=server.data_dir.parent)


def _report(raw: bytes) -> tuple[email.message.EmailMessage, ET.Element]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    [att] = [p for p in msg.walk() if p.get_content_disposition() == "attachment"]
    assert att.get_content_type() == "application/gzip"
    xml = gzip.decompress(base64.b64decode(att.get_payload()))
    return msg, ET.fromstring(xml)


def test_reports_reach_the_rua_mailbox(server_factory, dns: DNSServer) -> None:
    server: Server = server_factory({
        "server.hostname": HOST, "dns.nameservers": dns.nameserver,
        "policy.spf": "tag", "policy.dmarc": "enforce",
    }, accounts=("alice@example.test", "dmarc@example.test"))
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert _send(server, "a@sender.test", "one") == 250
    assert _send(server, "b@sender.test", "two") == 250
    assert _send(server, "c@doubtful.test", "three") == 250      # quarantined
    assert _send(server, "d@unauthorised.test", "four") == 250
    assert server.wait_delivered(4) == 4
    server.stop()                    # the workers flush their counts as they end

    dry = _cli(server, "--day", today, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dmarc report for sender.test" in dry.stdout and "<feedback>" in dry.stdout
    assert "x@unverified.test" in dry.stdout and "skipped" in dry.stdout
    assert "unauthorised.test" in dry.stdout          # named among the skipped
    assert server.query("SELECT count(*) FROM queue") == [(0,)]

    sent = _cli(server, "--day", today)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.count("queued dmarc report") == 2, sent.stdout
    again = _cli(server, "--day", today)                # once per domain and day
    assert "queued" not in again.stdout.replace("no reports queued", ""), again.stdout

    server.start()
    deadline = time.monotonic() + 30
    while len(server.inbox("dmarc@example.test")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    reports = [_report(raw) for raw in server.inbox("dmarc@example.test")]
    assert len(reports) == 2, server.log()
    by_domain = {root.findtext("policy_published/domain"): (msg, root) for msg, root in reports}
    assert set(by_domain) == {"sender.test", "doubtful.test"}

    msg, root = by_domain["sender.test"]
    assert msg["Subject"].startswith(f"Report Domain: sender.test Submitter: {HOST} Report-ID: <")
    assert root.findtext("report_metadata/org_name") == HOST
    assert root.findtext("report_metadata/email") == f"postmaster@{HOST}"
    [record] = root.findall("record")
    assert record.findtext("row/source_ip") == "127.0.0.1"
    assert record.findtext("row/count") == "2"
    assert record.findtext("row/policy_evaluated/disposition") == "none"
    assert record.findtext("row/policy_evaluated/spf") == "pass"
    assert record.findtext("row/policy_evaluated/dkim") == "fail"
    assert record.findtext("identifiers/header_from") == "sender.test"
    assert record.findtext("auth_results/spf/domain") == "sender.test"
    assert record.findtext("auth_results/spf/result") == "pass"

    _, root = by_domain["doubtful.test"]
    assert root.findtext("policy_published/p") == "quarantine"
    [record] = root.findall("record")
    assert record.findtext("row/count") == "1"
    assert record.findtext("row/policy_evaluated/disposition") == "quarantine"
    assert record.findtext("row/policy_evaluated/spf") == "fail"
    assert record.findtext("auth_results/spf/result") == "fail"
