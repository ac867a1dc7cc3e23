"""The lab itself works: hosts resolve the test zones through the lab's DNS,
reach each other's port 25 over IPv4 and IPv6, the peers take mail, and
teardown leaves nothing behind.  Needs root (skips otherwise, fails under CI)."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.netlab import Lab, LabPillarbox, PostfixMX, SmtpSink, require_lab


def _message(to: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "bob@sender.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Across the lab.\n")
    return msg.as_bytes(policy=SMTP)


def _send(address: str, rcpt: str, subject: str, starttls: bool = False) -> None:
    with smtplib.SMTP(address, 25, local_hostname="tx.sender.test", timeout=10) as client:
        if starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            client.starttls(context=ctx)
        client.sendmail("bob@sender.test", [rcpt], _message(rcpt, subject))


def _query(name: str, rdtype: str, server: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), server, timeout=3)


def test_hosts_resolve_the_zone_and_reach_port_25(tmp_path: Path) -> None:
    require_lab("smtp-sink", "getent")
    with Lab(tmp_path / "lab") as lab:
        tx = lab.host("tx", "198.51.100.10", "2001:db8:1::10")
        mx = lab.host("mx", "192.0.2.25", "2001:db8::25", dns_name="mx.remote.test")
        lab.dns.mx("remote.test", 10, "mx.remote.test").null_mx("nomail.test")
        lab.dns.txt("remote.test", "v=spf1 ip4:192.0.2.25 -all")
        lab.start()
        sink = SmtpSink(mx).start()

        # Programs run in a host see the lab's DNS as /etc/resolv.conf.
        assert "nameserver 192.0.2.53" in tx.exec(["cat", "/etc/resolv.conf"]).stdout
        found = tx.exec(["getent", "ahosts", "mx.remote.test"], check=True).stdout
        assert {line.split()[0] for line in found.splitlines()} == {"192.0.2.25", "2001:db8::25"}
        assert tx.exec(["getent", "hosts", "nowhere.test"]).returncode == 2  # not found

        # Python code in the host's namespace reaches the DNS server itself.
        answer = tx.call(_query, "remote.test", "MX", "2001:db8::53")
        assert [r.to_text() for r in answer.answer[0]] == ["10 mx.remote.test."]
        assert [r.to_text() for r in tx.call(_query, "nomail.test", "MX", "192.0.2.53").answer[0]] \
            == ["0 ."]
        txt = tx.call(_query, "remote.test", "TXT", "192.0.2.53")
        assert txt.answer[0][0].strings == (b"v=spf1 ip4:192.0.2.25 -all",)
        nx = tx.call(_query, "nowhere.test", "MX", "192.0.2.53")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority  # with its SOA

        # Port 25 of the MX, over both families, and mail through it.
        assert tx.connect("192.0.2.25", 25).startswith(b"220 ")
        assert tx.connect("2001:db8::25", 25).startswith(b"220 ")
        tx.call(_send, "2001:db8::25", "alice@remote.test", "over IPv6")
        tx.call(_send, "192.0.2.25", "alice@remote.test", "over IPv4")
        received = sink.messages()
        assert len(received) == 2
        (v6,) = [m for m in received if b"Subject: over IPv6" in m]
        (v4,) = [m for m in received if b"Subject: over IPv4" in m]
        assert b"X-Client-Addr: ipv6:2001:db8:1::10" in v6 and b"X-Client-Addr: 198.51.100.10" in v4

        # A blackholed MX: connections to it time out (no SYN-ACK comes back).
        mx.blackhole("198.51.100.10/32")
        with pytest.raises(OSError):
            tx.connect("192.0.2.25", 25, timeout=1.0)
        assert tx.connect("2001:db8::25", 25).startswith(b"220 ")  # only that prefix
        mx.clear_blackholes()
        assert tx.connect("192.0.2.25", 25).startswith(b"220 ")

        queries = lab.dns.queries()
        assert ("MX", "remote.test", "2001:db8:1::10") in {(q.type, q.name, q.client)
                                                          for q in queries}

        # The lab's addresses exist only inside its namespaces.
        outside = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
        ours = [a for h in lab.hosts.values() for a in h.addresses]
        assert not [a for a in ours if f" {a}/" in outside]


def test_pillarbox_and_postfix_peers(tmp_path: Path) -> None:
    require_lab("postfix")
    with Lab(tmp_path / "lab") as lab:
        tx = lab.host("tx", "198.51.100.10")
        pf = lab.host("pf", "192.0.2.25", "2001:db8::25", dns_name="mx.postfix.test")
        pbx = lab.host("pbx", "203.0.113.25", "2001:db8:2::25", dns_name="mx.pillarbox.test")
        lab.start()
        postfix = PostfixMX(pf, "mx.postfix.test", ["postfix.test"],
                            recipients=["alice@postfix.test"]).start()
        pillarbox = LabPillarbox(pbx, "mx.pillarbox.test",
                                 accounts=("carol@pillarbox.test",)).start()

        assert tx.connect("192.0.2.25", 25).startswith(b"220 mx.postfix.test ESMTP")
        tx.call(_send, "192.0.2.25", "alice@postfix.test", "to Postfix", True)
        postfix.wait_until(lambda: bool(postfix.maildir("alice@postfix.test")), 30,
                           "delivery to alice's Maildir")
        (stored,) = postfix.maildir("alice@postfix.test")
        assert b"Subject: to Postfix" in stored
        assert b"(using TLS" in stored  # the Received: header of a STARTTLS session
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            tx.call(_send, "192.0.2.25", "nobody@postfix.test", "unknown")

        assert tx.connect("203.0.113.25", 25).startswith(b"220 mx.pillarbox.test")
        tx.call(_send, "203.0.113.25", "carol@pillarbox.test", "to Pillarbox", True)
        assert pillarbox.wait_delivered(1) == 1
        (stored,) = pillarbox.inbox("carol@pillarbox.test")
        assert b"Subject: to Pillarbox" in stored and b"[198.51.100.10]" in stored


def test_teardown_leaves_nothing_even_on_failure(tmp_path: Path) -> None:
    require_lab("smtp-sink")
    lab = Lab(tmp_path / "lab")
    mx = lab.host("mx", "192.0.2.25")
    with pytest.raises(ZeroDivisionError):
        with lab:
            lab.start()
            sink = SmtpSink(mx).start()
            stray = mx.popen(["sleep", "600"])
            namespaces = [lab.core, *(h.netns for h in lab.hosts.values())]
            pids = [sink.procs[0].pid, stray.pid]
            1 / 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed.split()]
    assert not [ns for ns in namespaces if Path("/etc/netns", ns).exists()]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX"
    with Lab(tmp_path / "other") as other, pytest.raises(ValueError, match="documentation"):
        other.host("evil", "10.0.0.1")


def test_the_docstring_example(tmp_path: Path) -> None:
    """The example in tests/netlab/__init__.py runs as written."""
    import textwrap

    import tests.netlab

    doc = tests.netlab.__doc__ or ""
    code = textwrap.dedent(doc.split("in test_lab.py)::\n", 1)[1])
    namespace: dict[str, object] = {}
    exec(compile(code, "tests/netlab/__init__.py (docstring)", "exec"), namespace)
    namespace["test_mail_to_the_mx_of_remote_test"](tmp_path)  # type: ignore[operator]
