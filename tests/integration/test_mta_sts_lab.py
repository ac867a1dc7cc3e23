"""MTA-STS end to end, in the test Internet (issue 8, "How it is checked").

One lab for the module (``tests/netlab``): the sending Pillarbox in host ``tx``
(``mail.sender.test``), dnsmasq serving the zones, a policy web server and
three receiving domains, all of which publish ``_mta-sts`` TXT records and an
``enforce`` policy:

=============  =================  ===================================================
domain         MX                 what it is
=============  =================  ===================================================
strict.test    mx.strict.test     Postfix with a self-signed certificate: not valid
good.test      mx.good.test       Postfix with a certificate of the test CA
wrongmx.test   mx.good.test       the policy allows only ``*.mail.wrongmx.test``
=============  =================  ===================================================

The policies come from ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``, a
small HTTPS server of Python's standard library (not our own, so the client is
checked against another implementation) in host ``web``, with a certificate of
the test CA.  The sending Pillarbox trusts that CA through real options only:
``delivery.mta_sts_ca_file`` for the policy host, ``delivery.tls_ca_file`` for
the MX certificates.  Short retries and the shortest ``queue.lifetime`` (60 s)
let the failure report arrive within the test.  Needs root (skips outside it,
fails under ``CI=true``).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from tests.integration import test_outbound_lab as outbound
from tests.integration.test_outbound_lab import (
    BODY,
    SENDER_HOST,
    body_of,
    check_report_envelope,
    log_events,
    message,
    parse_dsn,
    queue_entry,
    reports,
    sender_log,
    sendmail,
    wait_for,
    wait_gone_from_queue,
)
from tests.netlab import Host, Lab, LabPillarbox, PostfixMX, require_lab
from tests.unit.test_mta_sts import LabCA

SENDERS = ("alice@sender.test", "bob@sender.test", "carol@sender.test")
WEB_V4 = "192.0.2.143"

POLICIES = {
    "mta-sts.strict.test": "version: STSv1\r\nmode: enforce\r\nmx: mx.strict.test\r\n"
                           "max_age: 86400\r\n",
    "mta-sts.good.test": "version: STSv1\r\nmode: enforce\r\nmx: mx.good.test\r\n"
                         "max_age: 86400\r\n",
    "mta-sts.wrongmx.test": "version: STSv1\r\nmode: enforce\r\nmx: *.mail.wrongmx.test\r\n"
                            "max_age: 86400\r\n",
}

# The policy host: http.server over TLS, one policy per Host header, 404 otherwise.
POLICY_SERVER = r'''
import http.server, json, ssl, sys
address, cert, key, policies = sys.argv[1], sys.argv[2], sys.argv[3], json.load(open(sys.argv[4]))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        body = policies.get(host) if self.path == "/.well-known/mta-sts.txt" else None
        data = (body or "not found\n").encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.headers.get("Host"), fmt % args))
        sys.stderr.flush()

server = http.server.ThreadingHTTPServer((address, 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
'''


@dataclass
class World:
    lab: Lab
    tx: Host
    web: Host
    sender: LabPillarbox
    config: Path                    # the sending Pillarbox's pillarbox.toml, for sendmail
    strict: PostfixMX
    good: PostfixMX

    @property
    def out(self) -> outbound.World:
        """This world for the helpers of test_outbound_lab, which read only its
        ``tx``, ``config`` and ``sender``."""
        return cast(outbound.World, self)

    def web_log(self) -> str:
        path = self.web.directory / "policy-server.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_lab("postfix")
    with Lab(tmp_path_factory.mktemp("mta-sts") / "lab", ttl=60) as lab:
        tx = lab.host("tx", "198.51.100.10", "2001:db8:1::10")
        web = lab.host("web", WEB_V4, dns_name="mta-sts.strict.test")
        bad = lab.host("bad", "192.0.2.25", "2001:db8::25", dns_name="mx.strict.test")
        good = lab.host("good", "203.0.113.25", "2001:db8:2::25", dns_name="mx.good.test")
        (lab.dns.mx("strict.test", 10, "mx.strict.test")
            .mx("good.test", 10, "mx.good.test")
            .mx("wrongmx.test", 10, "mx.good.test")
            .address("mta-sts.good.test", WEB_V4).address("mta-sts.wrongmx.test", WEB_V4)
            .txt("_mta-sts.strict.test", "v=STSv1; id=strict1;")
            .txt("_mta-sts.good.test", "v=STSv1; id=good1")
            .txt("_mta-sts.wrongmx.test", "v=STSv1; id=wrong1"))
        lab.start()

        ca_dir = lab.public / "ca"
        ca = LabCA(ca_dir)
        ca_dir.chmod(0o755)
        web.directory.mkdir(parents=True, exist_ok=True)
        web_cert, web_key = ca.issue(*POLICIES, stem="web")
        policies = web.directory / "policies.json"
        policies.write_text(json.dumps(POLICIES), encoding="utf-8")
        script = web.directory / "policy_server.py"
        script.write_text(POLICY_SERVER, encoding="utf-8")
        with open(web.directory / "policy-server.log", "ab") as log:
            web.popen([sys.executable, str(script), WEB_V4, str(web_cert), str(web_key),
                       str(policies)], stdout=log, stderr=log)
        _wait_for_listener(tx, WEB_V4, 443)

        # mx.strict.test: STARTTLS with PostfixMX's own self-signed certificate.
        strict = PostfixMX(bad, "mx.strict.test", ["strict.test"]).start()
        mx_cert, mx_key = ca.issue("mx.good.test", stem="mx.good.test")
        good_mx = PostfixMX(good, "mx.good.test", ["good.test", "wrongmx.test"], settings={
            "smtpd_tls_cert_file": str(mx_cert), "smtpd_tls_key_file": str(mx_key)}).start()

        sender = LabPillarbox(tx, SENDER_HOST, accounts=SENDERS, options={
            "queue.retry_first": "2s",
            "queue.retry_max": "4s",
            "queue.lifetime": "60s",
            "delivery.connect_timeout": "3s",
            "delivery.mta_sts_ca_file": str(ca.ca_file),
            "delivery.tls_ca_file": str(ca.ca_file),
        }).start()
        config = tx.directory / "pillarbox.toml"
        config.write_text(f'[server]\ndata_dir = "{sender.data_dir}"\n'
                          f'hostname = "{SENDER_HOST}"\n', encoding="utf-8")
        yield World(lab, tx, web, sender, config, strict, good_mx)


def _wait_for_listener(host: Host, address: str, port: int, timeout: float = 20) -> None:
    def probe() -> bool:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return True
        except OSError:
            return False
    deadline = time.monotonic() + timeout
    while not host.call(probe):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {address}:{port}")
        time.sleep(0.1)


def sts_events(world: World, domain: str) -> list[dict[str, str]]:
    return log_events(world.sender, "sts policy", domain=domain)


# ------------------------------------------------------------ the scenarios


def test_an_mx_without_a_valid_certificate_gets_no_mail(world: World) -> None:
    """The scenario of the issue: deferred while the queue keeps it, then a DSN
    that says why; the message never reaches the MX."""
    data = message("alice@sender.test", "paul@strict.test", "to a strict domain", BODY)
    started = time.monotonic()
    qid = sendmail(world.out, "-f", "alice@sender.test", "--", "paul@strict.test", data=data)

    def deferred_reply() -> str | None:
        entry = queue_entry(world.out, qid)
        reply = entry.recipients[0].last_reply if entry is not None else None
        return reply if reply and "MTA-STS" in reply else None
    reply = wait_for("a deferral that names the MTA-STS policy", deferred_reply, 30,
                     lambda: sender_log(world.out)() + "\n--- web ---\n" + world.web_log())
    assert reply.startswith("451 4.7.5 MTA-STS policy of strict.test (enforce) requires TLS "
                            "with a certificate valid for mx.strict.test"), reply
    assert "certificate verify failed" in reply, reply
    [fetched] = log_events(world.sender, "sts fetch", domain="strict.test")
    assert fetched["result"] == "fetched" and fetched["id"] == "strict1"
    assert fetched["mode"] == "enforce" and fetched["mx"] == "mx.strict.test"
    assert 'mta-sts.strict.test "GET /.well-known/mta-sts.txt HTTP/1.1" 200' in world.web_log()

    [raw] = reports(world.out, "alice@sender.test", timeout=120)
    assert time.monotonic() - started > 55        # queue.lifetime: not before
    dsn = parse_dsn(raw)
    check_report_envelope(dsn.msg, "alice@sender.test")
    [rec] = dsn.per_recipient
    assert rec["Final-Recipient"] == "rfc822;paul@strict.test"
    assert rec["Action"] == "failed"
    assert rec["Status"] == "4.4.7"   # the queue's: delivery time expired (RFC 3463)
    assert rec["Diagnostic-Code"] == f"smtp;{reply}" or \
        rec["Diagnostic-Code"].startswith("smtp;451 4.7.5 MTA-STS policy of strict.test "
                                          "(enforce) requires TLS"), rec["Diagnostic-Code"]
    assert "certificate verify failed" in rec["Diagnostic-Code"]
    assert "MTA-STS policy of strict.test" in dsn.text
    wait_gone_from_queue(world.out, qid)
    tried = log_events(world.sender, "attempt", queue_id=qid)
    assert len(tried) >= 2 and all(a["result"] in ("next", "deferred", "failed")
                                   for a in tried), tried
    assert not world.strict.maildir("paul@strict.test")
    # Every try checked the policy (§5.1: DNS is asked again before giving up).
    assert len(sts_events(world, "strict.test")) >= 2


def test_an_mx_with_a_valid_certificate_gets_it_over_verified_tls(world: World) -> None:
    data = message("bob@sender.test", "rita@good.test", "to a good domain", BODY)
    qid = sendmail(world.out, "-f", "bob@sender.test", "--", "rita@good.test", data=data)
    (stored,) = wait_for("the message at mx.good.test",
                         lambda: world.good.maildir("rita@good.test"), 30,
                         lambda: sender_log(world.out)() + "\n--- web ---\n" + world.web_log())
    assert body_of(stored) == body_of(data)
    assert re.search(rb"\(using TLSv1\.[23] ", stored), "Postfix's Received: says no TLS"
    wait_gone_from_queue(world.out, qid)
    [attempt] = log_events(world.sender, "attempt", queue_id=qid)
    assert attempt["mx"] == "mx.good.test" and attempt["result"] == "delivered"
    assert re.fullmatch(r"TLSv1\.[23] \S+ verified", attempt["tls"]), attempt
    [applied] = [e for e in sts_events(world, "good.test") if e.get("queue_id") == qid]
    assert applied["mode"] == "enforce" and applied["id"] == "good1"


def test_mx_hosts_the_policy_does_not_name_are_not_tried(world: World) -> None:
    data = message("carol@sender.test", "sam@wrongmx.test", "to the wrong MX", BODY)
    qid = sendmail(world.out, "-f", "carol@sender.test", "--", "sam@wrongmx.test", data=data)

    def deferred_reply() -> str | None:
        entry = queue_entry(world.out, qid)
        reply = entry.recipients[0].last_reply if entry is not None else None
        return reply if reply and "MTA-STS" in reply else None
    reply = wait_for("a deferral for the MX the policy does not allow", deferred_reply, 30,
                     sender_log(world.out))
    assert reply == ("451 4.7.5 MTA-STS policy of wrongmx.test (enforce) allows only MX hosts "
                     "matching *.mail.wrongmx.test; the domain's MX hosts (mx.good.test) match "
                     "none of them (RFC 8461 4.1)"), reply
    tried = log_events(world.sender, "attempt", queue_id=qid)
    assert tried and all("mx" not in a and a["result"] == "deferred" for a in tried), tried
    assert not world.good.maildir("sam@wrongmx.test")
