"""MX resolution: where mail for a domain goes (RFC 5321 §5.1, RFC 7505).

``await MXResolver().route("example.com")`` is a :class:`Route`: the hosts to
try, in order, each with its addresses in order; or it raises
:class:`RouteError`, which says whether the failure is permanent (bounce now)
or transient (retry later) and carries the reply text for the DSN.

The rules, with the RFC text they follow:

- MX records in preference order, lowest first; hosts of equal preference are
  shuffled on every call, so load spreads over them (RFC 5321 §5.1, "the
  sender-SMTP MUST randomize them").
- No MX records (NOERROR with no data): the domain itself is the one host, an
  *implicit MX* of preference 0, from its AAAA/A records (RFC 5321 §5.1).  A
  domain with neither MX nor address records cannot be routed: permanent
  ``5.4.4``.
- NXDOMAIN: the domain does not exist, permanent ``5.1.2``.
- A single MX record ``0 .`` is a *null MX*: the domain accepts no mail,
  permanent ``5.1.10`` (RFC 7505 §3, §4.3).  A "." among other MX records is
  a misconfiguration (RFC 7505 §3 forbids it) and is ignored; the others are
  used.
- SERVFAIL, REFUSED, a time-out: transient ``4.4.3``.  Such failures are never
  cached.
- An MX host whose name does not resolve is skipped; when no host resolves,
  the failure is transient (the domain's DNS may be fixed in time).  An MX
  host name that is an IP address (``10 192.0.2.1.``) is not a host name
  (RFC 5321 §5.1: the MX names a domain; RFC 2181 §10.3 says the same for
  aliases) and is skipped, as Postfix does.  An MX host name that is a CNAME
  is followed (RFC 2181 §10.3 forbids it, but such zones exist, and
  delivering to the canonical host is what every MTA does).
- Bounded work: at most ``max_hosts`` MX hosts (the first ones in order) are
  looked up, so a domain with a thousand MX records costs no more than ten;
  CNAME chains are bounded by dnspython (16 links).
- Each host's addresses: IPv6 and IPv4, both by default, the preferred family
  first (``prefer``), shuffled within a family (round robin).
- A domain in U-labels (``bücher.example``) is looked up by its A-labels
  (``xn--bcher-kva.example``, IDNA 2008 with UTS #46 mapping); an address
  literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, RFC 5321 §4.1.3) routes to
  that address without DNS.

Answers are cached in memory for their TTL: positive answers for the smallest
TTL of their CNAME chain, negative ones (NXDOMAIN, no data) for the negative
TTL of RFC 2308 §5, min(SOA TTL, SOA MINIMUM), and not at all without an SOA.
The cache is bounded (least recently used entries go first), and concurrent
lookups of the same name and type share one query ("single flight").  The
shuffling happens after the cache, so every call gets a fresh order.

The nameservers are the given ones, or those of ``/etc/resolv.conf``.
Nothing here checks whether a host is the local one (RFC 5321 §5.1: drop
yourself and every MX less preferred); that is remote delivery's job, which
knows the local names and addresses.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import idna
from dns.rdatatype import RdataType

from pillarbox.policy.dns import parse_nameserver, servfail_text

__all__ = ["MXHost", "Route", "RouteError", "MXResolver"]

MAX_HOSTS = 10            # MX hosts looked up per domain
MAX_TTL = 86400.0         # a day: the longest any answer is kept
MAX_NEGATIVE_TTL = 10800.0  # 3 hours, RFC 2308 §5's upper bound for negative caching
CACHE_ENTRIES = 10000


@dataclass(frozen=True, slots=True)
class MXHost:
    """One mail exchanger: its name (A-labels, no final dot), MX preference, and
    its addresses as IP literals in the order to try them."""

    name: str
    preference: int
    addresses: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.preference} {self.name} [{', '.join(self.addresses)}]"


@dataclass(frozen=True, slots=True)
class Route:
    """Where mail for ``domain`` (A-labels) goes: ``hosts`` in the order to try.

    ``implicit`` is true when the domain has no MX records and its own
    addresses are used (RFC 5321 §5.1), and for address literals.
    """

    domain: str
    hosts: tuple[MXHost, ...]
    implicit: bool

    def addresses(self) -> list[tuple[MXHost, str]]:
        """Every (host, address) pair, in the order to try them."""
        return [(host, address) for host in self.hosts for address in host.addresses]

    def __str__(self) -> str:
        kind = "implicit MX" if self.implicit else "MX"
        return f"{self.domain} {kind}: " + "; ".join(str(h) for h in self.hosts)


class RouteError(Exception):
    """No route to a domain.  ``permanent`` decides bounce (true) or retry;
    ``reply`` is the reply-shaped text for logs and the DSN, such as
    ``"550 5.1.10 Recipient domain example.com has a null MX (RFC 7505)"``.
    ``code`` and ``status`` are its reply code and enhanced status code."""

    def __init__(self, code: int, status: str, text: str) -> None:
        self.code = code
        self.status = status
        self.text = text
        self.permanent = code >= 500
        self.reply = f"{code} {status} {text}"
        super().__init__(self.reply)


def _permanent(status: str, text: str) -> RouteError:
    return RouteError(550, status, text)


def _transient(text: str) -> RouteError:
    return RouteError(451, "4.4.3", text)


# --- names -----------------------------------------------------------------------

_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def ascii_domain(domain: str) -> str:
    """The domain in A-labels, lower case, without a final dot; ``ValueError`` if it
    is not a valid host name (RFC 5321 §4.1.2, RFC 5890)."""
    name = domain[:-1] if domain.endswith(".") else domain
    if not name:
        raise ValueError("empty domain")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError as e:
            raise ValueError(f"not a valid internationalized domain name: {e}") from None
    name = name.lower()
    if len(name) > 253:
        raise ValueError("longer than 253 characters")
    for label in name.split("."):
        if not _LDH_LABEL.match(label):
            raise ValueError(f"label {label!r} is not letters, digits and inner hyphens "
                             "of at most 63 characters")
    return name


def _address_literal(domain: str) -> str | None:
    """The address of ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``; None if not a literal;
    ``ValueError`` if it is a malformed one (RFC 5321 §4.1.3)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise ValueError(f"{domain} is not an address literal") from None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


