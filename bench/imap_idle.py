"""Many IMAP sessions in IDLE: the server's memory, and how fast a delivery reaches them.

Starts ``pillarbox serve`` (development defaults, one worker per CPU) with a
fresh data directory on free loopback ports, opens ``-n`` IMAP connections
(LOGIN, SELECT INBOX, IDLE) from this process, then

- sums the proportional set size (PSS, ``/proc/PID/smaps_rollup``) of every
  Pillarbox process: the memory the sessions really cost, shared pages
  counted once;
- sends one message over SMTP to the account, and measures for every
  session the time until its ``* n EXISTS`` arrives.

Prints ``key=value`` lines.  The issue's bar: 10,000 sessions in less than
200 MiB, every one notified within a second.

usage: .venv/bin/python bench/imap_idle.py [-n 10000] [--accounts 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pbxbench import add_user, start_pillarbox, tree




def _role(pid: int) -> str:
    """The role of a Pillarbox process, from its pid file in the data directory."""
    for f in (Path(f"/proc/{pid}/cwd").resolve() / "data" / "run").glob("*.pid"):
        try:
            if int(f.read_text().split()[0]) == pid:
                return f.stem
        except (OSError, ValueError, IndexError):
            continue
    return "supervisor"


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0




class Session:
    __slots__ = ("reader", "writer", "notified")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.notified = 0.0


async def _expect(reader: asyncio.StreamReader, tag: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line.startswith(tag):
            if not line.startswith(tag + b" OK") and tag != b"+":
                raise RuntimeError(line.decode(errors="replace"))
            return


async def open_session(port: int, user: str, password: str) -> Session:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    await reader.readline()
    writer.write(f'a LOGIN "{user}" "{password}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    await _expect(reader, b"a")
    await _expect(reader, b"b")
    await _expect(reader, b"+")
    return Session(reader, writer)


async def wait_exists(session: Session, start: list[float]) -> None:
    seen = b""
    while True:
        data = await session.reader.read(4096)
        if not data:
            return
        seen = seen[-16:] + data
        if b" EXISTS\r\n" in seen:
            session.notified = time.monotonic() - start[0]
            return


async def main_async(args: argparse.Namespace, imap_port: int, smtp_port: int,
                     password: str, server_pid: int) -> None:
    sessions: list[Session] = []
    t0 = time.monotonic()
    batch = 100
    users = [f"idle{i}@localhost" for i in range(args.accounts)] if args.accounts > 1 else [
        "demo@localhost"]
    for start in range(0, args.n, batch):
        group = [open_session(imap_port, users[i % len(users)], password)
                 for i in range(start, min(args.n, start + batch))]
        sessions += await asyncio.gather(*group)
    opened = time.monotonic() - t0
    await asyncio.sleep(2)
    pids = tree(server_pid)
    pss = sum(pss_kib(p) for p in pids)
    print(f"sessions={len(sessions)}")
    print(f"open_seconds={opened:.1f}")
    print(f"processes={len(pids)}")
    print(f"pss_total_kib={pss}")
    print(f"pss_total_mib={pss / 1024:.1f}")
    print(f"pss_per_session_kib={(pss / max(1, len(sessions))):.2f}")
    for p in pids:
        print(f"pss_kib_pid{p}={pss_kib(p)}  # {_role(p)}")
    start = [0.0]
    waiters = [asyncio.ensure_future(wait_exists(s, start)) for s in sessions]
    await asyncio.sleep(0.5)
    start[0] = time.monotonic()
    rcpts = users
    await asyncio.get_running_loop().run_in_executor(None, send, smtp_port, rcpts)
    done, pending = await asyncio.wait(waiters, timeout=10)
    delays = sorted(s.notified for s in sessions if s.notified)
    print(f"notified={len(delays)}")
    print(f"notified_within_1s={sum(1 for d in delays if d <= 1.0)}")
    if delays:
        print(f"notify_median_s={statistics.median(delays):.3f}")
        print(f"notify_p99_s={delays[int(len(delays) * 0.99) - 1]:.3f}")
        print(f"notify_max_s={delays[-1]:.3f}")
    for w in pending:
        w.cancel()
    for s in sessions:
        s.writer.close()


def send(port: int, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("bench@example.org", rcpts,
                      b"From: bench@example.org\r\nSubject: wake up\r\n\r\nhello\r\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * args.n + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    work = Path(tempfile.mkdtemp(prefix="pbx-idle-"))
    n = str(args.n + 100)
    proc, smtp_port, imap_port = start_pillarbox(
        work, f"imap.max_connections={n}", f"imap.max_connections_per_ip={n}",
        f"imap.max_connections_per_account={n}", f"server.workers={args.workers}")
    try:
        password = (work / "data" / "demo-password").read_text().strip()
        if args.accounts > 1:
            for i in range(args.accounts):
                add_user(work, f"idle{i}@localhost", password)
        asyncio.run(main_async(args, imap_port, smtp_port, password, proc.pid))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
