"""What the benchmarks share: free ports, a DNS server on loopback, a fresh
``pillarbox serve``, its processes.

Benchmarks send no traffic beyond loopback, DNS included: the server they start
asks :func:`start_dns`'s dnsmasq, never the machine's resolver.  That server
answers for the load generators as a well-run sending domain's DNS would
(``loadgen.test`` of ``../shared/bench/postfix-anchor``'s smtp-source and
``example.org`` of the Python senders): an SPF record that passes 127.0.0.0/8,
a DMARC record, forward-confirmed reverse DNS for 127.0.0.1, with TTLs of five
minutes; so the inbound checks run as they do on real mail, against real answers.

``python bench/pbxbench.py dns DIR`` starts it in the background for shell
scripts: it prints the port, and ``DIR/dnsmasq.pid`` holds the process to stop.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import sys
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


# What the senders' domains publish.  127.0.0.1 is loadgen.test, so iprev and the
# HELO check find the name that smtp-source says in its EHLO.
SENDER_DOMAINS = ("loadgen.test", "example.org")
DNS_RECORDS = [
    "host-record=loadgen.test,127.0.0.1",
    *[line for domain in SENDER_DOMAINS for line in (
        f'txt-record={domain},"v=spf1 ip4:127.0.0.0/8 -all"',
        f'txt-record=_dmarc.{domain},"v=DMARC1; p=reject; rua=mailto:dmarc@{domain}"',
        f"local=/{domain}/",
    )],
    "local=/127.in-addr.arpa/",
]


def start_dns(work: Path, foreground: bool = True) -> tuple[subprocess.Popen[bytes] | None, int]:
    """dnsmasq on a free loopback port with :data:`DNS_RECORDS` and nothing else
    (no upstream: a name it does not know is refused, never forwarded); returns
    the process (None when ``foreground`` is false and it went to the background,
    its pid in ``work/dnsmasq.pid``) and the port, once it answers.

    The port is free for UDP when picked; dnsmasq binds TCP on it too, and
    exits 2 when that is taken (seen once in a few hundred starts): then
    another port, a few times."""
    for _ in range(4):
        try:
            return _start_dns(work, foreground)
        except _PortTaken:
            continue
    return _start_dns(work, foreground)


class _PortTaken(SystemExit):
    pass


def _start_dns(work: Path, foreground: bool) -> tuple[subprocess.Popen[bytes] | None, int]:
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(binary).exists():
        raise SystemExit("dnsmasq is not installed (Debian: dnsmasq-base)")
    port = free_udp_port()
    config = work / "dnsmasq.conf"
    config.write_text("\n".join([
        f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
        "no-hosts", "no-poll", "user=", f"pid-file={work / 'dnsmasq.pid'}",
        f"log-facility={work / 'dnsmasq.log'}", "local-ttl=300", "neg-ttl=300",
        *(["keep-in-foreground"] if foreground else []), *DNS_RECORDS,
    ]) + "\n")
    proc = subprocess.Popen([binary, f"--conf-file={config}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if foreground:
        atexit.register(proc.kill)
    else:
        if proc.wait() != 0:
            _exited(proc.returncode, work)
        proc = None
    deadline = time.monotonic() + 20
    query = _txt_query("loadgen.test")
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            _exited(proc.returncode, work)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            try:
                s.sendto(query, ("127.0.0.1", port))
                if b"v=spf1" in s.recv(512):
                    return proc, port
            except OSError:
                time.sleep(0.1)
    if proc is not None:
        proc.kill()
    raise SystemExit("dnsmasq did not answer in 20 s")


def _exited(code: int, work: Path) -> None:
    message = f"dnsmasq exited {code}; see {work / 'dnsmasq.log'}"
    if code == 2:                  # dnsmasq: "network error", the address is in use
        raise _PortTaken(message)
    raise SystemExit(message)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _txt_query(name: str) -> bytes:
    """A DNS query for ``name``'s TXT records, with recursion desired."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x10\x00\x01"


def start_pillarbox(work: Path, *options: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """``pillarbox serve`` on the development defaults with its data in ``work/data``,
    SMTP and IMAP (STARTTLS) on free loopback ports, no IMAPS, POP3 or submission; ``options``
    are more ``KEY=VALUE`` overrides.  Returns the process and the two ports once
    IMAP answers."""
    smtp = free_port()
    imap = next(p for p in iter(free_port, None) if p != smtp)   # two listen keys, two ports
    _, dns_port = start_dns(work)
    cmd = [PILLARBOX, "-o", f"server.data_dir={work}/data", "-o", f"dns.nameservers=127.0.0.1:{dns_port}", "-o", f"smtp.listen=127.0.0.1:{smtp}",
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


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "dns":
        sys.exit("usage: python bench/pbxbench.py dns DIR")
    print(start_dns(Path(sys.argv[2]), foreground=False)[1])