# --- lookups -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """One lookup's result: records (MX: (preference, target); A/AAAA: addresses),
    or a negative answer, and when it expires (by the resolver's clock)."""

    kind: Literal["data", "nodata", "nxdomain"]
    records: tuple[tuple[int, str], ...] | tuple[str, ...]
    expires: float


class _Failed(Exception):
    """A lookup got no usable answer (time-out, SERVFAIL…): ``why`` says which."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _negative_ttl(response: dns.message.Message | None) -> float | None:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) of the authority section; None without
    an SOA (such negative answers are not cached)."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))  # type: ignore[attr-defined]
    return None


class MXResolver:
    """Routes domains by DNS; one per process, shared by all deliveries (its cache
    and single flight work across them).

    ``nameservers``: IP addresses, or None for those of ``/etc/resolv.conf``.
    ``timeout``: seconds one lookup may take, over all tries and nameservers.
    ``ipv6``/``ipv4``: which address families to return; ``prefer``: which first.
    ``max_hosts``: how many MX hosts are looked up; ``cache_entries``: cache size
    (0: no cache).  ``rng`` and ``clock`` are for tests.
    """

    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 10.0,
        ipv6: bool = True,
        ipv4: bool = True,
        *,
        prefer: Literal["ipv6", "ipv4"] = "ipv6",
        max_hosts: int = MAX_HOSTS,
        cache_entries: int = CACHE_ENTRIES,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (ipv6 or ipv4):
            raise ValueError("at least one of ipv6 and ipv4 must be enabled")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not from 1 to 65535")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if prefer not in ("ipv6", "ipv4"):
            raise ValueError(f'prefer must be "ipv6" or "ipv4", not {prefer!r}')
        if max_hosts < 1:
            raise ValueError("max_hosts must be at least 1")
        if nameservers is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as e:
                raise ValueError(f"no nameservers in /etc/resolv.conf ({e}); "
                                 "configure dns.nameservers") from None
        else:
            if not nameservers:
                raise ValueError("nameservers is empty (None: those of /etc/resolv.conf)")
            resolver = dns.asyncresolver.Resolver(configure=False)
            # "192.0.2.53", or with a port: "192.0.2.53:5353", "[2001:db8::53]:5353".
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, p if p != 53 else port)
                for address, p in map(parse_nameserver, nameservers)]
        resolver.port = port
        resolver.lifetime = timeout
        resolver.timeout = min(2.0, timeout)  # one try at one server; then the next
        self._resolver = resolver
        self.nameservers = [str(ns) for ns in resolver.nameservers]
        families = [dns.rdatatype.AAAA, dns.rdatatype.A]
        if prefer == "ipv4":
            families.reverse()
        self._families = [t for t in families
                          if (ipv6 if t == dns.rdatatype.AAAA else ipv4)]
        self.max_hosts = max_hosts
        self._cache: OrderedDict[tuple[str, int], _Answer] = OrderedDict()
        self._cache_entries = cache_entries
        self._inflight: dict[tuple[str, int], asyncio.Future[_Answer]] = {}
        self._random = rng or random.Random()
        self._clock = clock

    # ------------------------------------------------------------- routing

    async def route(self, domain: str) -> Route:
        """The hosts to try for mail to ``domain``; :class:`RouteError` if there are none."""
        literal = None
        try:
            literal = _address_literal(domain)
            name = domain if literal else ascii_domain(domain)
        except ValueError as e:
            raise _permanent("5.1.2", f"Recipient domain {domain} is not valid: {e}") from None
        if literal is not None:
            return self._literal_route(domain, literal)

        mx = await self._lookup_or_fail(name, dns.rdatatype.MX, domain)
        if mx.kind == "nxdomain":
            raise _permanent("5.1.2", f"Recipient domain {domain} does not exist (NXDOMAIN)")
        if mx.kind == "nodata" or not mx.records:
            return await self._implicit_route(name, domain)

        records = [r for r in mx.records if isinstance(r, tuple)]
        if len(records) == 1 and records[0][1] == "":
            raise _permanent("5.1.10", f"Recipient domain {domain} has a null MX (RFC 7505)")
        hosts = self._ordered(records)
        if not hosts:
            raise _transient(f"No usable MX host for {domain} (MX names that are IP "
                             "addresses or '.' are ignored)")
        found = await asyncio.gather(*(self._addresses(host) for _, host in hosts))
        usable = [MXHost(host, pref, addrs)
                  for (pref, host), (addrs, _) in zip(hosts, found) if addrs]
        if not usable:
            why = "; ".join(f"{host}: {why}" for (_, host), (_, why) in zip(hosts, found))
            raise _transient(f"No MX host of {domain} has an address ({why})")
        return Route(name, tuple(usable), implicit=False)

    def _ordered(self, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """MX (preference, host) by preference, equal ones shuffled, each host once
        (at its lowest preference), bad names dropped, at most ``max_hosts``."""
        shuffled = list(records)
        self._random.shuffle(shuffled)
        shuffled.sort(key=lambda r: r[0])  # stable: the shuffle stays within a preference
        out: list[tuple[int, str]] = []
        seen: set[str] = set()
        for pref, host in shuffled:
            if host == "" or _is_ip(host) or host in seen:
                continue
            seen.add(host)
            out.append((pref, host))
            if len(out) == self.max_hosts:
                break
        return out

    async def _implicit_route(self, name: str, domain: str) -> Route:
        addresses, why = await self._addresses(name)
        if addresses:
            return Route(name, (MXHost(name, 0, addresses),), implicit=True)
        if why.startswith(("time-out", "server failure", "error")):
            raise _transient(f"DNS {why} looking up the address of {domain} (no MX records)")
        raise _permanent("5.4.4", f"Recipient domain {domain} has no MX and no "
                                  f"{self._families_text()} records")

    def _literal_route(self, domain: str, address: str) -> Route:
        version = ipaddress.ip_address(address).version
        wanted = dns.rdatatype.AAAA if version == 6 else dns.rdatatype.A
        if wanted not in self._families:
            raise _permanent("5.4.4", f"Recipient domain {domain} is an IPv{version} "
                                      f"address and IPv{version} is disabled")
        return Route(domain, (MXHost(domain, 0, (address,)),), implicit=True)

    def _families_text(self) -> str:
        return "/".join(dns.rdatatype.to_text(t) for t in self._families)

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], str]:
        """The host's addresses in order, and if there are none, why not."""
        results = await asyncio.gather(
            *(self._lookup(host, rdtype) for rdtype in self._families), return_exceptions=True
        )
        addresses: list[str] = []
        reasons: list[str] = []
        for rdtype, result in zip(self._families, results):
            if isinstance(result, _Failed):
                reasons.append(f"{result.why} ({dns.rdatatype.to_text(rdtype)})")
            elif isinstance(result, BaseException):
                raise result
            elif result.kind == "data":
                family = [a for a in result.records if isinstance(a, str)]
                self._random.shuffle(family)
                addresses += [a for a in family if a not in addresses]
        if addresses:
            return tuple(addresses), ""
        if reasons:
            return (), "; ".join(reasons)
        kinds = {r.kind for r in results if isinstance(r, _Answer)}
        return (), "NXDOMAIN" if kinds == {"nxdomain"} else f"no {self._families_text()} records"

    async def _lookup_or_fail(self, name: str, rdtype: RdataType, domain: str) -> _Answer:
        try:
            return await self._lookup(name, rdtype)
        except _Failed as e:
            what = dns.rdatatype.to_text(rdtype)
            raise _transient(f"DNS {e.why} looking up {what} for {domain}") from None

    # --------------------------------------------------- cache, single flight

    async def _lookup(self, name: str, rdtype: RdataType) -> _Answer:
        """One (name, type) answer: from the cache, from a query in flight, or asked."""
        key = (name, int(rdtype))
        hit = self._cache.get(key)
        if hit is not None:
            if hit.expires > self._clock():
                self._cache.move_to_end(key)
                return hit
            del self._cache[key]
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._query(name, rdtype))
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._settle, key))
        # shield: a caller that is cancelled does not cancel the query the others wait for.
        return await asyncio.shield(future)

    def _settle(self, key: tuple[str, int], future: asyncio.Future[_Answer]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if future.cancelled() or future.exception() is not None:
            return  # failures are not cached; exception() marks them retrieved
        answer = future.result()
        if self._cache_entries > 0 and answer.expires > self._clock():
            self._cache[key] = answer
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)

    async def _query(self, name: str, rdtype: RdataType) -> _Answer:
        """Ask the nameservers; raise :class:`_Failed` for anything but an answer."""
        asked = self._clock()
        try:
            answer = await self._resolver.resolve(
                name + ".", rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as e:
            responses = list(e.responses().values())
            ttl = _negative_ttl(responses[-1] if responses else None)
            return _Answer("nxdomain", (), asked + min(ttl or 0.0, MAX_NEGATIVE_TTL))
        except dns.exception.Timeout:
            raise _Failed("time-out") from None
        except dns.resolver.NoNameservers as e:
            raise _Failed(servfail_text(e)) from None
        except dns.exception.DNSException as e:
            raise _Failed(f"error ({e})") from None
        except OSError as e:  # e.g. no route to the nameserver
            raise _Failed(f"error ({e.strerror or e})") from None
        if answer.rrset is None:
            ttl = _negative_ttl(answer.response)
            return _Answer("nodata", (), asked + min(ttl or 0.0, MAX_NEGATIVE_TTL))
        expires = asked + min(float(answer.chaining_result.minimum_ttl), MAX_TTL)
        if rdtype == dns.rdatatype.MX:
            mx = tuple(
                (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower()
                 if r.exchange != dns.name.root else "")
                for r in answer.rrset
            )
            return _Answer("data", mx, expires)
        return _Answer("data", tuple(r.address for r in answer.rrset), expires)
