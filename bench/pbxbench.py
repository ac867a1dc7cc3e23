"""What the IMAP benchmarks share: free ports, a fresh ``pillarbox serve``, its processes."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PILLARBOX = str(ROOT / ".venv/bin/pillarbox")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += tree(int(child))
    return out


def start_pillarbox(work: Path, *options: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """``pillarbox serve`` on the development defaults with its data in ``work/data``,
    SMTP and IMAP (STARTTLS) on free loopback ports, no IMAPS, POP3 or submission; ``options``
    are more ``KEY=VALUE`` overrides.  Returns the process and the two ports once
    IMAP answers."""
    smtp, imap = free_port(), free_port()
    cmd = [PILLARBOX, "-o", f"server.data_dir={work}/data", "-o", f"smtp.listen=127.0.0.1:{smtp}",
           "-o", f"imap.listen=127.0.0.1:{imap}", "-o", "imap.listen_tls=[]",
           "-o", "pop3.listen=[]", "-o", "pop3.listen_tls=[]", "-o", "submission.listen=[]",
           "-o", "submission.listen_tls=[]", "-o", f"log.file={work}/log"]
    for option in options:
        cmd += ["-o", option]
    proc = subprocess.Popen(cmd + ["serve"], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(imap)
    return proc, smtp, imap


def add_user(work: Path, address: str, password: str) -> None:
    subprocess.run([PILLARBOX, "-o", f"server.data_dir={work}/data", "user", "add", address],
                   input=(password + "\n").encode(), check=True, capture_output=True, cwd=work)
