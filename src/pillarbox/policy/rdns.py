"""Who the client says it is, and who the DNS says it is: reverse names and HELO.

Two small checks of the connecting client, both asked of a
:class:`~pillarbox.policy.dns.Resolver`:

**Forward-confirmed reverse DNS** (:func:`verified_reverse_name`; the
``iprev`` method of RFC 8601 §2.7.3, after RFC 1912 §2.1 and RFC 8601 §3):
the PTR names of the client's address (at most the first
:data:`MAX_PTR_NAMES`, as SPF's ``ptr`` does, RFC 7208 §4.6.4) are each
looked up forward (A for an IPv4 client, AAAA for IPv6; an IPv4-mapped IPv6
address is the IPv4 address it maps), and the first name, in the order the
PTR answer gave, whose addresses include the client's is the *verified
name*.  Anyone can write any name into the PTR records of addresses they
hold; only the owner of the name's zone can make it point back, so only a
confirmed name may go into our ``Received:`` line (RFC 5321 §4.4:
``TCP-info = Domain FWS address-literal``, the Domain being the name found
by reverse lookup).  The results, by RFC 8601 §2.7.3's names:

- ``pass``: a name confirmed;
- ``fail``: PTR names, but none of them resolves back to the address (or
  none is a host name at all);
- ``permerror``: no PTR record (NXDOMAIN or no data): RFC 8601 §2.7.3 calls
  "no PTR data" permerror, since asking again will not help;
- ``temperror``: the DNS did not answer the PTR question, or did not answer
  a forward question and no other name confirmed, or the whole took longer
  than ``timeout``.

**HELO checks** (:class:`HeloCheck`): what the EHLO/HELO argument says
(RFC 5321 §4.1.1.1: a fully qualified domain name, or an address literal
when the client has none).  Each finding is a named :class:`HeloOutcome`;
the check's :class:`~pillarbox.policy.verdict.Verdict` tags every problem by
default, and rejects (``550 5.7.1``) the outcomes the operator lists.  RFC
5321 §4.1.4 says a server "MUST NOT refuse to accept a message" because the
EHLO name does not match the client's address, so rejecting is an explicit
choice; it is sound for a client that claims to be *us* (our host name, or
an address literal of ours), which is forgery, not misconfiguration.  The
check costs at most two lookups (A, then AAAA only if the name has no A
records), and none for a name whose syntax already decides.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from pillarbox.policy.authres import MethodResult
from pillarbox.policy.dns import DNSTemporaryError, Resolver
from pillarbox.policy.memo import Memo
from pillarbox.policy.verdict import Action, Verdict

__all__ = ["HeloCheck", "HeloOutcome", "HeloResult", "IPRevResult", "ReverseDNS",
           "ReverseName", "address_literal", "tcp_info", "verified_reverse_name"]

MAX_PTR_NAMES = 10    # PTR names looked at (RFC 7208 §4.6.4 uses the same bound)
TIMEOUT = 10.0        # seconds the whole reverse lookup may take

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 5321 §4.1.2 Domain: sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]
_SUB_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")


def _client(ip: str | IPAddress) -> IPAddress:
    """``ip`` as an address; an IPv4-mapped IPv6 address is its IPv4 address.
    ``ValueError`` (the caller's fault) for text that is no address."""
    address = ipaddress.ip_address(ip.strip()) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_name(name: str) -> str | None:
    """``name`` lower-cased without its final dot if it is a host name (RFC 5321
    §4.1.2 Domain, A-labels; at most 253 octets, labels of at most 63), else None."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or not name.isascii():
        return None
    labels = name.split(".")
    if not all(len(label) <= 63 and _SUB_DOMAIN.match(label) for label in labels):
        return None
    return name.lower()


# --- forward-confirmed reverse DNS ---------------------------------------------


class IPRevResult(enum.Enum):
    """The ``iprev`` results of RFC 8601 §2.7.3."""

    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class ReverseName:
    """What the reverse lookup of ``ip`` found: the verified ``name`` (pass only),
    the PTR ``names`` that were looked at, and ``reason`` in words."""

    ip: str
    result: IPRevResult
    name: str | None = None
    names: tuple[str, ...] = ()
    reason: str = ""

    @property
    def verified(self) -> bool:
        return self.result is IPRevResult.PASS

    def tcp_info(self) -> str:
        """The ``Received:`` TCP-info (RFC 5321 §4.4): ``mail.example.com [192.0.2.1]``
        when verified, the address literal alone otherwise."""
        return tcp_info(self.ip, self)

    def method_result(self) -> MethodResult:
        """The ``Authentication-Results:`` resinfo (RFC 8601 §2.7.3, §3):
        ``iprev=pass (mail.example.com) policy.iprev=192.0.2.1``."""
        comment = self.name if self.name else (self.reason or None)
        return MethodResult("iprev", self.result.value, comment=comment,
                            properties=(("policy.iprev", self.ip),))

    def __str__(self) -> str:
        return f"iprev={self.result.value} {self.ip}" + (f" ({self.reason})" if self.reason
                                                         else "")


def tcp_info(ip: str, reverse: ReverseName | None) -> str:
    """RFC 5321 §4.4 TCP-info for the client at ``ip``: the verified name and the
    address literal, or the address literal alone (not verified, or not known yet)."""
    literal = address_literal(ip)
    if reverse is not None and reverse.verified and reverse.name:
        return f"{reverse.name} {literal}"
    return literal


@functools.lru_cache(maxsize=1024)
def address_literal(ip: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3); remembered, as
    every message's Received: line asks for its client's."""
    try:
        address = _client(ip)
    except ValueError:
        return f"[{ip}]"
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


async def verified_reverse_name(ip: str | IPAddress, resolver: Resolver, *,
                                timeout: float = TIMEOUT) -> ReverseName:
    """Forward-confirmed reverse DNS of ``ip`` (module docstring); never raises for
    anything the DNS answers; ``ValueError`` if ``ip`` is not an IP address."""
    address = _client(ip)
    try:
        async with asyncio.timeout(timeout):
            return await _reverse(address, resolver)
    except TimeoutError:
        return ReverseName(str(address), IPRevResult.TEMPERROR,
                           reason=f"DNS took longer than {timeout:g} s")


async def _reverse(address: IPAddress, resolver: Resolver) -> ReverseName:
    ip = str(address)
    try:
        answer = await resolver.query(address.reverse_pointer, "PTR")
    except DNSTemporaryError as e:
        return ReverseName(ip, IPRevResult.TEMPERROR, reason=f"PTR lookup: {e.why}")
    if not answer.records:
        return ReverseName(ip, IPRevResult.PERMERROR, reason="no PTR record")
    names = tuple(dict.fromkeys(n.rstrip(".").lower() for n in answer.records))
    names = names[:MAX_PTR_NAMES]
    hosts = [n for n in names if _host_name(n)]
    if not hosts:
        return ReverseName(ip, IPRevResult.FAIL, names=names,
                           reason="no PTR name is a host name")
    rdtype = "AAAA" if address.version == 6 else "A"
    outcomes = await asyncio.gather(*(_confirms(resolver, n, rdtype, address) for n in hosts))
    for name, outcome in zip(hosts, outcomes):
        if outcome is True:
            return ReverseName(ip, IPRevResult.PASS, name, names)
    failures = [o for o in outcomes if isinstance(o, DNSTemporaryError)]
    if failures:
        return ReverseName(ip, IPRevResult.TEMPERROR, names=names,
                           reason=f"{rdtype} lookup of {failures[0].name}: {failures[0].why}")
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return ReverseName(ip, IPRevResult.FAIL, names=names,
                       reason=f"{shown} does not resolve back to {ip}")


async def _confirms(resolver: Resolver, name: str, rdtype: str,
                    address: IPAddress) -> bool | DNSTemporaryError:
    try:
        answer = await resolver.query(name, rdtype)
    except DNSTemporaryError as e:
        return e
    for record in answer.records:
        try:
            if _client(record) == address:
                return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True, slots=True)
