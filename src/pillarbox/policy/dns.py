"""The DNS that policy checks ask: one small interface, answers as text.

SPF (RFC 7208 §4.6.4, §5), DKIM key records (RFC 6376 §3.6.2), DMARC policy
records (RFC 7489 §6.1) and the like need little of DNS: the records of one
name and type, and whether the name exists.  :class:`Resolver` is that much;
the checks take one, so their tests can hand them a zone in a dict
(:class:`StaticResolver`), and the server hands them the caching dnspython
resolver (:class:`DNSResolver`).

Records come back as text:

- ``TXT``: each record's strings concatenated (RFC 7208 §3.3, RFC 6376
  §3.6.2.2), decoded as UTF-8 with invalid bytes replaced;
- ``A``/``AAAA``: the address in its usual text form;
- ``MX``: the exchange host name, without the trailing dot, in preference
  order; ``PTR``/``CNAME``: the target name, without the trailing dot.

The three outcomes a check must tell apart:

- an :class:`Answer` with records;
- an :class:`Answer` without records: ``nxdomain`` set when the name does not
  exist, clear when it exists without records of that type (both are "void
  lookups" to SPF, RFC 7208 §4.6.4);
- :class:`DNSTemporaryError`: a time-out, SERVFAIL, REFUSED, no nameserver
  answering; the question could not be answered now (SPF "temperror",
  DKIM "TEMPFAIL").

:class:`DNSResolver`, the production one, asks with ``dns.asyncresolver``:

- the given nameservers (``"192.0.2.53"``, ``"192.0.2.53:5353"``,
  ``"[2001:db8::53]:5353"``), or those of ``/etc/resolv.conf``; ``timeout``
  bounds one question over all tries and servers;
- names in U-labels (``bücher.example``) are asked by their A-labels
  (IDNA 2008 with UTS #46 mapping, RFC 5891); a name that cannot be a DNS
  name (an empty label, a label over 63 octets, over 255 octets, no IDNA
  form) is answered NXDOMAIN without asking: no such name can exist;
- answers are cached in a bounded LRU: positive ones for their TTL (the
  smallest of the CNAME chain), NXDOMAIN and no data for the negative TTL of
  RFC 2308 §5, min(SOA TTL, SOA MINIMUM), for a minute without an SOA;
  failures are never cached; nothing is kept longer than a day (negative
  answers: 3 hours, RFC 2308 §5);
- concurrent identical questions share one query ("single flight"); a caller
  that is cancelled does not cancel it for the others;
- ``Answer.ttl`` is the time the answer has left.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import idna

__all__ = ["Answer", "DNSResolver", "DNSTemporaryError", "Resolver", "StaticResolver",
           "parse_nameserver", "servfail_text",
           "RDTYPES"]

RDTYPES = frozenset({"TXT", "A", "AAAA", "MX", "PTR", "CNAME", "TLSA"})


@dataclass(frozen=True, slots=True)
class Answer:
    """The records of one name and type (maybe none), and whether the name exists."""

    records: tuple[str, ...] = ()
    nxdomain: bool = False
    ttl: float = 0.0

    @property
    def void(self) -> bool:
        """No records: NXDOMAIN or no data (RFC 7208 §4.6.4)."""
        return not self.records


class DNSTemporaryError(Exception):
    """The question could not be answered now: time-out, SERVFAIL, REFUSED."""

    def __init__(self, name: str, rdtype: str, why: str) -> None:
        super().__init__(f"DNS {rdtype} {name}: {why}")
        self.name = name
        self.rdtype = rdtype
        self.why = why


class Resolver(Protocol):
    """Ask one question: ``await resolver.query("example.com", "TXT")``."""

    async def query(self, name: str, rdtype: str) -> Answer: ...


@dataclass
class StaticResolver:
    """A zone in a dict, for tests and for the SPF test suite's ``zonedata``.

    ``records[(name, rdtype)]`` holds the records; a name present under any
    type exists (no data for the others), a name absent everywhere is
    NXDOMAIN, and a name in ``failing`` raises :class:`DNSTemporaryError`
    (the suite's ``TIMEOUT``) for every type; a ``(name, rdtype)`` pair in
    ``failing`` fails that type only.  A name with a ``CNAME`` record is an
    alias: questions of other types get its target's answer, as from a
    resolver (a loop, or more than 8 links, is a :class:`DNSTemporaryError`,
    as the SERVFAIL a resolver gives).  Names compare case-insensitively,
    without a trailing dot.  ``queries`` counts what was asked, so tests can
    check the lookup limits.
    """

    records: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    failing: set[str | tuple[str, str]] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.records = {(_key(n), t.upper()): tuple(v) for (n, t), v in self.records.items()}
        self.failing = {_key(n) if isinstance(n, str) else (_key(n[0]), n[1].upper())
                        for n in self.failing}
        self._names = {n for n, _ in self.records}

    def add(self, name: str, rdtype: str, *values: str) -> None:
        key = (_key(name), rdtype.upper())
        self.records[key] = self.records.get(key, ()) + values
        self._names.add(key[0])

    async def query(self, name: str, rdtype: str) -> Answer:
        name, rdtype = _key(name), rdtype.upper()
        self.queries.append((name, rdtype))
        asked = name
        for _ in range(9):
            if name in self.failing or (name, rdtype) in self.failing:
                raise DNSTemporaryError(name, rdtype, "timed out")
            if name not in self._names:
                return Answer(nxdomain=True)
            records = self.records.get((name, rdtype), ())
            alias = self.records.get((name, "CNAME"), ())
            if records or rdtype == "CNAME" or not alias:
                return Answer(records, ttl=300.0)
            name = _key(alias[0])
        raise DNSTemporaryError(asked, rdtype, "CNAME loop or chain over 8 links")


def _key(name: str) -> str:
    return name.rstrip(".").lower()


# --- the production resolver ---------------------------------------------------

MAX_TTL = 86400.0            # a day: the longest any answer is kept
MAX_NEGATIVE_TTL = 10800.0   # 3 hours, RFC 2308 §5's upper bound for negative caching
NO_SOA_TTL = 60.0            # a negative answer without an SOA (see _negative_ttl)
CACHE_ENTRIES = 10000

_NAMESERVER = re.compile(r"\[(?P<v6>[^\]]+)\](?::(?P<v6port>\d+))?\Z"
                         r"|(?P<v4>[0-9.]+)(?::(?P<v4port>\d+))?\Z")


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"192.0.2.53"``, ``"192.0.2.53:5353"``, ``"2001:db8::53"`` or
    ``"[2001:db8::53]:5353"`` as (address, port); ``ValueError`` otherwise."""
    text = text.strip()
    m = _NAMESERVER.match(text)
    address, port = (m["v6"] or m["v4"], m["v6port"] or m["v4port"]) if m else (text, None)
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise ValueError(f"nameserver {text!r} is not an IP address, IP:port or "
                         "[IPv6]:port") from None
    number = int(port) if port else 53
    if not 0 < number < 65536:
        raise ValueError(f"nameserver {text!r}: port {number} is not from 1 to 65535")
    return address, number


def _ascii_name(name: str) -> str | None:
    """``name`` without a final dot, U-labels as A-labels; None without an IDNA form."""
    name = name[:-1] if name.endswith(".") else name
    if name.isascii():
        return name
    try:
        return idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def dns_name(name: str) -> dns.name.Name | None:
    """The absolute DNS name for ``name`` (U-labels become A-labels); None if no
    DNS name can be spelled so (empty or over-long labels, no IDNA form)."""
    text = _ascii_name(name)
    if not text:
        return None
    try:
        return dns.name.from_text(text, origin=dns.name.root)
    except dns.exception.DNSException:
        return None


@dataclass(frozen=True, slots=True)
class _Cached:
    answer: Answer
    expires: float


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) of the authority section; without an
    SOA, ``NO_SOA_TTL``.

    RFC 2308 §5 says negative answers without an SOA SHOULD NOT be cached,
    so that two caching servers cannot hand one back and forth for ever.  We
    are the end of the line, never asked by another resolver, so that loop
    cannot happen here; and some resolvers (forwarders in containers and
    VMs) leave the SOA out of every NXDOMAIN.  Asking again for each message
    cost inbound mail most of its throughput there (the same sender domain's
    SPF and DMARC lookups, message after message), so such answers are kept
    for a short while."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return min(float(min(rrset.ttl, rrset[0].minimum)),  # type: ignore[attr-defined]
                           MAX_NEGATIVE_TTL)
    return NO_SOA_TTL


