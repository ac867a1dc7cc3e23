"""A 100 MB message is streamed: the server's memory grows by less than 20 MB."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

ALICE = "alice@example.test"
SIZE = 100 * 1024 * 1024


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _send(port: int, chunks, total: int) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    f = s.makefile("rb")

    def reply() -> bytes:
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return line

    reply()
    for cmd in (b"EHLO big.test", b"MAIL FROM:<bob@sender.test> SIZE=%d" % total,
                b"RCPT TO:<%s>" % ALICE.encode(), b"DATA"):
        s.sendall(cmd + b"\r\n")
        reply()
    for chunk in chunks:
        s.sendall(chunk)
    s.sendall(b".\r\n")
    last = reply()
    s.close()
    return last


@pytest.mark.slow
def test_100_mb_message_streams_through_bounded_memory(server_factory):
    server = server_factory({"smtp.max_message_size": "200M"})
    assert server.proc is not None
    # Warm up: one small message through every process.
    _send(server.port, [b"Subject: warm\r\n\r\nwarm\r\n"], 30)
    assert server.wait_delivered(1) == 1
    pids = [server.proc.pid] + _children(server.proc.pid)
    before = {pid: _status_kb(pid, "VmRSS") for pid in pids}

    # Sample every process's RSS while the message streams in and is delivered.
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in pids:
                peak[pid] = max(peak[pid], _status_kb(pid, "VmRSS"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        line = b"x" * 998 + b"\r\n"
        block = b"Subject: big\r\n\r\n" + line * 1000
        n = SIZE // len(line * 1000) + 1
        reply = _send(
            server.port, (block if i == 0 else line * 1000 for i in range(n)), n * 1_000_000
        )
        assert reply.startswith(b"250 2.0.0"), reply
        assert server.wait_delivered(2, timeout=120) == 2
    finally:
        done.set()
        sampler.join()
    growth = {pid: peak[pid] - before[pid] for pid in pids}
    worst = max(growth.values())
    print(f"RSS growth per process (KiB): {growth}")
    assert worst < 20 * 1024, growth
    size = server.query("SELECT max(size) FROM messages")[0][0]
    assert size > SIZE
