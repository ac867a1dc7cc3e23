"""Network namespaces, veth pairs and a bridge: the lab's wires (see ``tests/netlab``).

Topology: one *core* namespace holds a bridge ``br0``; every host is a network
namespace whose ``eth0`` is one end of a veth pair, the other end enslaved to
``br0``.  All hosts share that one link, and every host has on-link routes for
the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32) and nothing else: no default route, so no packet can leave for
the real Internet, and nothing of the machine's own network is reachable.
A host's addresses are /32 and /128, so any address from those ranges may be
given to any host.  IPv6 addresses skip duplicate address detection
(``nodad``), so they work at once.

Names: namespaces are ``pbxlab<pid>-<host>`` (unique per test process), and
each gets ``/etc/netns/<namespace>/resolv.conf`` naming the lab's DNS server;
``ip netns exec`` shows it as ``/etc/resolv.conf`` to what it runs.  Teardown
(:meth:`Lab.close`, also on failure) stops every process the lab started,
ends anything left inside its namespaces by PID, deletes the namespaces (the
veth pairs go with them) and the ``/etc/netns`` entries.  Namespaces of a
``pbxlab<pid>-`` whose process is gone (a run killed with SIGKILL) are
removed when the next lab starts.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.netlab.dns import Zone

T = TypeVar("T")

PREFIX = "pbxlab"
RANGES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
DNS_V4 = "192.0.2.53"
DNS_V6 = "2001:db8::53"
CLONE_NEWNET = 0x40000000
TOOLS = {"ip": "iproute2", "dnsmasq": "dnsmasq-base"}

_libc = ctypes.CDLL(None, use_errno=True)


def _in_docs_ranges(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(r) for r in RANGES)


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)


def require_lab(*tools: str) -> None:
    """Skip the test (fail it under ``CI=true``) unless the lab can be built here:
    root, network namespaces, and the tools (``ip``, ``dnsmasq`` and ``tools``)."""
    problem = None
    if os.geteuid() != 0:
        problem = "the network lab needs root (network namespaces, port 53 and 25)"
    else:
        for tool in ("ip", "dnsmasq", *tools):
            if _tool(tool) is None:
                package = TOOLS.get(tool, "see .ci/run")
                problem = f"{tool} is not installed (Debian package {package}; see .ci/run)"
                break
    if problem is None:
        probe = f"{PREFIX}{os.getpid()}-probe"
        done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if done.returncode != 0:
            problem = f"cannot create a network namespace: {done.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def _run(args: Sequence[str], what: str = "") -> None:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what or ' '.join(args)} failed: {done.stderr.strip()}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


class Host:
    """A host of the lab: a network namespace with its own addresses."""

    def __init__(self, lab: Lab, name: str, addresses: tuple[str, ...]) -> None:
        self.lab = lab
        self.name = name
        self.netns = f"{lab.prefix}-{name}"
        self.addresses = addresses
        # Scratch space for this host's programs, readable by daemons that drop
        # root (Postfix, smtp-sink): under the lab's world-traversable directory.
        self.directory = lab.public / name
        self._blackholes: list[str] = []

    @property
    def ipv4(self) -> str | None:
        """The host's first IPv4 address."""
        return next((a for a in self.addresses if ipaddress.ip_address(a).version == 4), None)

    @property
    def ipv6(self) -> str | None:
        return next((a for a in self.addresses if ipaddress.ip_address(a).version == 6), None)

    def __repr__(self) -> str:
        return f"<Host {self.name} {' '.join(self.addresses)} netns={self.netns}>"

    # ----------------------------------------------------------- programs

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed with ``ip netns exec <namespace>``."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def exec(self, argv: Sequence[str], *, timeout: float = 60, check: bool = False,
             input: str | None = None, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run a program in this host to its end; stdout and stderr captured as text."""
        done = subprocess.run(self.command(argv), capture_output=True, text=True,
                              timeout=timeout, input=input, env=env)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.name} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        return done

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a program in this host, in its own session; the lab stops it at
        teardown (SIGTERM to its process group, SIGKILL after 10 s)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)
        self.lab._processes.append(proc)
        return proc

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` in a fresh thread that has joined this host's network
        namespace: the sockets it opens are this host's.  (Only the network
        namespace: files, ``/etc/resolv.conf`` included, are the machine's; give
        nameservers explicitly, or run a program with :meth:`exec`.)"""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns into {self.netns}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                box["value"] = fn(*args, **kwargs)
            except BaseException as e:  # re-raised in the caller's thread
                box["error"] = e

        thread = threading.Thread(target=target, name=f"netns {self.netns}", daemon=True)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine to completion on an event loop in this host's namespace."""
        return self.call(asyncio.run, coroutine)

    # ----------------------------------------------------------- network

    def connect(self, address: str, port: int, timeout: float = 5.0) -> bytes:
        """Connect from this host to ``address``:``port``, read what the peer says
        first (an SMTP greeting), close; raise ``OSError`` if it cannot."""
        def probe() -> bytes:
            with socket.create_connection((address, port), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(4096)
        return self.call(probe)

    def wait_for_port(self, address: str, port: int, timeout: float = 20.0,
                      proc: subprocess.Popen[bytes] | None = None,
                      log: Callable[[], str] = lambda: "") -> bytes:
        """Wait until a server greets on ``address``:``port`` (from this host)."""
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server on [{address}]:{port} in {self.name} exited "
                                   f"({proc.returncode}):\n{log()}")
            try:
                greeting = self.connect(address, port, timeout=2.0)
                if greeting:
                    return greeting
            except OSError as e:
                error = e
            time.sleep(0.1)
        raise RuntimeError(f"nothing greets on [{address}]:{port} in {self.name} after "
                           f"{timeout}s ({error}):\n{log()}")

    def blackhole(self, *prefixes: str) -> None:
        """Drop this host's packets to ``prefixes`` (blackhole routes, more specific
        than the on-link ones): a peer there that connects gets no SYN-ACK and
        times out, as with a dead or firewalled MX.  :meth:`clear_blackholes` undoes it."""
        for prefix in prefixes:
            _run(["ip", "-n", self.netns, "route", "add", "blackhole",
                  str(ipaddress.ip_network(prefix, strict=False))])
            self._blackholes.append(prefix)

    def clear_blackholes(self) -> None:
        for prefix in self._blackholes:
            _run(["ip", "-n", self.netns, "route", "del", "blackhole",
                  str(ipaddress.ip_network(prefix, strict=False))])
        self._blackholes.clear()

    def link(self, up: bool) -> None:
        """Take the host's link down (its addresses stop answering ARP/ND: peers get
        "no route to host" after a few seconds) or up again."""
        _run(["ip", "-n", self.netns, "link", "set", "eth0", "up" if up else "down"])

    def answers_udp(self, address: str, port: int) -> bool:
        """Whether a DNS server answers a query for ``lab.test SOA`` there."""
        query = bytes.fromhex("beef01000001000000000000") + b"\x03lab\x04test\x00\x00\x06\x00\x01"

        def probe() -> bool:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(0.5)
                try:
                    s.sendto(query, (address, port))
                    return s.recv(512)[:2] == b"\xbe\xef"
                except OSError:
                    return False
        return self.call(probe)


