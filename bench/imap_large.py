"""A large mailbox over IMAP: 100,000 messages, imported from an mbox, then read.

Builds a fresh data directory, starts ``pillarbox serve`` (development
defaults) on free loopback ports, writes an mbox of ``-n`` small realistic
messages (varied senders, subjects and dates, one in five multipart, some
with ``Status:``/``X-Status:`` flags), imports it with
``pillarbox mailbox import demo@localhost FILE.mbox`` beside the running
server, marks some more flags over IMAP, and times over a raw socket:

- ``SELECT INBOX``, ``UID FETCH 1:* (FLAGS)``, ``UID SEARCH UNSEEN`` and a
  QRESYNC resynchronisation with nothing changed (``ENABLE QRESYNC``, then
  ``SELECT INBOX (QRESYNC (uidvalidity highestmodseq))``, RFC 7162 §3.2.5):
  the issue's bar is under a second each;
- ``FETCH 1:* (ENVELOPE)`` twice: the first parses every message (the
  envelope cache is cold), the second reads the cache;
- the import itself.

Each timing comes with ``…_server_cpu_s``, the CPU time the server's
processes spent meanwhile, which the other loads of a shared machine blur
less than the wall clock.  Prints ``key=value`` lines.  Takes minutes;
never part of the test run.

usage: .venv/bin/python bench/imap_large.py [-n 100000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pbxbench import ROOT, free_port, start_dns, tree
PILLARBOX = str(ROOT / ".venv/bin/pillarbox")

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
         "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent",
         "victor", "walter", "zoë"]
LAST = ["Smith", "Jones", "Müller", "García", "Rossi", "Dubois", "Novak", "Kowalski",
        "Tanaka", "Nguyen", "O'Brien", "Andersson"]
DOMAINS = ["example.org", "example.com", "mail.example.net", "lists.example.edu",
           "corp.example", "xn--bcher-kva.example"]
TOPICS = ["quarterly report", "lunch on Friday?", "build failure on main", "your invoice",
          "meeting notes", "re: holiday plans", "patch v3: fix the parser",
          "security advisory", "weekly newsletter", "photos from the trip",
          "Überweisung bestätigt", "password reset", "conference schedule",
          "[list] release 2.4 is out", "question about the API"]
WORDS = ("the quick brown fox jumps over a lazy dog while mail servers keep "
         "every message safe and sound across restarts and power cuts").split()




def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the server's processes so far: what a command
    costs, less blurred than the wall clock by the other loads of a shared machine."""
    ticks = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])   # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")




# ------------------------------------------------------------------- the mbox


def _encoded(text: str) -> str:
    """RFC 2047 encoded-word for non-ASCII header text."""
    if text.isascii():
        return text
    import base64
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def message(rng: random.Random, i: int, when: datetime) -> bytes:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    domain = rng.choice(DOMAINS)
    sender = f"{first.encode('ascii', 'ignore').decode() or 'z'}.{i % 97}@{domain}"
    name = _encoded(f"{first.title()} {last}")
    subject = _encoded(f"{rng.choice(TOPICS)} #{i}")
    body = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
                     for _ in range(rng.randint(3, 20)))
    head = [
        f"From: {name} <{sender}>",
        "To: Demo <demo@localhost>",
        *([f"Cc: {rng.choice(FIRST)}@{rng.choice(DOMAINS)}"] if i % 7 == 0 else []),
        f"Subject: {subject}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{i}.{rng.getrandbits(40):x}@{domain}>",
        *([f"In-Reply-To: <{i - 1}.0@{domain}>"] if i % 5 == 1 else []),
        "MIME-Version: 1.0",
    ]
    if i % 5 == 0:
        boundary = f"=_b{i}"
        head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        text = (f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{body}\n"
                f"--{boundary}\nContent-Type: text/html; charset=utf-8\n\n"
                f"<p>{body.replace(chr(10), '</p><p>')}</p>\n--{boundary}--\n")
    else:
        head.append("Content-Type: text/plain; charset=utf-8")
        text = body + "\n"
    # Mailbox state, as mutt and Dovecot write it: most mail read, some
    # answered or flagged.
    state = []
    if rng.random() < 0.7:
        state.append("Status: RO")
    x = ("A" if rng.random() < 0.1 else "") + ("F" if rng.random() < 0.05 else "")
    if x:
        state.append(f"X-Status: {x}")
    asctime = when.astimezone(timezone.utc).strftime("%a %b %d %H:%M:%S %Y")
    return (f"From {sender} {asctime}\n" + "\n".join(head + state) + "\n\n" + text
            + "\n").encode()