class ReverseDNS:
    """The reverse lookup as the session uses it: begun when the client connects
    (:meth:`start`), read when the ``Received:`` line is written (:meth:`settled`),
    so the lookups run while the client says EHLO, MAIL and RCPT."""

    resolver: Resolver
    timeout: float = TIMEOUT
    #: names by address, temperror never (``policy/memo.py``)
    memo: Memo[ReverseName] = field(default_factory=Memo, repr=False, compare=False)

    async def lookup(self, ip: str) -> ReverseName:
        found = self.memo.get(ip)
        if found is None:
            found = await verified_reverse_name(ip, self.resolver, timeout=self.timeout)
            if found.result is not IPRevResult.TEMPERROR:
                self.memo.put(ip, found)
        return found

    def start(self, ip: str) -> asyncio.Future[ReverseName] | None:
        """Begin the lookup; None for an address that is not an IP address (a Unix
        socket, a test transport), which then has no reverse name.  A name the
        memo holds is a future already done: no task per connection for it."""
        found = self.memo.get(ip)
        if found is not None:
            done: asyncio.Future[ReverseName] = asyncio.get_running_loop().create_future()
            done.set_result(found)
            return done
        try:
            _client(ip)
        except ValueError:
            return None
        return asyncio.ensure_future(self.lookup(ip))

    @staticmethod
    def settled(task: asyncio.Future[ReverseName] | None) -> ReverseName | None:
        """The task's result if it has one now, else None (not done yet, failed by
        a bug, or cancelled): the ``Received:`` line then carries the address only."""
        if task is None or not task.done() or task.cancelled():
            return None
        if task.exception() is not None:
            return None
        return task.result()


