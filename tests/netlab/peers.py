"""Mail servers in lab hosts: Pillarbox, smtp-sink(1), a private Postfix MX.

Each is started inside a :class:`~tests.netlab.lab.Host` (``ip netns exec``),
listens on port 25 of the host's addresses, is stopped by the lab at teardown
(or by its ``stop()``), and keeps its files under ``host.directory``.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from tests.conftest import Server, add_account
from tests.interop.postfix import PrivatePostfix
from tests.netlab.lab import Host, _tool


def _listen(host: Host, port: int) -> str:
    return ",".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in host.addresses)


class LabPillarbox(Server):
    """``pillarbox serve`` in a lab host: SMTP on port 25 of every address of the
    host, the other services on their development defaults on the namespace's
    own loopback.  Has :class:`tests.conftest.Server`'s ``query``,
    ``wait_delivered``, ``inbox`` and ``log``."""

    def __init__(self, host: Host, hostname: str, *, accounts: tuple[str, ...] = (),
                 options: dict[str, str] | None = None, port: int = 25) -> None:
        data_dir = host.directory / "pillarbox"
        data_dir.mkdir(parents=True, exist_ok=True)
        for address in accounts:
            add_account(data_dir, address)
        super().__init__(data_dir)
        self.host = host
        self.port = port
        self.options = {
            "server.data_dir": str(data_dir),
            "server.hostname": hostname,
            "server.workers": "1",
            "smtp.listen": _listen(host, port),
            **(options or {}),
        }

    def start(self, timeout: float = 30.0) -> LabPillarbox:
        args = [sys.executable, "-m", "pillarbox"]
        for key, value in self.options.items():
            args += ["-o", f"{key}={value}"]
        args.append("serve")
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen(args, stdout=log, stderr=log, cwd=self.data_dir.parent,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        address = self.host.addresses[0]
        self.host.wait_for_port(address, self.port, timeout, self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.host.lab.stop_process(self.proc, timeout=20)
            self.proc = None


class SmtpSink:
    """smtp-sink(1) on port 25 of a host: accepts every message and writes each
    to a file in ``directory`` (``-d``), so a test can read what arrived.
    ``options``: more smtp-sink options, e.g. ``["-8"]`` (no 8BITMIME)."""

    def __init__(self, host: Host, *, port: int = 25, options: list[str] | None = None) -> None:
        self.host = host
        self.port = port
        self.directory = host.directory / "sink"
        self.log_path = host.directory / "smtp-sink.log"
        self.options = list(options or [])
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 10.0) -> SmtpSink:
        self.directory.mkdir(parents=True, exist_ok=True)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.directory, nobody.pw_uid, nobody.pw_gid)  # it writes as nobody
        sink = _tool("smtp-sink") or "smtp-sink"
        # Postfix's listeners set IPV6_V6ONLY: one smtp-sink per address family.
        listeners = [(a, w) for a, w in ((self.host.ipv4, f"inet:0.0.0.0:{self.port}"),
                                         (self.host.ipv6, f"inet:[::]:{self.port}")) if a]
        for _, where in listeners:
            argv = [sink, "-u", "nobody", "-c", "-d", f"{self.directory}/%Y%m%d%H%M%S.",
                    *self.options, where, "256"]
            with open(self.log_path, "ab") as log:
                self.procs.append(self.host.popen(argv, stdout=log, stderr=log))
        for (address, _), proc in zip(listeners, self.procs):
            self.host.wait_for_port(address, self.port, timeout, proc, self.log)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages(self) -> list[bytes]:
        """Every mail transaction received so far (smtp-sink's dump format: its
        ``X-Client-Addr:``, ``X-Mail-Args:``, ``X-Rcpt-Args:`` … lines, then the message)."""
        if not self.directory.exists():
            return []
        files = [p for p in self.directory.iterdir() if p.is_file()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.stat().st_mtime_ns)]

    def stop(self) -> None:
        for proc in self.procs:
            self.host.lab.stop_process(proc)
        self.procs.clear()


class PostfixMX(PrivatePostfix):
    """A private Postfix (tests/interop/postfix.py) as the MX of ``domains`` in a
    lab host: smtpd(8) on port 25 of the host's addresses, STARTTLS offered with
    a self-signed certificate, and virtual(8) delivering each recipient to a
    Maildir (``<root>/mail/<domain>/<local part>/`` with ``recipients``, else one
    for all); :meth:`maildir` finds a recipient's messages by ``Delivered-To:``.

    ``recipients``: the addresses that exist (others get 550 5.1.1 at RCPT);
    None: every local part of ``domains`` exists.  ``settings``: more main.cf."""

    def __init__(self, host: Host, hostname: str, domains: list[str], *,
                 recipients: list[str] | None = None, tls: bool = True,
                 settings: dict[str, str] | None = None) -> None:
        root = host.directory / "postfix"
        root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.mail_dir = root / "mail"
        postfix = _tool("postfix") or "/usr/sbin/postfix"
        sendmail = _tool("sendmail") or "/usr/sbin/sendmail"
        self._wrappers = {"postfix": postfix, "sendmail": sendmail}
        for name, real in self._wrappers.items():
            script = host.directory / f"{name}-in-netns"
            script.write_text(f'#!/bin/sh\nexec ip netns exec {host.netns} {real} "$@"\n')
            script.chmod(0o755)
        owner = pwd.getpwnam("postfix")
        table = root / "vmailbox"
        if recipients is None:
            # virtual(8) allows no regexp substitution: one Maildir takes them all.
            table.write_text("", encoding="utf-8")
            maps = "static:all/"
        else:
            table.write_text("".join(f"{r} {r.rpartition('@')[2]}/{r.rpartition('@')[0]}/\n"
                                     for r in recipients), encoding="utf-8")
            maps = f"texthash:{table}"
        main = {
            "myhostname": hostname,
            "mydestination": "",
            "inet_interfaces": "all",  # in its namespace: the host's addresses and loopback
            "inet_protocols": "all" if host.ipv6 else "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP Postfix (netlab)",
            "virtual_mailbox_domains": " ".join(domains),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": maps,
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "smtpd_reject_unlisted_recipient": "yes",
            "disable_dns_lookups": "no",
        }
        if tls:
            from pillarbox.net.tls import ensure_self_signed

            cert, key = ensure_self_signed(root / "tls", hostname)
            main |= {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(cert),
                     "smtpd_tls_key_file": str(key), "smtpd_tls_loglevel": "1",
                     "smtpd_tls_received_header": "yes"}
        super().__init__(root, {**main, **(settings or {})},
                         postfix=str(host.directory / "postfix-in-netns"),
                         sendmail=str(host.directory / "sendmail-in-netns"))

    def write_config(self) -> None:
        super().write_config()
        self.mail_dir.mkdir(exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.mail_dir, owner.pw_uid, owner.pw_gid)
        with open(self.config_dir / "master.cf", "a", encoding="utf-8") as f:
            f.write("smtp       inet       n   -   n   -      -   smtpd\n"
                    "virtual    unix       -   n   n   -      -   virtual\n")

    def start(self, timeout: float = 20.0) -> PostfixMX:
        super().start(timeout)
        self.host.wait_for_port(self.host.addresses[0], 25, timeout, None, self.log)
        return self

    def maildir(self, address: str) -> list[bytes]:
        """The messages delivered to ``address`` (found by the ``Delivered-To:``
        header virtual(8) adds), oldest first."""
        wanted = f"delivered-to: {address}\n".lower().encode()
        files = [p for sub in ("new", "cur") for p in self.mail_dir.glob(f"**/{sub}/*")
                 if p.is_file()]
        out = []
        for path in sorted(files, key=lambda p: p.stat().st_mtime_ns):
            data = path.read_bytes()
            head = data.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n").lower() + b"\n"
            if b"\n" + wanted in b"\n" + head:
                out.append(data)
        return out