def write_mbox(path: Path, n: int) -> int:
    rng = random.Random(1234)
    start = datetime(2019, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with path.open("wb") as f:
        for i in range(1, n + 1):
            when = start + timedelta(seconds=i * 1700 + rng.randint(0, 1500))
            f.write(message(rng, i, when))
    return path.stat().st_size


# ---------------------------------------------------------------- IMAP client


_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class IMAP:
    """The least client that reads every response, literals included."""

    def __init__(self, port: int, server_pid: int = 0) -> None:
        self.server_pid = server_pid
        self.cpu = 0.0          # the server's CPU seconds for the last command
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb", buffering=1 << 16)
        self.n = 0
        self.readline()   # greeting

    def readline(self) -> bytes:
        """One response line, with its literals inlined."""
        line = self.file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        while line.endswith(b"}\r\n") and (m := _LITERAL.search(line)) is not None:
            line += self.file.read(int(m.group(1))) + self.file.readline()
        return line

    def command(self, text: str) -> tuple[float, list[bytes]]:
        """Send one command; return the seconds to its tagged answer and the untagged lines."""
        self.n += 1
        tag = f"t{self.n}".encode()
        cpu = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        start = time.perf_counter()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.readline()
            if line.startswith(tag + b" "):
                elapsed = time.perf_counter() - start
                if self.server_pid:
                    self.cpu = cpu_seconds(self.server_pid) - cpu
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text!r}: {line.decode(errors='replace').strip()}")
                return elapsed, lines
            lines.append(line)

    def close(self) -> None:
        self.sock.close()


