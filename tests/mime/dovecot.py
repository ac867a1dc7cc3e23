"""A private Dovecot IMAP server for differential tests, and a tiny IMAP client.

Dovecot runs from a temporary directory with its own configuration, a
passwd-file user, maildir storage under the same directory and a loopback port
found by binding port 0; nothing of the system's Dovecot (configuration, ports,
state) is read or touched. The client speaks just enough IMAP4rev1 to APPEND
messages and FETCH items, returning every item's raw octets.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DOVECOT = os.environ.get("PILLARBOX_DOVECOT", "/usr/sbin/dovecot")

_CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {uid}
first_valid_gid = {gid}
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
mail_location = maildir:{d}/mail
mail_fsync = never
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
"""


def available() -> bool:
    return os.path.exists(DOVECOT) and os.access(DOVECOT, os.X_OK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ids(name: str) -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


class PrivateDovecot:
    """``with PrivateDovecot() as dv: client = dv.connect()``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pillarbox-dovecot-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateDovecot:  # noqa: PYI034 - a final class, not subclassed
        d = self.dir
        os.chmod(d, 0o755)
        if os.geteuid() == 0:
            # Dovecot refuses root for login and mail processes: use its own users.
            internal, login = "dovecot", "dovenull"
            uid, gid = _ids("dovecot")
        else:
            import grp
            import pwd

            internal = login = pwd.getpwuid(os.getuid()).pw_name
            uid, gid = os.getuid(), os.getgid()
            internal_group = grp.getgrgid(gid).gr_name
        internal_group = internal if os.geteuid() == 0 else internal_group
        for sub in ("mail", "home"):
            (d / sub).mkdir()
            os.chown(d / sub, uid, gid)
        (d / "passwd").write_text(f"test:{{PLAIN}}pass:{uid}:{gid}::{d}/home::\n")
        (d / "dovecot.conf").write_text(_CONF.format(
            d=d, uid=min(uid, 500), gid=min(gid, 500), internal=internal,
            internal_group=internal_group, login=login, port=self.port))
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(d / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err}\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("dovecot did not start listening\n" + self.log())

    def log(self) -> str:
        try:
            return (self.dir / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not os.environ.get("PILLARBOX_KEEP_DOVECOT"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self) -> ImapClient:
        c = ImapClient(("127.0.0.1", self.port))
        c.command(b"LOGIN test pass")
        return c


class ImapError(Exception):
    pass


class ImapClient:
    def __init__(self, addr: tuple[str, int]):
        self.sock = socket.create_connection(addr, timeout=30)
        self.buf = b""
        self.tag = 0
        self.read_response()  # greeting

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ImapError("connection closed")
        self.buf += data

    def read_response(self) -> bytes:
        """One response line with its literals, as raw octets (without the final CRLF)."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line
            m = re.search(rb"~?\{(\d+)\+?\}$", line)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def send(self, cmd: bytes) -> bytes:
        self.tag += 1
        tag = b"t%d" % self.tag
        self.sock.sendall(tag + b" " + cmd + b"\r\n")
        return tag

    def collect(self, tag: bytes) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            r = self.read_response()
            if r.startswith(tag + b" "):
                return untagged, r
            untagged.append(r)

    def command(self, cmd: bytes) -> list[bytes]:
        untagged, done = self.collect(self.send(cmd))
        if done.split(b" ", 2)[1] != b"OK":
            raise ImapError(done.decode("latin-1"))
        return untagged

    def append(self, mailbox: bytes, message: bytes) -> bool:
        tag = self.send(b"APPEND %s {%d+}\r\n%s" % (mailbox, len(message), message))
        _, done = self.collect(tag)
        return done.split(b" ", 2)[1] == b"OK"


def parse_fetch(resp: bytes) -> tuple[int, dict[str, bytes]]:
    """``* 3 FETCH (NAME value ...)`` → (3, {NAME: raw value})."""
    m = re.match(rb"\* (\d+) FETCH \(", resp)
    if not m:
        raise ImapError(f"not a FETCH response: {resp[:80]!r}")
    i = m.end()
    items: dict[str, bytes] = {}
    while i < len(resp) and resp[i : i + 1] != b")":
        j = i
        depth = 0
        while resp[j : j + 1] != b" " or depth:  # item name, maybe with [..] / <..>
            c = resp[j : j + 1]
            if c == b"[":
                depth += 1
            elif c == b"]":
                depth -= 1
            j += 1
        name = resp[i:j].decode("latin-1")
        start = j + 1
        end = _value_end(resp, start)
        items[name] = resp[start:end]
        i = end + 1 if resp[end : end + 1] == b" " else end
    return int(m.group(1)), items


def _value_end(s: bytes, i: int) -> int:
    depth = 0
    while True:
        c = s[i : i + 1]
        if c == b'"':
            i += 1
            while s[i : i + 1] != b'"':
                i += 2 if s[i : i + 1] == b"\\" else 1
            i += 1
        elif c in (b"{", b"~"):
            m = re.match(rb"~?\{(\d+)\}\r\n", s[i:])
            assert m, s[i : i + 20]
            i += m.end() + int(m.group(1))
        elif c == b"(":
            depth += 1
            i += 1
        elif c == b")":
            if depth == 0:
                return i
            depth -= 1
            i += 1
        elif c == b" ":
            if depth == 0:
                return i
            i += 1
        else:
            i += 1
        if depth == 0 and s[i : i + 1] in (b" ", b")", b""):
            return i
