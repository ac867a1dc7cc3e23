"""The lab's DNS: test zones declared by the test, served by dnsmasq(8).

A test declares records on ``lab.dns`` (a :class:`Zone`) before ``lab.start()``
(or calls ``lab.dns.restart()`` after changing them).  Every name that is not
declared is NXDOMAIN.  The server is dnsmasq from Debian's ``dnsmasq-base``
(the binary without a system service), authoritative (``auth-zone``) for the
top-level domains the records use, so its answers carry the AA bit and its
negative answers an SOA (RFC 2308), with one TTL for everything (the lab's
``ttl``; the SOA's MINIMUM is the same value, so the negative TTL is too).

Why dnsmasq and not knot or nsd: it takes its whole zone from a command line or
one config file (no zone compiler, no key directory, no control socket), starts
in milliseconds, and logs every query with its type, name and client
(``--log-queries``), which the tests read to count the lookups a program makes.
What it cannot do is sign zones: DNSSEC tests (DANE, issue 8) need a zone-file
server such as knot with automatic signing.  The records here are plain data
(:class:`Record`), so such a backend can render the same zone to a zone file.

Query log: :meth:`Zone.queries` parses dnsmasq's lines
``auth[MX] example.test from 198.51.100.10`` into :class:`Query` values;
:meth:`Zone.mark` and ``queries(since=mark)`` count the ones of one step.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from tests.netlab.lab import Host


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record: owner name, type (``"MX"``, ``"A"`` …) and its data as
    in a zone file (``"10 mx1.example.test."``, ``"0 ."``, ``"192.0.2.25"``)."""

    name: str
    type: str
    data: str


@dataclass(frozen=True, slots=True)
class Query:
    """One query in the server's log: its type, name (lower case) and client address."""

    type: str
    name: str
    client: str


_QUERY = re.compile(r"(?:query|auth)\[(?P<type>[A-Z0-9]+)\] (?P<name>\S+) from (?P<client>\S+)$")


def _name(name: str) -> str:
    name = name.lower().rstrip(".")
    if not name or any(not label for label in name.split(".")):
        raise ValueError(f"not a domain name: {name!r}")
    return name


def _wire_name(name: str) -> str:
    """A domain name in DNS wire format, as hex (for dnsmasq's --dns-rr)."""
    out = b""
    for label in ([] if name in (".", "") else name.rstrip(".").split(".")):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return (out + b"\0").hex()


