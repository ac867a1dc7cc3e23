"""Benchmark: SPF evaluation of many senders, Pillarbox beside pyspf, same DNS, same run.

The bench writes a zone of sender domains with the records real domains
publish (includes of shared providers, some of them chains of includes like
Google's ``_netblocks``; ip4 and ip6 ranges; ``mx`` and ``a`` with CIDR
lengths; ``redirect`` to an organisation's record; an ``exists`` with a
macro; a few domains without SPF and a few broken ones), serves it with
dnsmasq on 127.0.0.1 (a free port, authoritative, no query log), and makes
``--senders`` senders spread over the domains (a fifth as many domains as
senders by default: dnsmasq looks its records up in lists, and a zone much
larger makes the DNS server the bottleneck of both sides), each with its
own local part and client address: about half authorized by the record,
half not, a fifth of them IPv6.  Then it evaluates every sender

- with Pillarbox as the server runs it: ``DNSResolver`` (cache, single
  flight) and ``check_mail_from``, ``--concurrency`` evaluations at a time
  (the sessions of a busy MX);
- with ``--cold``, also with Pillarbox without its cache, one evaluation at
  a time (pyspf's conditions: the same DNS questions, one after the other);
- with pyspf (``spf.query(...).check()``), its dnspython resolver pointed at
  the same dnsmasq, one at a time (it is synchronous),

and prints senders per second for each, the ratios, and every sender whose
result differs between pyspf and either Pillarbox run (there should be none).

    .venv/bin/python bench/spf_bench.py [--senders 2000] [--concurrency 50] [--seed 7] [--cold]

The issue's figure is ``--senders 10000`` (under a minute; ``--cold`` adds
half a minute).  Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ipaddress
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import dns.resolver  # noqa: E402
import spf  # type: ignore[import-untyped]  # noqa: E402  (pyspf)

from pillarbox.policy.dns import DNSResolver  # noqa: E402
from pillarbox.policy.spf import check_mail_from  # noqa: E402

TLD = "bench"
HELO = "client.example.org"


@dataclass
class Zone:
    """The zone as dnsmasq configuration lines, and the senders to check."""

    lines: list[str] = field(default_factory=list)
    senders: list[tuple[str, str]] = field(default_factory=list)  # (client ip, mail from)

    def txt(self, name: str, text: str) -> None:
        # Long records as several strings (RFC 7208 §3.3): both sides concatenate them.
        chunks = [text[i:i + 200] for i in range(0, len(text), 200)] or [""]
        self.lines.append(f"txt-record={name}," + ",".join(f'"{c}"' for c in chunks))

    def host(self, name: str, *addresses: str) -> None:
        self.lines.append(f"host-record={name},{','.join(addresses)}")

    def mx(self, name: str, host: str, preference: int) -> None:
        self.lines.append(f"mx-host={name},{host},{preference}")


def v4(rng: random.Random) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(rng.randrange(0x0A000000, 0x0B000000))  # 10/8


def v6(rng: random.Random) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(96))  # 2001:db8::/32


def inside(rng: random.Random, network: str) -> str:
    net = ipaddress.ip_network(network, strict=False)
    return str(net[rng.randrange(net.num_addresses)])


def stranger(rng: random.Random, ipv6: bool) -> str:
    """An address no record authorizes (192.0.2.0/24 and 3fff::/20 are never used)."""
    if ipv6:
        return str(ipaddress.IPv6Address((0x3FFF << 112) | rng.getrandbits(100)))
    return f"192.0.2.{rng.randrange(1, 255)}"


def build(n: int, domains: int, seed: int) -> Zone:
    """A zone of ``domains`` sender domains and ``n`` senders spread over them."""
    rng = random.Random(seed)
    zone = Zone()
    # Shared providers: the networks each authorizes, by include name.
    providers: list[tuple[str, list[str]]] = []
    for p in range(30):
        name = f"spf.prov{p}.{TLD}"
        if p < 5:  # chains of includes, like _spf.google.com → _netblocks{,2,3}
            parts, nets = [], []
            for b in range(3):
                block = [f"{v4(rng)}/{rng.choice([19, 20, 22, 24])}" for _ in range(8)]
                block6 = [f"{v6(rng)}/{rng.choice([32, 36, 48])}" for _ in range(3)]
                sub = f"_netblocks{b}.prov{p}.{TLD}"
                zone.txt(sub, "v=spf1 " + " ".join(f"ip4:{x}" for x in block)
                         + " " + " ".join(f"ip6:{x}" for x in block6) + " ~all")
                parts.append(f"include:{sub}")
                nets += block + block6
            zone.txt(name, "v=spf1 " + " ".join(parts) + " ~all")
        else:
            nets = [f"{v4(rng)}/{rng.choice([24, 26, 28])}" for _ in range(rng.randrange(2, 7))]
            nets.append(f"{v6(rng)}/{rng.choice([48, 56, 64])}")
            zone.txt(name, "v=spf1 " + " ".join(
                ("ip6:" if ":" in x else "ip4:") + x for x in nets) + " -all")
        providers.append((name, nets))
    # Organisations whose record many domains redirect to.
    orgs: list[tuple[str, list[str]]] = []
    for o in range(max(1, domains // 20)):
        mail = f"mail.org{o}.{TLD}"
        address = str(v4(rng))
        prov, prov_nets = rng.choice(providers)
        own = f"{v4(rng)}/27"
        zone.host(mail, address)
        name = f"_spf.org{o}.{TLD}"
        zone.txt(name, f"v=spf1 a:{mail} ip4:{own} include:{prov} -all")
        orgs.append((name, [address + "/32", own] + prov_nets))

    authorized: list[tuple[str, list[str]]] = []
    for k in range(domains):
        domain = f"d{k}.{TLD}"
        kind = rng.choices(["provider", "mx-a", "mixed", "redirect", "a-cidr", "exists",
                            "none", "neutral", "broken"],
                           weights=[25, 20, 15, 15, 10, 5, 4, 4, 2])[0]
        allowed: list[str] = []
        if kind == "provider":
            prov, allowed = rng.choice(providers)
            zone.txt(domain, f"v=spf1 include:{prov} {rng.choice(['~all', '-all'])}")
        elif kind == "mx-a":
            own = f"{v4(rng)}/28"
            zone.txt(domain, f"v=spf1 mx a ip4:{own} -all")
            a, a6 = str(v4(rng)), str(v6(rng))
            zone.host(domain, a, a6)
            allowed = [own, a + "/32", a6 + "/128"]
            for m in range(rng.randrange(1, 4)):
                host = f"mx{m}.{domain}"
                addr = str(v4(rng))
                zone.host(host, addr)
                zone.mx(domain, host, 10 * (m + 1))
                allowed.append(addr + "/32")
        elif kind == "mixed":
            own, own6 = f"{v4(rng)}/24", f"{v6(rng)}/64"
            (p1, n1), (p2, n2) = rng.sample(providers, 2)
            zone.txt(domain, f"v=spf1 ip4:{own} ip6:{own6} include:{p1} include:{p2} -all")
            allowed = [own, own6] + n1 + n2
        elif kind == "redirect":
            org, allowed = rng.choice(orgs)
            zone.txt(domain, f"v=spf1 redirect={org}")
        elif kind == "a-cidr":
            out = f"out.{domain}"
            addr = str(v4(rng))
            zone.host(out, addr)
            prov, prov_nets = rng.choice(providers)
            zone.txt(domain, f"v=spf1 a:{out}/29 include:{prov} -all")
            allowed = [addr + "/29"] + prov_nets
        elif kind == "exists":
            zone.txt(domain, "v=spf1 exists:%{i}._ip." + domain + " -all")
            for _ in range(3):
                addr = str(v4(rng))
                zone.host(f"{addr}._ip.{domain}", "127.0.0.2")
                allowed.append(addr + "/32")
        elif kind == "none":
            zone.host(domain, str(v4(rng)))
        elif kind == "neutral":
            zone.txt(domain, "v=spf1 ?all")
        else:  # two SPF records, or a bad mechanism: permerror
            if rng.random() < 0.5:
                zone.txt(domain, "v=spf1 -all")
                zone.txt(domain, "v=spf1 +all")
            else:
                zone.txt(domain, "v=spf1 ip4:10.0.0.0/8 mx:%{z} -all")
        authorized.append((domain, allowed))
    # Every domain sends at least once (while there are senders), the rest at random.
    picks = list(range(min(n, domains))) + [rng.randrange(domains) for _ in range(n - domains)]
    rng.shuffle(picks)
    for s, k in enumerate(picks):
        domain, allowed = authorized[k]
        ipv6 = rng.random() < 0.2
        candidates = [x for x in allowed if (":" in x) == ipv6]
        if candidates and rng.random() < 0.5:
            client = inside(rng, rng.choice(candidates))
        else:
            client = stranger(rng, ipv6)
        zone.senders.append((client, f"user{s}@{domain}"))
    return zone


# --- the DNS server ---------------------------------------------------------------------


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for dnsmasq")


def start_dnsmasq(zone: Zone, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(binary).exists():
        raise SystemExit("dnsmasq is not installed (Debian: dnsmasq-base)")
    port = free_port()
    config = directory / "dnsmasq.conf"
    log = directory / "dnsmasq.log"
    config.write_text("\n".join([
        f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
        "no-hosts", "no-poll", "pid-file=", "user=", "keep-in-foreground",
        f"log-facility={log}", "auth-ttl=300", "auth-soa=1,hostmaster.bench,1200,180,1209600",
        "auth-server=ns.bench,127.0.0.1", f"auth-zone={TLD}", *zone.lines,
    ]) + "\n")
    proc = subprocess.Popen([binary, f"--conf-file={config}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    probe = dns.resolver.Resolver(configure=False)
    probe.nameservers, probe.port, probe.lifetime = ["127.0.0.1"], port, 0.5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dnsmasq exited:\n{log.read_text(errors='replace')}")
        try:
            probe.resolve(f"spf.prov0.{TLD}", "TXT")
            return proc, port
        except dns.exception.DNSException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("dnsmasq did not answer in 20 s")


# --- the contenders -------------------------------------------------------------------


async def pillarbox(senders: list[tuple[str, str]], port: int, concurrency: int,
                    cache: bool) -> tuple[list[str], float, int]:
    resolver = DNSResolver([f"127.0.0.1:{port}"], timeout=5.0,
                           cache_entries=100000 if cache else 0)
    gate = asyncio.Semaphore(concurrency)

    async def one(ip: str, mail_from: str) -> str:
        async with gate:
            result = await check_mail_from(ip, mail_from, HELO, resolver)
            return result.result.value

    started = time.perf_counter()
    results = await asyncio.gather(*(one(ip, m) for ip, m in senders))
    return list(results), time.perf_counter() - started, resolver.asked


def pyspf(senders: list[tuple[str, str]], port: int, threads: int) -> tuple[list[str], float]:
    """pyspf, one evaluation at a time per thread (as a milter runs it)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], port
    dns.resolver.default_resolver = resolver  # pyspf asks dns.resolver.query()

    def one(sender: tuple[str, str]) -> str:
        result, _code, _explanation = spf.query(i=sender[0], s=sender[1], h=HELO,
                                                timeout=5).check()
        return str(result)

    warnings.simplefilter("ignore", DeprecationWarning)  # dns.resolver.query()
    started = time.perf_counter()
    if threads == 1:
        results = [one(sender) for sender in senders]
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(one, senders))
    return results, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--senders", type=int, default=2000)
    parser.add_argument("--domains", type=int, default=0,
                        help="sender domains (default: a fifth of the senders, at least 100)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="evaluations at a time: our tasks, pyspf's threads")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cold", action="store_true",
                        help="also both one sender at a time, ours without its cache")
    args = parser.parse_args()
    if args.senders < 1 or args.concurrency < 1 or args.domains < 0:
        parser.error("--senders and --concurrency must be at least 1")
    # A kill (timeout(1), ^C) still stops dnsmasq and removes the zone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    domains = args.domains or max(100, args.senders // 5)
    zone = build(args.senders, domains, args.seed)
    n = len(zone.senders)
    runs: list[tuple[str, list[str], float, str]] = []

    def report(name: str, results: list[str], seconds: float, note: str = "") -> None:
        runs.append((name, results, seconds, note))
        print(f"{name:40s} {n / seconds:8.0f} senders/s {note}", flush=True)

    with tempfile.TemporaryDirectory(prefix="spf-bench-") as tmp:
        proc, port = start_dnsmasq(zone, Path(tmp))
        try:
            print(f"{n} senders of {domains} domains, {len(zone.lines)} DNS records, "
                  f"dnsmasq on 127.0.0.1:{port}", flush=True)
            c = args.concurrency
            results, seconds, asked = asyncio.run(pillarbox(zone.senders, port, c, cache=True))
            report(f"pillarbox, cache, {c} at a time", results, seconds, f"({asked} queries)")
            results, seconds = pyspf(zone.senders, port, c)
            report(f"pyspf {spf.__version__}, {c} threads", results, seconds)
            if args.cold:
                results, seconds, asked = asyncio.run(
                    pillarbox(zone.senders, port, 1, cache=False))
                report("pillarbox, no cache, 1 at a time", results, seconds,
                       f"({asked} queries)")
                results, seconds = pyspf(zone.senders, port, 1)
                report(f"pyspf {spf.__version__}, 1 at a time", results, seconds)
        finally:
            proc.terminate()
            proc.wait(5)

    print(f"ratio pillarbox/pyspf, {args.concurrency} at a time: {runs[1][2] / runs[0][2]:.2f}")
    if args.cold:
        print(f"ratio pillarbox/pyspf, 1 at a time, no cache: {runs[3][2] / runs[2][2]:.2f}")
    tally: dict[str, int] = {}
    for result in runs[1][1]:
        tally[result] = tally.get(result, 0) + 1
    print("results (pyspf):", ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    differing = [i for i in range(n) if len({run[1][i] for run in runs}) > 1]
    print(f"differing results: {len(differing)}")
    for i in differing:
        ip, mail_from = zone.senders[i]
        print(f"  #{i} {ip} {mail_from}: " + ", ".join(f"{run[0]}: {run[1][i]}" for run in runs))
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
