"""IMAP and POP3 sessions that arrive together are spread over the workers
(net/balance.py), not left to whichever worker woke first."""

from __future__ import annotations

import collections
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Server, need_tool


def _owners(port: int) -> collections.Counter[str]:
    """Established connections to ``port``, by the PID of the process holding them."""
    out = subprocess.run([need_tool("ss"), "-tnpH", "state", "established",
                          f"( sport = :{port} )"], capture_output=True, text=True,
                         check=True).stdout
    return collections.Counter(line.split("pid=")[1].split(",")[0]
                               for line in out.splitlines() if "pid=" in line)


def _wait_for_both_workers(port: int) -> None:
    """``start()`` waits for one worker's SMTP greeting; on a busy machine the
    other may take longer than ``balance.START_WAIT`` to come up, and then it
    rightly gets nothing of the first burst."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(6)]
        for s in socks:
            s.recv(200)
        both = len(_owners(port)) == 2
        for s in socks:
            s.close()
        time.sleep(0.5)          # the workers count the closed sessions out
        if both:
            return
    raise AssertionError("the second worker never accepted")


@pytest.mark.parametrize("service", ["imap", "pop3"])
def test_a_burst_of_sessions_is_shared_by_the_workers(tmp_path: Path, service: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data, {"server.workers": "2"}).start()
    port = server.imap_port if service == "imap" else server.pop3_port
    try:
        _wait_for_both_workers(port)
        for _ in range(3):
            socks = [socket.create_connection(("127.0.0.1", port), timeout=10)
                     for _ in range(20)]
            for s in socks:
                assert s.recv(200)[:4] in (b"* OK", b"+OK ")
            owners = _owners(port)
            assert sum(owners.values()) == 20
            assert len(owners) == 2 and min(owners.values()) >= 6, owners
            for s in socks:
                s.close()
            time.sleep(0.5)      # the workers count the closed sessions out
    finally:
        server.stop()