class Zone:
    """The test zones and the dnsmasq serving them in the lab's DNS host."""

    def __init__(self, directory: Path, ttl: int) -> None:
        self.directory = directory
        self.ttl = ttl
        self.records: list[Record] = []
        self.log_path = directory / "dnsmasq.log"
        self.config_path = directory / "dnsmasq.conf"
        self._host: Host | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ records

    def mx(self, domain: str, preference: int, host: str) -> Zone:
        """``domain MX preference host``."""
        self.records.append(Record(_name(domain), "MX", f"{preference} {_name(host)}."))
        return self

    def null_mx(self, domain: str) -> Zone:
        """``domain MX 0 .``: the domain accepts no mail (RFC 7505)."""
        self.records.append(Record(_name(domain), "MX", "0 ."))
        return self

    def mx_raw(self, domain: str, preference: int, target: str) -> Zone:
        """An MX whose target is taken as given (``"192.0.2.1"``, ``"."``): for
        the malformed records real zones contain."""
        self.records.append(Record(_name(domain), "MX", f"{preference} {target.rstrip('.')}."))
        return self

    def address(self, name: str, *addresses: str) -> Zone:
        """A and AAAA records (by the family of each address)."""
        for text in addresses:
            ip = ipaddress.ip_address(text)
            self.records.append(Record(_name(name), "AAAA" if ip.version == 6 else "A", str(ip)))
        return self

    def cname(self, alias: str, target: str) -> Zone:
        """``alias CNAME target``; dnsmasq requires the target to have addresses here."""
        self.records.append(Record(_name(alias), "CNAME", f"{_name(target)}."))
        return self

    def txt(self, name: str, *strings: str) -> Zone:
        quoted = " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)
        self.records.append(Record(_name(name), "TXT", quoted))
        return self

    def ptr(self, address: str, name: str) -> Zone:
        ip = ipaddress.ip_address(address)
        self.records.append(Record(ip.reverse_pointer, "PTR", f"{_name(name)}."))
        return self

    # ------------------------------------------------------------ serving

    def tlds(self) -> list[str]:
        """The top-level zones dnsmasq is authoritative for."""
        names = {r.name.rsplit(".", 1)[-1] for r in self.records if not r.name.endswith(".arpa")}
        return sorted(names | {"test"})

    def config(self, addresses: tuple[str, ...]) -> str:
        """dnsmasq's configuration for these records, listening on ``addresses``, port 53."""
        lines = [
            "# dnsmasq of a Pillarbox netlab test: authoritative for the test zones only.",
            "port=53", f"listen-address={','.join(addresses)}", "bind-interfaces",
            "no-resolv", "no-hosts", "no-poll", "domain-needed", "user=nobody",
            "pid-file=", "log-facility=-", "log-queries", "keep-in-foreground",
            f"local-ttl={self.ttl}", f"auth-ttl={self.ttl}",
            f"auth-soa=1,hostmaster.test,1200,180,1209600,{self.ttl}",
            f"auth-server=ns.lab.test,{','.join(addresses)}",
        ]
        for tld in self.tlds():
            lines.append(f"auth-zone={tld}")
        for r in self.records:
            if r.type == "MX":
                pref, target = r.data.split(" ", 1)
                if target == "." or not _is_host(target):
                    # mx-host cannot say "." or an IP-address name: write the RR raw.
                    hexdata = f"{int(pref):04x}" + _wire_name(target)
                    lines.append(f"dns-rr={r.name},15,{hexdata}")
                else:
                    lines.append(f"mx-host={r.name},{target.rstrip('.')},{pref}")
            elif r.type in ("A", "AAAA"):
                lines.append(f"host-record={r.name},{r.data},{self.ttl}")
            elif r.type == "CNAME":
                lines.append(f"cname={r.name},{r.data.rstrip('.')},{self.ttl}")
            elif r.type == "TXT":
                lines.append(f"txt-record={r.name},{_txt_args(r.data)}")
            elif r.type == "PTR":
                lines.append(f"ptr-record={r.name},{r.data.rstrip('.')}")
        return "\n".join(lines) + "\n"

    def start(self, host: Host, timeout: float = 10.0) -> None:
        """Start dnsmasq in ``host`` on its addresses, port 53; wait until it answers."""
        self._host = host
        self.config_path.write_text(self.config(host.addresses), encoding="utf-8")
        check = host.exec(["/usr/sbin/dnsmasq", "--test", f"--conf-file={self.config_path}"])
        if check.returncode != 0:
            raise RuntimeError(f"dnsmasq rejects its configuration:\n{check.stderr}\n"
                               f"{self.config_path.read_text()}")
        log = open(self.log_path, "ab")
        try:
            self._proc = host.popen(
                ["/usr/sbin/dnsmasq", f"--conf-file={self.config_path}"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited ({self._proc.returncode}):\n{self.log()}")
            if "started, version" in self.log() and all(
                    host.answers_udp(a, 53) for a in host.addresses):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dnsmasq did not start in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self._proc is not None and self._host is not None:
            self._host.lab.stop_process(self._proc)
            self._proc = None

    def restart(self) -> None:
        """Stop and start again with the records as they are now (the log goes on)."""
        if self._host is None:
            raise RuntimeError("the DNS server was never started")
        self.stop()
        self.start(self._host)

    # ------------------------------------------------------------ the log

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        """A position in the query log, for ``queries(since=...)``."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def queries(self, since: int = 0, settle: float = 0.2) -> list[Query]:
        """The queries logged after ``since``, oldest first.  ``settle``: wait that
        long first, so that lines of queries just answered are written."""
        if settle:
            time.sleep(settle)
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
        out = []
        for line in text.splitlines():
            m = _QUERY.search(line)
            if m:
                out.append(Query(m["type"], m["name"].lower().rstrip("."), m["client"]))
        return out


def _is_host(target: str) -> bool:
    name = target.rstrip(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def _txt_args(quoted: str) -> str:
    """dnsmasq's txt-record takes comma-separated strings, each optionally quoted."""
    return ",".join(re.findall(r'"(?:[^"\\]|\\.)*"', quoted))
