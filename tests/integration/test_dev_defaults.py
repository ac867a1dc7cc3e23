"""The README's first steps: the development defaults, a first message, the CLI."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_ports
from tests.dnsserver import dnsmasq


def test_serve_without_configuration_is_a_complete_development_server(tmp_path):
    # The development defaults check SPF, DMARC, HELO and iprev of every message,
    # which ask the DNS: a nameserver of the test's own on loopback (dnsmasq, no
    # upstream), not the machine's resolver (tests talk to loopback only).
    (tmp_path / "dns").mkdir()
    with dnsmasq(tmp_path / "dns", []) as dns:
        _serve_and_use(tmp_path, dns.nameserver)


def _serve_and_use(tmp_path: Path, nameserver: str) -> None:
    # The development ports (IMAP 2143/2993, POP3 2110/2995, submission 2587/2465)
    # may be taken here: free ones instead, all different.
    port, imap, imaps, pop3, pop3s, submit, submits = free_ports(7)
    options = {"smtp.listen": port, "imap.listen": imap, "imap.listen_tls": imaps,
               "pop3.listen": pop3, "pop3.listen_tls": pop3s,
               "submission.listen": submit, "submission.listen_tls": submits}
    args = [sys.executable, "-m", "pillarbox"]
    for key, value in options.items():
        args += ["-o", f"{key}=127.0.0.1:{value}"]
    args += ["-o", f"dns.nameservers={nameserver}"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*args, "serve"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        text = log.read_text()
        while "demo account:" not in text and time.monotonic() < deadline:
            time.sleep(0.1)   # the port may answer before the banner reaches the log
            text = log.read_text()
        assert "serving localhost" in text
        assert f"SMTP:   127.0.0.1:{port} (STARTTLS on)" in text
        assert f"IMAP:   127.0.0.1:{imap} (STARTTLS)" in text
        assert f"IMAPS:  127.0.0.1:{imaps} (implicit TLS)" in text
        assert f"POP3:   127.0.0.1:{pop3} (STLS)" in text
        assert f"POP3S:  127.0.0.1:{pop3s} (implicit TLS)" in text
        assert f"SUBMIT: 127.0.0.1:{submit} (STARTTLS, AUTH)" in text
        assert f"SUBMITS: 127.0.0.1:{submits} (implicit TLS, AUTH)" in text
        password = re.search(r"demo account: demo@localhost  password: (\S+)", text)
        assert password, text
        assert (tmp_path / "pillarbox-data" / "demo-password").read_text().strip() == password[1]

        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("you@example.org", ["demo@localhost", "postmaster@localhost"],
                          b"Subject: Hello\r\n\r\nMy first message through Pillarbox.\r\n")
        deadline = time.monotonic() + 10
        listing = ""
        while time.monotonic() < deadline:
            listing = subprocess.run(
                [sys.executable, "-m", "pillarbox", "mailbox", "list", "demo@localhost"],
                cwd=tmp_path, capture_output=True, text=True, check=True,
            ).stdout
            if re.search(r"^INBOX\s+1\s", listing, re.MULTILINE):
                break
            time.sleep(0.1)
        # One copy, although postmaster@localhost is an alias of the same account.
        assert re.search(r"^INBOX\s+1\s", listing, re.MULTILINE), listing
        # The demo account reads it over IMAP with the printed password (plaintext
        # login is allowed on loopback by the development defaults).
        with imaplib.IMAP4("127.0.0.1", imap, timeout=15) as client:
            assert client.login("demo@localhost", password[1])[0] == "OK"
            typ, data = client.select("INBOX")
            assert typ == "OK" and data == [b"1"], data
            typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK" and b"Subject: Hello" in data[0][1], data
        queue = subprocess.run([sys.executable, "-m", "pillarbox", "queue", "list"],
                               cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        assert "queue is empty" in queue
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert "serve stopped" in log.read_text()