class Lab:
    """A small Internet of network namespaces on this machine; see ``tests/netlab``."""

    def __init__(self, directory: Path, *, ttl: int = 300, dns_ipv6: bool = True) -> None:
        self.directory = Path(directory)
        self.prefix = f"{PREFIX}{os.getpid()}"
        # pytest's tmp_path is private to root; daemons that run as postfix or
        # nobody need a path they can traverse.  Removed at close, after its
        # *.log files are copied to ``directory``.
        self.public = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.public.chmod(0o755)
        self.core = f"{self.prefix}-core"
        self.hosts: dict[str, Host] = {}
        self.dns = Zone(self.directory / "dns", ttl)
        self.dns_addresses = (DNS_V4, DNS_V6) if dns_ipv6 else (DNS_V4,)
        self.started = False
        self._processes: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._etc_dirs: list[Path] = []
        self._created_etc_netns = False
        self._ports = 0
        self.dns_host = self.host("ns", *self.dns_addresses)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str, *addresses: str, dns_name: str | None = None) -> Host:
        """A host with these addresses (from the documentation ranges).  With
        ``dns_name``, A/AAAA records for it are added to the zone.  Hosts made
        after :meth:`start` are built at once."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        if not name.replace("-", "").isalnum() or len(f"{self.prefix}-{name}") > 64:
            raise ValueError(f"host name {name!r}: letters, digits and '-', short")
        used = {a for h in self.hosts.values() for a in h.addresses}
        canonical = []
        for address in addresses:
            if not _in_docs_ranges(address):
                raise ValueError(f"{address} is not in the lab's documentation ranges {RANGES}")
            text = str(ipaddress.ip_address(address))
            if text in used:
                raise ValueError(f"{text} is already an address of another host")
            canonical.append(text)
        host = Host(self, name, tuple(canonical))
        self.hosts[name] = host
        if dns_name is not None:
            self.dns.address(dns_name, *host.addresses)
        if self.started:
            self._build_host(host)
        return host

    # ------------------------------------------------------------- build

    def start(self) -> Lab:
        """Build the namespaces and start the DNS server (records declared so far)."""
        if self.started:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dns.directory.mkdir(parents=True, exist_ok=True)
        cleanup_stale()
        try:
            self._add_netns(self.core)
            _run(["ip", "-n", self.core, "link", "set", "lo", "up"])
            _run(["ip", "-n", self.core, "link", "add", "br0", "type", "bridge"])
            # No multicast snooping: IPv6 neighbour discovery floods like ARP.
            _run(["ip", "-n", self.core, "link", "set", "br0", "type", "bridge",
                  "mcast_snooping", "0"])
            _run(["ip", "-n", self.core, "link", "set", "br0", "up"])
            self.started = True
            for host in self.hosts.values():
                self._build_host(host)
            self.dns.start(self.dns_host)
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, name: str) -> None:
        if not Path("/etc/netns").exists():
            self._created_etc_netns = True
        _run(["ip", "netns", "add", name], f"ip netns add {name}")
        self._namespaces.append(name)

    def _build_host(self, host: Host) -> None:
        self._add_netns(host.netns)
        host.directory.mkdir(parents=True, exist_ok=True)
        self._ports += 1
        peer = f"vh{self._ports}"
        ns = host.netns
        _run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
              "peer", "name", peer, "netns", self.core])
        _run(["ip", "-n", self.core, "link", "set", peer, "master", "br0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        for address in host.addresses:
            v6 = ":" in address
            args = ["ip", "-n", ns, "addr", "add", f"{address}/{128 if v6 else 32}", "dev", "eth0"]
            _run(args + (["nodad"] if v6 else []))
        for prefix in RANGES:
            if ":" in prefix and not any(":" in a for a in host.addresses):
                continue  # no IPv6 address, no IPv6 route (connect fails at once)
            if ":" not in prefix and not any(":" not in a for a in host.addresses):
                continue
            _run(["ip", "-n", ns, "route", "add", prefix, "dev", "eth0"])
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        self._etc_dirs.append(etc)
        servers = "".join(f"nameserver {a}\n" for a in self.dns_addresses)
        (etc / "resolv.conf").write_text(
            f"# netlab {ns}: the lab's DNS server; removed with the lab\n{servers}"
            "options timeout:2 attempts:2\n", encoding="ascii")
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n", encoding="ascii")

    # ---------------------------------------------------------- teardown

    def stop_process(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM to the process group of a program started by :meth:`Host.popen`,
        SIGKILL if it is still there after ``timeout``."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if proc in self._processes:
            self._processes.remove(proc)

    def close(self) -> None:
        """Tear everything down; safe to call twice, and after a failed start."""
        errors: list[str] = []
        for proc in reversed(list(self._processes)):
            try:
                self.stop_process(proc)
            except Exception as e:  # keep tearing down
                errors.append(f"stopping {proc.args}: {e}")
        for ns in reversed(self._namespaces):
            _remove_netns(ns)
        self._namespaces.clear()
        for etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        self._etc_dirs.clear()
        if self._created_etc_netns:
            try:
                Path("/etc/netns").rmdir()
            except OSError:
                pass
        self.started = False
        if self.public.exists():
            for log in self.public.rglob("*.log"):
                if log.is_file() and not log.is_symlink():
                    target = self.directory / "logs" / log.relative_to(self.public)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log, target)
            shutil.rmtree(self.public, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))


def _netns_pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split() if p.isdigit() and _alive(int(p))]


def _remove_netns(ns: str) -> None:
    """End what runs in a namespace of ours (by PID), then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _netns_pids(ns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while _netns_pids(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _stale(name: str) -> bool:
    """Whether ``name`` (a namespace, /etc/netns entry or temporary directory) is of
    a lab whose process is gone: ``pbxlab<pid>-...`` with no live <pid>."""
    owner = name[len(PREFIX):].split("-", 1)[0]
    return name.startswith(PREFIX) and owner.isdigit() and not _alive(int(owner))


def cleanup_stale() -> list[str]:
    """Remove what labs killed with SIGKILL left: their namespaces (ending what
    runs inside by PID), /etc/netns entries and temporary directories."""
    removed = []
    for ns in _listdir(Path("/run/netns")):
        if _stale(ns):
            _remove_netns(ns)
            removed.append(f"/run/netns/{ns}")
    for directory in (Path("/etc/netns"), Path(tempfile.gettempdir())):
        for name in _listdir(directory):
            if _stale(name):
                shutil.rmtree(directory / name, ignore_errors=True)
                removed.append(str(directory / name))
    return removed


def _listdir(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
