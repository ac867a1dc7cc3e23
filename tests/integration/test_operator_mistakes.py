"""What an operator gets wrong, run for real: ``pillarbox serve`` in a
temporary folder on loopback ports.

The rule: a mistake gets a clear one-line error naming the file, directory
or key and what is wrong; never a traceback, a hang, a crash loop, or a
server left half running.  (Mistakes in the configuration file itself are
covered by ``tests/unit/test_config.py``; the CLI's by ``tests/unit/test_cli.py``.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Server, free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _serve(tmp_path: Path, *options: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``pillarbox serve`` expected to refuse at once; its exit status and output."""
    args = [sys.executable, "-m", "pillarbox",
            "-o", "server.hostname=mx.test", "-o", "server.workers=1",
            "-o", f"smtp.listen=127.0.0.1:{free_port()}",
            *[f"-o{key}=" for key in ("imap.listen", "imap.listen_tls", "pop3.listen",
                                       "pop3.listen_tls", "submission.listen",
                                       "submission.listen_tls")],
            "-o", "delivery.processes=-1",
            *(arg for option in options for arg in ("-o", option)), "serve"]
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path,
                          timeout=timeout, start_new_session=True)


def test_stopping_while_a_crashed_child_is_restarted_stops_every_child(tmp_path: Path) -> None:
    """SIGTERM in the pause before a young child is restarted: the supervisor
    used to die with a traceback there, leaving the queue manager running,
    holding the data directory's lock, so no server could start on it."""
    server = Server(tmp_path / "data").start()
    try:
        queue_pid = int((server.data_dir / "run" / "queue-0.pid").read_text())
        worker_pid = int((server.data_dir / "run" / "worker-0.pid").read_text())
        os.kill(worker_pid, signal.SIGKILL)     # dies young: restarted after a 1 s pause
        deadline = time.monotonic() + 10
        while "child exited" not in server.log() and time.monotonic() < deadline:
            pass
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)   # the supervisor alone, not its group
        assert server.proc.wait(30) == 0
        deadline = time.monotonic() + 20
        while _alive(queue_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(queue_pid), "the queue manager outlived the supervisor"
        assert "Traceback" not in server.log()
    finally:
        server.stop()