def code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no [{name.decode()}] in the SELECT responses")


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-envelope", action="store_true",
                        help="skip the (slow) FETCH 1:* (ENVELOPE) timings")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbx-large-"))
    data = work / "data"
    smtp_port, imap_port = free_port(), free_port()
    opts = ["-o", f"server.data_dir={data}"]
    _, dns_port = start_dns(work)
    cmd = [PILLARBOX, *opts, "-o", f"dns.nameservers=127.0.0.1:{dns_port}", "-o", f"smtp.listen=127.0.0.1:{smtp_port}",
           "-o", f"imap.listen=127.0.0.1:{imap_port}", "-o", "imap.listen_tls=[]",
           "-o", "pop3.listen=[]", "-o", "pop3.listen_tls=[]", "-o", "submission.listen=[]",
           "-o", "submission.listen_tls=[]",
           "-o", f"server.workers={args.workers}", "-o", f"log.file={work}/log", "serve"]
    out = sys.stdout

    def emit(key: str, value: object) -> None:
        print(f"{key}={value}", file=out, flush=True)

    emit("messages", args.n)
    t = time.perf_counter()
    mbox = work / "inbox.mbox"
    emit("mbox_bytes", write_mbox(mbox, args.n))
    emit("mbox_write_s", f"{time.perf_counter() - t:.1f}")
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", imap_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        password = (data / "demo-password").read_text().strip()

        t = time.perf_counter()
        result = subprocess.run([PILLARBOX, *opts, "mailbox", "import", "demo@localhost",
                                 str(mbox)], cwd=work, capture_output=True, text=True)
        emit("import_s", f"{time.perf_counter() - t:.1f}")
        if result.returncode != 0:
            print(result.stdout, result.stderr, file=sys.stderr)
            return 1
        emit("import_summary", result.stdout.strip().splitlines()[-1].replace(" ", "_"))

        imap = IMAP(imap_port, proc.pid)
        imap.command(f'LOGIN "demo@localhost" "{password}"')
        # More flags, the way a client sets them: a range read, a few flagged.
        imap.command("SELECT INBOX")
        secs, _ = imap.command(f"UID STORE 1:{args.n // 10} +FLAGS.SILENT (\\Seen)")
        emit("store_seen_10pct_s", f"{secs:.3f}")
        secs, _ = imap.command(
            "UID STORE " + ",".join(str(u) for u in range(7, args.n, 997))
            + " +FLAGS.SILENT (\\Flagged $Important)")
        emit("store_flagged_sparse_s", f"{secs:.3f}")
        imap.command("CLOSE")

        secs, lines = imap.command("SELECT INBOX")
        emit("select_server_cpu_s", f"{imap.cpu:.2f}")
        emit("select_s", f"{secs:.3f}")
        uidvalidity = code(lines, b"UIDVALIDITY")
        secs, lines = imap.command("UID FETCH 1:* (FLAGS)")
        emit("uid_fetch_flags_server_cpu_s", f"{imap.cpu:.2f}")
        emit("uid_fetch_flags_s", f"{secs:.3f}")
        emit("uid_fetch_flags_lines", len(lines))
        secs, lines = imap.command("UID SEARCH UNSEEN")
        emit("uid_search_unseen_server_cpu_s", f"{imap.cpu:.2f}")
        emit("uid_search_unseen_s", f"{secs:.3f}")
        found = sum(len(line.split()) - 2 for line in lines if line.startswith(b"* SEARCH"))
        emit("uid_search_unseen_found", found)
        imap.close()

        imap = IMAP(imap_port, proc.pid)
        imap.command(f'LOGIN "demo@localhost" "{password}"')
        imap.command("ENABLE QRESYNC")
        _, lines = imap.command("EXAMINE INBOX")
        highestmodseq = code(lines, b"HIGHESTMODSEQ")
        imap.command("CLOSE")
        secs, lines = imap.command(f"SELECT INBOX (QRESYNC ({uidvalidity} {highestmodseq}))")
        emit("qresync_select_server_cpu_s", f"{imap.cpu:.2f}")
        emit("qresync_select_s", f"{secs:.3f}")
        emit("qresync_select_lines", len(lines))
        if args.no_envelope:
            imap.command("LOGOUT")
            imap.close()
            return 0
        secs, lines = imap.command("FETCH 1:* (ENVELOPE)")
        emit("fetch_envelope_cold_server_cpu_s", f"{imap.cpu:.2f}")
        emit("fetch_envelope_cold_s", f"{secs:.2f}")
        emit("fetch_envelope_lines", len(lines))
        # Right after: the first FETCH's parses may still be on their way to the disk
        # (they are written by the group commit, and nobody waits for them).
        secs, lines = imap.command("FETCH 1:* (ENVELOPE)")
        emit("fetch_envelope_warm_server_cpu_s", f"{imap.cpu:.2f}")
        emit("fetch_envelope_warm_s", f"{secs:.2f}")
        time.sleep(10)
        secs, lines = imap.command("FETCH 1:* (ENVELOPE)")
        emit("fetch_envelope_warm_after_10s_server_cpu_s", f"{imap.cpu:.2f}")
        emit("fetch_envelope_warm_after_10s_s", f"{secs:.2f}")
        imap.command("LOGOUT")
        imap.close()
        emit("data_dir_bytes", sum(p.stat().st_size for p in data.rglob("*") if p.is_file()))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        if args.keep:
            emit("data_dir", data)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
