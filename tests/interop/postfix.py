"""A private Postfix instance for interop tests, run by the test itself.

Postfix lets one machine run many instances: an instance is its
``config_directory``, and everything it owns at run time (``master.pid`` and
``master.lock``, the queue, the public and private sockets) lives under the
``queue_directory`` and ``data_directory`` named there.  So an instance with
its own three directories, its own log file (``maillog_file``, written by
postlogd) and no ``inet`` service in its ``master.cf`` never meets the
system's instance, if there is one: it shares only the binaries.

The instance here is a *relay client* (a null client in Postfix's words,
see its STANDARD_CONFIGURATION_README): mail is injected with ``sendmail
-C`` (postdrop into the maildrop queue, then pickup, cleanup, qmgr) and
every message, local domain or not, leaves through Postfix's ``smtp(8)``
client to ``relayhost``.  Nothing is delivered locally.

The master runs as root, as Postfix requires; its daemons drop to the
``postfix`` user.  Stopping is ``postfix stop``, and when that is not enough,
SIGKILL by process id: the master, its children, and any process whose
working directory is this instance's queue (every Postfix daemon works in
it), never a search by program name.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# The services a relay client needs.  No chroot (it would need copies of
# /etc files), no smtpd, no local(8).  Columns: service, type, private,
# unprivileged, chroot, wakeup, process limit, command.
_MASTER_CF = [
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
]

# "<date> <host> <syslog_name>/<daemon>[<pid>]: <text>"
_LOG_LINE = re.compile(
    r"^\S.*? (?P<program>[\w.-]+)/(?P<daemon>[\w.-]+)\[(?P<pid>\d+)\]: (?P<text>.*)$"
)
_DELIVERY = re.compile(
    r"^(?P<queue_id>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>,(?: orig_to=<[^>]*>,)? relay=(?P<relay>\S+),"
    r".* dsn=(?P<dsn>[\d.]+), status=(?P<status>\w+) \((?P<reply>.*)\)$"
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery attempt as Postfix's smtp(8) or error(8) logged it."""

    queue_id: str
    to: str
    relay: str
    dsn: str
    status: str      # sent / deferred / bounced
    reply: str       # the text in parentheses: the server's reply and where it came


class PostfixError(RuntimeError):
    pass


