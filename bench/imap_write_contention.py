"""IMAP writes beside SMTP intake: how much each costs the other.

Deliveries (the queue manager) and IMAP writes (each worker's own group
commit) share SQLite's one write lock.  This measures, on one fresh server
(development defaults, one worker per CPU):

- SMTP alone: Postfix's smtp-source sends ``-n`` messages of 2 KB over 20
  sessions; accepted messages per second;
- the same SMTP load while ``--clients`` IMAP sessions STORE flags in a loop
  as fast as the server answers; the SMTP rate, and the IMAP STOREs per
  second with their median and 99th-percentile latency;
- IMAP alone, the same STORE loop without SMTP.

Runs are interleaved ``-r`` times.  Prints ``key=value`` lines; the ratio
``smtp_rate_with_imap / smtp_rate_alone`` is what the design choice rests on
(docs/architecture.md, "Why IMAP writes are not routed to one writer").

usage: .venv/bin/python bench/imap_write_contention.py [-n 3000] [--clients 10] [-r 3]
"""

from __future__ import annotations

import argparse
import imaplib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pbxbench import start_pillarbox

SMTP_SOURCE = "/usr/sbin/smtp-source"




def smtp_load(port: int, count: int) -> float:
    start = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-s", "20", "-m", str(count), "-l", "2048",
                    "-f", "bench@example.org", "-t", "demo@localhost", f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return count / (time.monotonic() - start)


def imap_loop(port: int, password: str, stop: threading.Event, latencies: list[float],
              index: int) -> None:
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login("demo@localhost", password)
    imap.select("INBOX")
    flag = f"$bench{index}"
    on = True
    while not stop.is_set():
        start = time.monotonic()
        typ, _ = imap.store("1:20", "+FLAGS.SILENT" if on else "-FLAGS.SILENT", f"({flag})")
        if typ == "OK":
            latencies.append(time.monotonic() - start)
        on = not on
    imap.logout()


def imap_phase(port: int, password: str, clients: int, seconds: float | None,
               until: threading.Event | None = None) -> tuple[list[float], float]:
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=imap_loop, args=(port, password, stop, latencies[i], i))
               for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    if until is not None:
        until.wait()
    else:
        time.sleep(seconds or 10)
    stop.set()
    for t in threads:
        t.join()
    return [x for lat in latencies for x in lat], time.monotonic() - start


def report(prefix: str, latencies: list[float], elapsed: float) -> None:
    latencies.sort()
    print(f"{prefix}_stores_per_s={len(latencies) / elapsed:.0f}")
    if latencies:
        print(f"{prefix}_store_median_ms={statistics.median(latencies) * 1000:.1f}")
        print(f"{prefix}_store_p99_ms={latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("-r", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbx-contention-"))
    proc, smtp_port, imap_port = start_pillarbox(work)
    try:
        password = (work / "data" / "demo-password").read_text().strip()
        smtp_load(smtp_port, 100)     # messages to STORE on, and a warm start
        time.sleep(2)
        alone, mixed = [], []
        for run in range(args.r):
            rate = smtp_load(smtp_port, args.n)
            alone.append(rate)
            print(f"run{run}_smtp_alone_msgs_per_s={rate:.0f}")
            done = threading.Event()
            result: dict[str, float] = {}

            def smtp_then_stop() -> None:
                result["rate"] = smtp_load(smtp_port, args.n)
                done.set()

            t = threading.Thread(target=smtp_then_stop)
            t.start()
            latencies, elapsed = imap_phase(imap_port, password, args.clients, None, done)
            t.join()
            mixed.append(result["rate"])
            print(f"run{run}_smtp_with_imap_msgs_per_s={result['rate']:.0f}")
            report(f"run{run}_imap_with_smtp", latencies, elapsed)
            latencies, elapsed = imap_phase(imap_port, password, args.clients, 10)
            report(f"run{run}_imap_alone", latencies, elapsed)
        print(f"smtp_alone_median={statistics.median(alone):.0f}")
        print(f"smtp_with_imap_median={statistics.median(mixed):.0f}")
        print(f"smtp_ratio={statistics.median(mixed) / statistics.median(alone):.2f}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
