"""Shared test fixtures: free ports, a real server in a subprocess, tool checks."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.store.sqlite.store import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` different free ports: held open together while they are picked, so
    the kernel cannot hand out one of them twice (two of a server's listen keys
    on one port are a configuration error)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def need_tool(name: str) -> str:
    """The path of an external tool; skip without it, fail under CI (CI=true)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        message = f"{name} is not installed (Debian package: see .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


_TAKEN = re.compile(r"cannot listen on 127\.0\.0\.1:(\d+): Address already in use")


class _PortTaken(RuntimeError):
    def __init__(self, port: int, log: str) -> None:
        super().__init__(f"server exited: {log}")
        self.port = port


# The ports Server picks itself, by attribute, and the option each one fills.
_PORTS = {"port": "smtp.listen", "imap_port": "imap.listen", "imaps_port": "imap.listen_tls",
          "pop3_port": "pop3.listen", "pop3s_port": "pop3.listen_tls",
          "submission_port": "submission.listen", "submissions_port": "submission.listen_tls"}


class Server:
    """``pillarbox serve`` on a free loopback port with its own data directory."""

    def __init__(self, data_dir: Path, options: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        (self.port, self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port,
         self.submission_port, self.submissions_port) = free_ports(7)
        self.options = {
            "server.data_dir": str(data_dir),
            "server.hostname": "mx.test",
            **{key: f"127.0.0.1:{getattr(self, attr)}" for attr, key in _PORTS.items()},
            "server.workers": "1",
            # Mail for other domains must not ask the machine's resolver (tests
            # talk to loopback only): a nameserver on loopback that is not there.
            "dns.nameservers": "127.0.0.1",
            # ... so SPF and DMARC, which ask DNS of every message, would wait for
            # it to time out.  Tests of those checks bring a DNS server of their
            # own (tests/integration/test_origin.py).
            "policy.spf": "off",
            "policy.dmarc": "off",
            "policy.iprev": "false",
            "policy.helo": "off",
            **(options or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def db(self) -> Path:
        return self.data_dir / "pillarbox.db"

    def start(self, timeout: float = 20.0) -> Server:
        # A port from free_port() can be taken before the server binds it (the
        # kernel hands the same ephemeral ports to other tests' outgoing
        # connections): then that one port is picked again, a few times at most.
        for _ in range(4):
            try:
                return self._start(timeout)
            except _PortTaken as taken:
                if not self._repick(taken.port):
                    raise
        return self._start(timeout)

    def _repick(self, port: int) -> bool:
        """Give the auto-picked ``port`` a new number (False: the test chose it)."""
        for attr, key in _PORTS.items():
            if getattr(self, attr) == port and self.options[key] == f"127.0.0.1:{port}":
                taken = {getattr(self, a) for a in _PORTS}
                setattr(self, attr, next(p for p in iter(free_port, None) if p not in taken))
                self.options[key] = f"127.0.0.1:{getattr(self, attr)}"
                return True
        return False

    def _start(self, timeout: float) -> Server:
        try:
            offset = self.log_path.stat().st_size   # this attempt's lines come after
        except FileNotFoundError:
            offset = 0
        args = [sys.executable, "-m", "pillarbox"]
        for key, value in self.options.items():
            args += ["-o", f"{key}={value}"]
        args.append("serve")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=self.data_dir.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = self.log()
                taken = _TAKEN.search(log_text, offset)
                if taken:
                    raise _PortTaken(int(taken.group(1)), log_text)
                raise RuntimeError(f"server exited: {log_text}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def log(self) -> str:
        """The server's log so far (lines reach the file within 0.1 s: LineHandler)."""
        time.sleep(0.3)
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the supervisor and every child at once: the crash of the crash test."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def delivered(self) -> int:
        return self.query("SELECT count(*) FROM messages")[0][0]

    def wait_delivered(self, n: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        count = self.delivered()
        while count < n and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.delivered()
        return count

    def inbox(self, address: str) -> list[bytes]:
        """Every message in the INBOX of ``address``, as a client would read it."""
        rows = self.query(
            "SELECT m.prefix, m.blob FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
            " JOIN accounts a ON b.account = a.id WHERE a.address = ? AND b.name = 'INBOX'"
            " ORDER BY m.uid",
            (address,),
        )
        out = []
        store = SQLiteStore(self.data_dir)
        try:
            for prefix, blob in rows:
                out.append(bytes(prefix) + store.read_blob(blob))
        finally:
            store.close()
        return out


def add_account(data_dir: Path, address: str, password: str = "secret") -> None:
    from pillarbox.auth.passwords import make_secrets
    from pillarbox.store.base import AlreadyExists
    from pillarbox.store.sqlite.store import SQLiteStore

    store = SQLiteStore(data_dir).open()
    try:
        domain = address.rpartition("@")[2]
        try:
            store.add_domain(domain)
        except AlreadyExists:
            pass
        store.add_account(address, *make_secrets(password))
    finally:
        store.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def make(options: dict[str, str] | None = None, *, accounts=("alice@example.test",),
             start: bool = True, name: str = "data") -> Server:
        data_dir = tmp_path / name
        data_dir.mkdir(exist_ok=True)
        for address in accounts:
            add_account(data_dir, address)
        server = Server(data_dir, options)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(server_factory) -> Server:
    return server_factory()