# --- HELO checks -----------------------------------------------------------------


class HeloOutcome(enum.Enum):
    """What the HELO/EHLO name turned out to be; the values are the names for
    configuration and logs."""

    OK = "ok"                               # a name with addresses, or our client's literal
    SYNTAX = "syntax"                       # neither a domain nor an address literal
    NOT_FQDN = "not-fqdn"                   # one label ("localhost", "desktop-pc")
    OURS = "ours"                           # our host name or one of our address literals
    LITERAL_MISMATCH = "literal-mismatch"   # an address literal that is not the client's
    NXDOMAIN = "nxdomain"                   # the name does not exist
    NO_ADDRESS = "no-address"               # the name exists without A or AAAA records
    TEMPERROR = "temperror"                 # the DNS did not answer

    @classmethod
    def parse(cls, words: str | Iterable[str]) -> frozenset[HeloOutcome]:
        """Outcomes by name (``"ours literal-mismatch"`` or a list); ``ValueError``
        naming the unknown word and the known ones.  ``ok`` and ``temperror`` may
        not be rejected: the first is no problem, the second not the client's."""
        items = words.replace(",", " ").split() if isinstance(words, str) else list(words)
        out: set[HeloOutcome] = set()
        allowed = [o.value for o in cls if o not in (cls.OK, cls.TEMPERROR)]
        for word in items:
            try:
                outcome = cls(word.strip().lower())
            except ValueError:
                raise ValueError(f"unknown HELO outcome {word!r}; one of "
                                 f"{', '.join(allowed)}") from None
            if outcome in (cls.OK, cls.TEMPERROR):
                raise ValueError(f"HELO outcome {outcome.value!r} cannot be rejected; "
                                 f"one of {', '.join(allowed)}")
            out.add(outcome)
        return frozenset(out)


_REASONS = {
    HeloOutcome.OK: "HELO {helo} is fine",
    HeloOutcome.SYNTAX: "HELO {helo} is neither a domain name nor an address literal",
    HeloOutcome.NOT_FQDN: "HELO {helo} is not a fully qualified domain name",
    HeloOutcome.OURS: "HELO {helo} is this server's own name, but you are not this server",
    HeloOutcome.LITERAL_MISMATCH: "HELO {helo} is not the address you connect from ({ip})",
    HeloOutcome.NXDOMAIN: "HELO {helo} does not exist in the DNS",
    HeloOutcome.NO_ADDRESS: "HELO {helo} has no address in the DNS",
    HeloOutcome.TEMPERROR: "HELO {helo} could not be looked up now",
}


@dataclass(frozen=True, slots=True)
class HeloResult:
    """One HELO check: the ``outcome``, the name as given, and ``reason`` in words."""

    outcome: HeloOutcome
    helo: str
    reason: str
    lookups: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is HeloOutcome.OK

    def __str__(self) -> str:
        return f"helo={self.outcome.value} ({self.reason})"