def servfail_text(error: dns.resolver.NoNameservers) -> str:
    """What the nameservers said, e.g. "server failure (REFUSED from 127.0.0.1)"
    (MX routing, DANE and the policy checks all report it so)."""
    reasons = []
    for item in error.kwargs.get("errors", []):
        # dnspython names a server "Do53:192.0.2.53@53"; the address is what a person needs.
        server = re.sub(r"^Do53:(.*)@\d+$", r"\1", str(item[0]))
        response = item[-1]
        if isinstance(response, dns.message.Message):
            reasons.append(f"{dns.rcode.to_text(response.rcode())} from {server}")
        else:
            reasons.append(f"{item[3]} from {server}")
    return "server failure" + (f" ({'; '.join(dict.fromkeys(reasons))})" if reasons else "")


def _text(rdtype: str, rdata: object) -> str:
    """One record as the text the checks read (see the module docstring)."""
    if rdtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    if rdtype in ("A", "AAAA"):
        return str(rdata.address)  # type: ignore[attr-defined]
    if rdtype == "MX":
        return str(rdata.exchange.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
    if rdtype in ("PTR", "CNAME"):
        return str(rdata.target.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
    return str(rdata.to_text())  # type: ignore[attr-defined]


class DNSResolver:
    """:class:`Resolver` over ``dns.asyncresolver``, with a cache and single flight;
    one per process, shared by every check (its cache works across sessions).

    ``nameservers``: ``"ip"`` or ``"ip:port"`` (``"[ipv6]:port"``), or None for
    those of ``/etc/resolv.conf``.  ``timeout``: seconds one question may take.
    ``cache_entries``: cache size (0: no cache).  ``clock`` is for tests.
    """

    def __init__(
        self,
        nameservers: list[str] | None = None,
        *,
        timeout: float = 5.0,
        cache_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if cache_entries < 0:
            raise ValueError(f"cache_entries must not be negative, not {cache_entries}")
        if nameservers is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as e:
                raise ValueError(f"no nameservers in /etc/resolv.conf ({e}); "
                                 "configure the nameservers") from None
        else:
            if not nameservers:
                raise ValueError("nameservers is empty (None: those of /etc/resolv.conf)")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(s))
                                    for s in nameservers]
        resolver.lifetime = timeout
        # One try at one server, then the next (or the same again): a lost UDP
        # answer costs a second, not the whole budget of the question.
        resolver.timeout = min(1.0, timeout)
        # EDNS(0) with the DNS flag day 2020 payload: TXT answers of a few hundred
        # octets (SPF, DKIM keys) come in one UDP answer, without a retry over TCP.
        resolver.use_edns(0, 0, 1232)
        self._resolver = resolver
        self.nameservers = [str(ns) for ns in resolver.nameservers]
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._cache_entries = cache_entries
        self._inflight: dict[tuple[str, str], asyncio.Future[_Cached]] = {}
        self._clock = clock
        self.asked = 0   # queries sent (cache misses), for tests and the bench

    async def query(self, name: str, rdtype: str) -> Answer:
        rdtype = rdtype.upper()
        if rdtype not in RDTYPES:
            raise ValueError(f"record type {rdtype!r} is not one of {sorted(RDTYPES)}")
        text = _ascii_name(name)
        if text is None:
            return Answer(nxdomain=True)
        key = (text.lower(), rdtype)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None:
            if hit.expires > now:
                self._cache.move_to_end(key)
                return _aged(hit, now)
            del self._cache[key]
        future = self._inflight.get(key)
        if future is None:
            qname = dns_name(text)
            if qname is None:
                return Answer(nxdomain=True)
            future = asyncio.ensure_future(self._ask(qname, rdtype))
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._settle, key))
        # shield: a caller that is cancelled does not cancel the query the others wait for.
        return (await asyncio.shield(future)).answer

    def _settle(self, key: tuple[str, str], future: asyncio.Future[_Cached]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if future.cancelled() or future.exception() is not None:
            return  # failures are not cached; exception() marks them retrieved
        cached = future.result()
        if self._cache_entries > 0 and cached.expires > self._clock():
            self._cache[key] = cached
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)

    async def _ask(self, qname: dns.name.Name, rdtype: str) -> _Cached:
        """Ask the nameservers; :class:`DNSTemporaryError` for anything but an answer."""
        name = qname.to_text(omit_final_dot=True)
        asked = self._clock()
        self.asked += 1
        try:
            result = await self._resolver.resolve(qname, rdtype, search=False,
                                                  raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            responses = list(e.responses().values())
            ttl = _negative_ttl(responses[-1] if responses else None)
            return _Cached(Answer(nxdomain=True, ttl=ttl), asked + ttl)
        except dns.exception.Timeout:
            raise DNSTemporaryError(name, rdtype, "timed out") from None
        except dns.resolver.NoNameservers as e:
            raise DNSTemporaryError(name, rdtype, servfail_text(e)) from None
        except dns.exception.DNSException as e:
            raise DNSTemporaryError(name, rdtype, f"error ({e})") from None
        except OSError as e:  # e.g. no route to the nameserver
            raise DNSTemporaryError(name, rdtype, f"error ({e.strerror or e})") from None
        if result.rrset is None:
            ttl = _negative_ttl(result.response)
            return _Cached(Answer(ttl=ttl), asked + ttl)
        rdatas = list(result.rrset)
        if rdtype == "MX":
            rdatas.sort(key=lambda r: int(r.preference))
        ttl = min(float(result.chaining_result.minimum_ttl), MAX_TTL)
        records = tuple(_text(rdtype, r) for r in rdatas)
        return _Cached(Answer(records, ttl=ttl), asked + ttl)


def _aged(cached: _Cached, now: float) -> Answer:
    """The cached answer with the TTL it has left."""
    left = max(0.0, cached.expires - now)
    if left == cached.answer.ttl:
        return cached.answer
    return Answer(cached.answer.records, cached.answer.nxdomain, left)
