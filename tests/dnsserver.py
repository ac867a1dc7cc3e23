"""A real DNS server for tests: dnsmasq on 127.0.0.1, a free port, authoritative
for ``test`` (so negative answers carry an SOA, RFC 2308), with the zone lines
given (dnsmasq's ``txt-record=``, ``host-record=``, ``mx-host=`` …).  What
reached it is counted from its query log."""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import need_tool

# dnsmasq's authoritative answers all have auth-ttl, and so has its SOA (TTL and
# MINIMUM), so the negative TTL of RFC 2308 §5 is the same value.
TTL = 300


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port for dnsmasq")


@dataclass
class DNSServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self, name: str, rdtype: str, settle: float = 0.3) -> int:
        """How many (rdtype, name) questions dnsmasq logged."""
        time.sleep(settle)
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return sum(1 for line in text.splitlines()
                   if f"[{rdtype}] {name} from 127.0.0.1" in line)


@contextlib.contextmanager
def dnsmasq(directory: Path, zone: Sequence[str]) -> Iterator[DNSServer]:
    binary = need_tool("dnsmasq")
    port = free_udp_tcp_port()
    log = directory / "dnsmasq.log"
    config = directory / "dnsmasq.conf"
    config.write_text("\n".join([
        f"port={port}", "listen-address=127.0.0.1", "bind-interfaces",
        "no-resolv", "no-hosts", "no-poll", "pid-file=", "user=", "keep-in-foreground",
        f"log-facility={log}", "log-queries", f"auth-ttl={TTL}",
        "auth-soa=1,hostmaster.test,1200,180,1209600", "auth-server=ns.test,127.0.0.1",
        "auth-zone=test,192.0.2.0/24,2001:db8::/32,127.0.0.0/8",  # and their reverse zones
        *zone,
    ]) + "\n")
    errors = directory / "dnsmasq.stderr"
    with open(errors, "wb") as stderr:
        proc = subprocess.Popen([binary, f"--conf-file={config}"],
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {errors.read_text(errors='replace')}")
            if log.exists() and "started, version" in log.read_text(errors="replace"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("dnsmasq did not start in 10 s")
            time.sleep(0.05)
        yield DNSServer(port, log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dkim_test_key(bits: int = 1024) -> tuple[bytes, str]:
    """A fresh RSA key for a test signer: its PKCS#8 PEM and the base64 public
    key that goes into the DNS as ``p=``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()