def _shown(helo: str) -> str:
    """The client's text, safe in a reply and a log line (printable ASCII, bounded)."""
    text = "".join(c if " " < c < "\x7f" else "?" for c in helo)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class HeloCheck:
    """The HELO/EHLO check in the policy chain (module docstring).

    ``hostname``: ``server.hostname``; ``our_addresses``: the server's own
    addresses (those the client may have reached, and public ones), whose
    literals a client may not claim; ``reject``: the outcomes refused with
    ``550 5.7.1`` (:meth:`HeloOutcome.parse`); the others are tagged.
    """

    resolver: Resolver
    hostname: str
    our_addresses: Collection[str] = ()
    reject: frozenset[HeloOutcome] = frozenset()
    name: str = "helo"
    _ours: frozenset[IPAddress] = field(init=False, repr=False, default=frozenset())
    #: outcomes by (ip, HELO, our addresses), temperror never (``policy/memo.py``)
    memo: Memo[HeloResult] = field(default_factory=Memo, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = self.reject & {HeloOutcome.OK, HeloOutcome.TEMPERROR}
        if bad:
            raise ValueError(f"HELO outcomes {sorted(o.value for o in bad)} cannot be rejected")
        ours = set()
        for a in self.our_addresses:
            try:
                ours.add(_client(a))
            except ValueError:
                raise ValueError(f"our address {a!r} is not an IP address") from None
        object.__setattr__(self, "_ours", frozenset(ours))  # frozen: set once, here

    def remembered(self, ip: str, helo: str, *,
                   local_addresses: tuple[str, ...] = ()) -> HeloResult | None:
        """The outcome :meth:`evaluate` would give from its memo now, if it holds one."""
        return self.memo.get((ip, helo, local_addresses))

    async def evaluate(self, ip: str, helo: str, *,
                       local_addresses: Iterable[str] = ()) -> HeloResult:
        """What ``helo`` (from the client at ``ip``) is; never raises for the
        client's text or the DNS.  ``local_addresses``: the address(es) of ours
        the client reached, ours for this connection as ``our_addresses`` are."""
        local_addresses = tuple(local_addresses)
        key = (ip, helo, local_addresses)
        found = self.memo.get(key)
        if found is None:
            found = await self._evaluate(ip, helo, local_addresses)
            if found.outcome is not HeloOutcome.TEMPERROR:
                self.memo.put(key, found)
        return found

    async def _evaluate(self, ip: str, helo: str, local_addresses: Iterable[str]) -> HeloResult:
        try:
            client: IPAddress | None = _client(ip)
        except ValueError:
            client = None
        ours = set(self._ours)
        for a in local_addresses:
            try:
                ours.add(_client(a))
            except ValueError:
                continue

        def result(outcome: HeloOutcome, lookups: int = 0, detail: str = "") -> HeloResult:
            reason = _REASONS[outcome].format(helo=_shown(helo), ip=ip)
            return HeloResult(outcome, helo, reason + (f" ({detail})" if detail else ""),
                              lookups)

        text = helo.strip()
        if text.startswith("["):
            literal = _literal(text)
            if literal is None:
                return result(HeloOutcome.SYNTAX)
            if literal in ours and literal != client:
                return result(HeloOutcome.OURS)
            if client is not None and literal != client:
                return result(HeloOutcome.LITERAL_MISMATCH)
            return result(HeloOutcome.OK)
        name = _host_name(text)
        if name is None:
            return result(HeloOutcome.SYNTAX)
        if name.rpartition(".")[2].isdigit():   # no top-level domain is all digits
            return result(HeloOutcome.SYNTAX, detail="an address is written [192.0.2.1]")
        if "." not in name:
            return result(HeloOutcome.NOT_FQDN)
        if name == self.hostname.lower().rstrip(".") and client not in ours:
            return result(HeloOutcome.OURS)
        lookups = 0
        nxdomain = True
        for rdtype in ("A", "AAAA"):
            lookups += 1
            try:
                answer = await self.resolver.query(name, rdtype)
            except DNSTemporaryError as e:
                return result(HeloOutcome.TEMPERROR, lookups, e.why)
            if answer.records:
                return result(HeloOutcome.OK, lookups)
            if answer.nxdomain:
                break     # no such name: no AAAA either
            nxdomain = False
        return result(HeloOutcome.NXDOMAIN if nxdomain else HeloOutcome.NO_ADDRESS, lookups)

    def verdict(self, result: HeloResult) -> Verdict:
        if result.outcome is HeloOutcome.OK:
            return Verdict.accept(self.name, result.reason)
        if result.outcome in self.reject:
            return Verdict.reject(self.name, "5.7.1", result.reason)
        return Verdict(self.name, Action.TAG, None, result.reason)

    async def __call__(self, ip: str, helo: str, *,
                       local_addresses: Iterable[str] = ()) -> Verdict:
        return self.verdict(await self.evaluate(ip, helo, local_addresses=local_addresses))


def _literal(text: str) -> IPAddress | None:
    """The address of an RFC 5321 §4.1.3 address literal, None if it is not one
    (a General-address-literal names no address we can compare, so it is not
    accepted either)."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return _client(ipaddress.IPv6Address(inner[5:]))
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None