class PrivatePostfix:
    """A Postfix instance in ``root`` (``etc/``, ``spool/``, ``data/``, ``postfix.log``)."""

    def __init__(self, root: Path, settings: Mapping[str, str], *, postfix: str = "postfix",
                 sendmail: str = "sendmail") -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "data"
        self.log_path = root / "postfix.log"
        self.postfix = postfix
        self.sendmail_path = sendmail
        self.settings = dict(settings)
        self.master_pid: int | None = None

    # ------------------------------------------------------------ set-up

    def write_config(self) -> None:
        """Create the directories and write main.cf and master.cf."""
        postfix_user = pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")  # KeyError early if the package is half installed
        os.chmod(self.root, 0o755)  # the daemons run as 'postfix' and open files in here
        for directory in (self.config_dir, self.queue_dir, self.data_dir):
            directory.mkdir(exist_ok=True)
        # Postfix insists that the config and queue directories belong to
        # root, and the data directory to the mail owner.
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        # While the master is down, Postfix commands append to the log file
        # directly, with the mail owner's privileges.
        self.log_path.touch()
        os.chown(self.log_path, postfix_user.pw_uid, postfix_user.pw_gid)
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "inet_protocols": "ipv4",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            **self.settings,
        }
        text = "# Private Postfix instance of a Pillarbox interop test.\n"
        text += "".join(f"{name} = {value}\n" for name, value in main.items())
        (self.config_dir / "main.cf").write_text(text, encoding="utf-8")
        rows = "".join(
            f"{s:<10} {t:<10} {p:<3} {u:<3} {c:<3} {w:<6} {m:<3} {cmd}\n"
            for s, t, p, u, c, w, m, cmd in _MASTER_CF
        )
        (self.config_dir / "master.cf").write_text(rows, encoding="utf-8")

    def start(self, timeout: float = 20.0) -> PrivatePostfix:
        self.write_config()
        done = subprocess.run(
            [self.postfix, "-c", str(self.config_dir), "start"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if done.returncode != 0:
            raise PostfixError(f"postfix start failed ({done.returncode}):\n{done.stdout}"
                               f"{done.stderr}\n{self.log()}")
        deadline = time.monotonic() + timeout
        pid_file = self.queue_dir / "pid" / "master.pid"
        pickup = self.queue_dir / "public" / "pickup"
        while time.monotonic() < deadline:
            try:
                self.master_pid = int(pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                pass
            if self.master_pid is not None and pickup.exists():
                return self
            time.sleep(0.05)
        raise PostfixError(f"private Postfix did not come up in {timeout}s:\n{self.log()}")

    # ---------------------------------------------------------------- use

    def sendmail(self, message: bytes, sender: str, recipients: Iterable[str],
                 options: Iterable[str] = ()) -> None:
        """Submit like a local program: ``sendmail -C <config> -i -f sender [options] rcpt...``.

        ``-i``: a line with a single dot is text, not the end of the message.
        """
        args = [self.sendmail_path, "-C", str(self.config_dir), "-i", "-f", sender,
                *options, "--", *recipients]
        done = subprocess.run(args, input=message, capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            raise PostfixError(f"{args} exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self, daemon: str | None = None) -> list[tuple[str, str]]:
        """(daemon, text) of every log line, optionally of one daemon only (``smtp``)."""
        return [(d, text) for d, _, text in self._parsed() if daemon is None or d == daemon]

    def pid_lines(self, daemon: str) -> list[tuple[str, str]]:
        """(process id, text) of the log lines of one daemon."""
        return [(pid, text) for d, pid, text in self._parsed() if d == daemon]

    def _parsed(self) -> list[tuple[str, str, str]]:
        out = []
        for line in self.log().splitlines():
            m = _LOG_LINE.match(line)
            if m:
                out.append((m["daemon"], m["pid"], m["text"]))
        return out

    def deliveries(self) -> list[Delivery]:
        out = []
        for daemon, text in self.lines():
            m = _DELIVERY.match(text)
            if m and daemon in ("smtp", "relay", "error"):
                out.append(Delivery(m["queue_id"], m["to"], m["relay"], m["dsn"], m["status"],
                                    m["reply"]))
        return out

    def queue_id(self, message_id: str) -> str | None:
        """The queue id cleanup(8) gave the message with this Message-ID."""
        pattern = re.compile(r"^([0-9A-Za-z]+): message-id=<" + re.escape(message_id) + ">$")
        for _, text in self.lines("cleanup"):
            m = pattern.match(text)
            if m:
                return m[1]
        return None

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix: {what} not seen in {timeout}s; its log:\n"
                                     f"{self.log()}")
            time.sleep(0.1)

    # --------------------------------------------------------------- stop

    def stop(self, timeout: float = 10.0) -> None:
        """``postfix stop``; then SIGKILL, by pid, whatever of this instance is left."""
        try:
            subprocess.run([self.postfix, "-c", str(self.config_dir), "stop"],
                           capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + timeout
        while self._leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = self._leftovers()
        if self.master_pid in leftovers:
            # Freeze the master first, so that it forks no replacement for
            # the children killed next.
            _signal(self.master_pid, signal.SIGSTOP)
            leftovers = self._leftovers()
        for pid in leftovers:
            _signal(pid, signal.SIGKILL)

    def _leftovers(self) -> list[int]:
        """Live processes of this instance: the master, its children, and any
        process working in this instance's queue directory."""
        queue = str(self.queue_dir)
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            state, ppid = _stat(pid)
            if state is None or state in "ZX":
                continue  # gone, or a zombie: where nobody reaps orphans they linger
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = ""
            if pid == self.master_pid or ppid == self.master_pid or cwd == queue \
                    or cwd.startswith(queue + "/"):
                found.append(pid)
        return found

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _stat(pid: int) -> tuple[str | None, int]:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            rest = f.read().rpartition(")")[2].split()
    except OSError:
        return None, 0
    return rest[0], int(rest[1])


def _signal(pid: int | None, sig: signal.Signals) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
