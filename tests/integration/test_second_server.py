"""A second ``pillarbox serve`` on a live data directory refuses at once and harms nothing.

Before the data directory had an owner, a second server ran its start-up
clean-up (orphan collection) against the live directory, removing the blobs
the running server had written and was about to commit, even when it then
failed to bind its port.  Now it exits non-zero, naming the directory and
the PID that holds it, and every message the first server acknowledged is
delivered exactly once.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Server, add_account, free_port

ALICE = "alice@example.test"
TOTAL = 300


def _message(i: int) -> bytes:
    # Every fifth message is large: a worker streams it into its own blob
    # file before the commit, which is exactly what a clean-up would remove.
    body = (b"x" * 76 + b"\r\n") * (1100 if i % 5 == 0 else 3)
    return (
        f"From: load@sender.test\r\nTo: {ALICE}\r\nSubject: second server\r\n"
        f"X-Tag: {i}\r\n\r\n"
    ).encode() + body


def _load(port: int, acked: set[int], errors: list[str], started: threading.Event) -> None:
    i = 0
    while i < TOTAL:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                while i < TOTAL:
                    client.sendmail("load@sender.test", [ALICE], _message(i))
                    acked.add(i)
                    i += 1
                    if len(acked) >= 20:
                        started.set()
        except (smtplib.SMTPException, OSError) as exc:
            errors.append(f"{i}: {exc!r}")
            i += 1
            if len(errors) > 10:
                return
        finally:
            started.set()


def _second_server(server, port: int) -> tuple[subprocess.CompletedProcess[str], float]:
    args = [sys.executable, "-m", "pillarbox"]
    for key, value in {**server.options, "smtp.listen": f"127.0.0.1:{port}"}.items():
        args += ["-o", f"{key}={value}"]
    started = time.monotonic()
    done = subprocess.run(
        args + ["serve"], capture_output=True, text=True, timeout=30,
        cwd=server.data_dir.parent,
    )
    return done, time.monotonic() - started


def test_second_server_refuses_and_every_acknowledged_message_arrives_once(server_factory):
    server = server_factory()
    acked: set[int] = set()
    errors: list[str] = []
    started = threading.Event()
    loader = threading.Thread(target=_load, args=(server.port, acked, errors, started))
    loader.start()
    try:
        assert started.wait(30)
        holder = server.proc.pid
        where = str(server.data_dir.resolve())
        lock_before = (server.data_dir / "lock").read_text()
        assert loader.is_alive()   # the second server starts under load
        # Another port (the second server could start), then the port in use.
        for port in (free_port(), server.port):
            done, elapsed = _second_server(server, port)
            assert done.returncode != 0, done.stderr
            assert elapsed < 8, elapsed
            assert where in done.stderr and f"PID {holder}" in done.stderr, done.stderr
            assert "in use by another Pillarbox server" in done.stderr
            assert "cannot listen" not in done.stderr   # refused before binding anything
        assert (server.data_dir / "lock").read_text() == lock_before
    finally:
        loader.join(120)
    assert errors == []
    assert len(acked) == TOTAL
    assert server.wait_delivered(TOTAL, timeout=60) == TOTAL
    tags = []
    for message in server.inbox(ALICE):
        head = message.split(b"\r\n\r\n", 1)[0]
        tags += [int(line[7:]) for line in head.split(b"\r\n") if line.startswith(b"X-Tag: ")]
    assert sorted(tags) == sorted(acked)   # each acknowledged message exactly once
    assert server.proc.poll() is None      # the first server never noticed


def test_the_lock_is_chowned_and_stays_held_after_dropping_privileges(tmp_path):
    """Started as root with server.user: the lock file is handed over like the rest,
    and the unprivileged server still holds it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to drop privileges)")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    # The unprivileged server must reach its data directory: not under
    # pytest's 0700 temporary root.
    top = Path(tempfile.mkdtemp(prefix="pillarbox-drop-"))
    os.chmod(top, 0o755)
    try:
        data_dir = top / "data"
        data_dir.mkdir()
        add_account(data_dir, ALICE)
        server = Server(data_dir, {"server.user": "nobody"}).start()
        try:
            lock = data_dir / "lock"
            assert lock.stat().st_uid == nobody.pw_uid
            assert lock.read_text() == f"{server.proc.pid}\n"
            done, _ = _second_server(server, free_port())
            assert done.returncode != 0 and f"PID {server.proc.pid}" in done.stderr, done.stderr
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                client.sendmail("load@sender.test", [ALICE], _message(1))
            assert server.wait_delivered(1) == 1
        finally:
            server.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)
