"""Hostile and broken clients over real sockets: a client that pipelines
commands and never reads the replies costs the worker bounded memory (the
server stops taking commands, and so reading, until it reads: back-pressure,
DESIGN.md layer 2), and other sessions are answered meanwhile."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, add_account
from tests.integration.imap_client import assert_clean_log


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    data.mkdir()
    add_account(data, "alice@example.test")
    server = Server(data).start()
    yield server
    server.stop()
    assert_clean_log(server)


def _rss_kb(server: Server) -> int:
    """The summed VmRSS of the server's processes (the supervisor's children)."""
    assert server.proc is not None
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != server.proc.pid:
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError):
            continue
    return total


def _greeted(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(100)[:1] in (b"2", b"*", b"+")


# (listener, command repeated): each reply is many times its command, so
# replies that pile up show at once in the worker's memory.
FLOODS = [
    ("port", b"EHLO flood.test\r\n"),         # SMTP: 250- and every extension
    ("imap_port", b"a CAPABILITY\r\n"),       # IMAP: * CAPABILITY ... and the OK
    ("pop3_port", b"CAPA\r\n"),               # POP3: the capability list
]


@pytest.mark.parametrize(("listener", "command"), FLOODS, ids=["smtp", "imap", "pop3"])
def test_a_client_that_never_reads_its_replies_costs_bounded_memory(
    srv: Server, listener: str, command: bytes
) -> None:
    port = getattr(srv, listener)
    before = _rss_kb(srv)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    chunk = command * (65536 // len(command))
    sent, stalled, deadline = 0, None, time.monotonic() + 20
    # Send 40 MB of commands (replies of hundreds of MB), or until the server
    # has stopped reading for 2 s.
    while sent < 40_000_000 and time.monotonic() < deadline:
        try:
            sent += s.send(chunk)
            stalled = None
        except BlockingIOError:
            stalled = stalled or time.monotonic()
            if time.monotonic() - stalled > 2:
                break
            time.sleep(0.01)
    try:
        assert _greeted(srv.port) and _greeted(srv.imap_port), "other sessions wait"
        time.sleep(1)
        grown = _rss_kb(srv) - before
        assert grown < 30_000, f"{grown} KiB more after {sent} octets of {command!r}"
    finally:
        s.close()
