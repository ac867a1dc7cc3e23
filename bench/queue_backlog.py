"""Intake beside a huge deferred queue: does a million waiting entries slow new mail?

Issue 7 asks that the queue scale like Postfix's: the queue manager holds only
a bounded window of active work, so a deferred queue of a million entries
neither exhausts memory nor slows the intake of new mail.  This makes such a
queue once (``-n`` entries, each for one of 50 remote domains, deferred after
one attempt, the next try spread over the hour after ``--due-in`` seconds),
then measures, interleaved run by run, ``smtp-source`` sending the inbound
bench's load (5,000 messages of 2 KB, 20 sessions, one connection per message,
to the development account) to a server on an empty data directory and to one
on a copy of the seeded one.  It reports accepted and delivered messages per
second, the ratio, and each process's peak RSS.

``--due-in 0`` lets part of the backlog fall due during the run: the retries
then fail at their first DNS answer (the bench's dnsmasq refuses the backlog's
domains), so they cost CPU as fast as they are made and share the machine
with intake; the default keeps them all in the future, which measures the
size of the queue alone.

    .venv/bin/python bench/queue_backlog.py [-n 1000000] [-m 5000] [-r 2] [--due-in 7200]

Needs smtp-source (Debian's postfix package) and sqlite3.  Loopback only.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pbxbench import start_pillarbox, tree


BODY = b"Subject: waiting\r\nFrom: <alice@example.test>\r\n\r\nThe body.\r\n"
DOMAINS = 50
LOAD = ["-s", "20", "-l", "2048", "-f", "loadgen@loadgen.test", "-t", "demo@localhost",
        "-M", "loadgen.test"]


def seed(data: Path, entries: int, due_in: float) -> float:
    """``entries`` deferred queue entries in a new store at ``data``; seconds taken."""
    from pillarbox.store.blobs import new_id
    from pillarbox.store.sqlite.store import SQLiteStore

    store = SQLiteStore(data).open()
    now = time.time()
    segment = new_id()          # every entry's blob is the same small message
    store.blobs.path(segment).write_bytes(BODY)
    started = time.monotonic()
    step = 100_000
    for first in range(0, entries, step):
        ids = [f"{i:013X}00000" for i in range(first + 1, min(entries, first + step) + 1)]
        with store.transaction() as conn:
            conn.executemany(
                "INSERT INTO blobs (id, size, refs, segment, offset) VALUES (?, ?, 1, ?, 0)",
                [(i, len(BODY), segment) for i in ids])
            conn.executemany(
                "INSERT INTO queue (id, reverse_path, size, arrived, client_address, helo,"
                " state, attempts, next_attempt, last_reply)"
                " VALUES (?, 'alice@example.test', ?, ?, '192.0.2.1', 'c.test', 'deferred', 1, ?,"
                " '451 4.4.3 no answer from the DNS')",
                [(i, len(BODY), now - 600, now + due_in + random.random() * 3600) for i in ids])
            conn.executemany(
                "INSERT INTO recipients (queue_id, idx, address, status) VALUES (?, 0, ?, 'pending')",
                [(i, f"user{k % 1000}@backlog{k % DOMAINS}.test")
                 for k, i in enumerate(ids, start=first)])
    store.close()
    return time.monotonic() - started


def delivered(data: Path) -> int:
    with sqlite3.connect(f"file:{data}/pillarbox.db?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]


def peak_rss(data: Path, pids: list[int]) -> dict[str, int]:
    """VmHWM in KiB by role (the pid files of ``data/run``; the supervisor else)."""
    roles = {}
    for f in (data / "run").glob("*.pid"):
        try:
            roles[int(f.read_text().split()[0])] = f.stem
        except (OSError, ValueError, IndexError):
            continue
    out = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[roles.get(pid, "supervisor")] = int(line.split()[1])
        except OSError:
            continue
    return out


def measure(work: Path, template: Path | None, messages: int) -> tuple[float, float, dict[str, int]]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    if template is not None:
        shutil.copytree(template, work / "data")
    proc, smtp, _ = start_pillarbox(work)
    try:
        target = f"127.0.0.1:{smtp}"
        subprocess.run(["smtp-source", *LOAD, "-m", "200", target], check=True)   # warm-up
        base = delivered(work / "data")
        started = time.monotonic()
        subprocess.run(["smtp-source", *LOAD, "-m", str(messages), target], check=True)
        accepted = time.monotonic() - started
        deadline = started + 600
        while delivered(work / "data") < base + messages:
            if time.monotonic() > deadline:
                raise SystemExit("not every message was delivered within 600 s")
            time.sleep(0.05)
        done = time.monotonic() - started
        rss = peak_rss(work / "data", tree(proc.pid))
    finally:
        subprocess.run(["pkill", "-TERM", "-g", str(proc.pid)], check=False)
        proc.wait(30)
        pid_file = work / "dnsmasq.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
    return messages / accepted, messages / done, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="deferred entries (default 1,000,000)")
    parser.add_argument("-m", type=int, default=5000, help="messages per measurement (default 5000)")
    parser.add_argument("-r", type=int, default=2, help="runs of each (default 2)")
    parser.add_argument("--due-in", type=float, default=7200.0,
                        help="seconds until the first entry falls due (default 7200)")
    args = parser.parse_args()
    for tool in ("smtp-source", "sqlite3"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (Debian: postfix, sqlite3)")
    root = Path(tempfile.mkdtemp(prefix="pbx-backlog."))
    try:
        template = root / "template"
        print(f"seed_entries={args.n}")
        print(f"seed_seconds={seed(template, args.n, args.due_in):.1f}")
        rates: dict[str, list[tuple[float, float]]] = {"empty": [], "backlog": []}
        for run in range(1, args.r + 1):
            for label, source in (("empty", None), ("backlog", template)):
                accept, deliver, rss = measure(root / label, source, args.m)
                rates[label].append((accept, deliver))
                print(f"# run {run} {label}: accept {accept:.1f} msg/s, delivered {deliver:.1f} msg/s")
                for role, kib in sorted(rss.items()):
                    print(f"{label}_run{run}_peak_rss_kib_{role.replace('-', '_')}={kib}")
        for label, pairs in rates.items():
            print(f"{label}_accept_msgs_per_s={statistics.median(a for a, _ in pairs):.1f}")
            print(f"{label}_delivered_msgs_per_s={statistics.median(d for _, d in pairs):.1f}")
        ratio = [b[1] / e[1] for e, b in zip(rates["empty"], rates["backlog"])]
        print(f"backlog_vs_empty_delivered={statistics.median(ratio):.3f}")
        print(f"backlog_vs_empty_delivered_runs={','.join(f'{r:.3f}' for r in ratio)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
