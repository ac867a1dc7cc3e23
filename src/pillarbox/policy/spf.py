"""SPF (RFC 7208): may this host send mail for that domain?

``await check_host(ip, domain, sender, helo, resolver)`` is the function of
RFC 7208 §4: it returns an :class:`SPFResult` whose ``result`` is one of
pass, fail, softfail, neutral, none, temperror and permerror (§2.6), and it
never raises for anything the DNS holds.  :func:`check_mail_from` picks the
identity first: the MAIL FROM domain, or the HELO name when the reverse path
is null (§2.3, §2.4).  :class:`SPFCheck` turns a result into a policy
:class:`~pillarbox.policy.verdict.Verdict`.

The rules, with the RFC text they follow:

- Initial processing (§4.3): a domain that is malformed (an empty label, a
  label over 63 octets, over 253 octets, a single label, an address literal)
  gives none; a sender without a local-part is ``postmaster@domain``.
- Record selection (§4.4, §4.5): TXT records only (the SPF RR type is gone,
  §3.1); the ones that are ``v=spf1`` alone or followed by a space.  None,
  or NXDOMAIN: none.  More than one: permerror.  A DNS error: temperror.  A
  record with non-ASCII characters: permerror (§3.1, §4.6.1).
- The record is parsed whole before it is evaluated (§4.6, "MAY"), so any
  syntax error is a permerror: terms are separated by spaces only; unknown
  mechanisms are errors, unknown modifiers are ignored but must be valid;
  ``redirect`` and ``exp`` appear at most once each (§6); CIDR lengths are
  0-32 and 0-128 without leading zeros (§5.6).
- Mechanisms are evaluated left to right; the first that matches gives its
  qualifier's result (§4.6.2, §5): ``all``; ``include`` (pass matches;
  fail, softfail, neutral do not; temperror and permerror propagate; none is
  a permerror, §5.2); ``a`` and ``mx`` (A for IPv4 clients, AAAA for IPv6,
  with their CIDR lengths, §5.3, §5.4); ``ptr`` (validated reverse names,
  DNS errors are no match, §5.5); ``ip4``/``ip6`` (§5.6); ``exists`` (an A
  lookup, §5.7).  An IPv4-mapped IPv6 client (``::ffff:192.0.2.1``) is the
  IPv4 client it maps.
- No match: ``redirect`` if there is one (its target must have a record,
  else permerror, §6.1), else neutral (§4.7).
- Limits (§4.6.4): at most 10 terms that cause DNS lookups (include, a, mx,
  ptr, exists, redirect) in the whole evaluation, counted as they are
  evaluated; at most 2 *void lookups* (no records or NXDOMAIN) by those
  terms, the address lookups of MX hosts included (as pyspf counts them);
  an ``mx`` with more than 10 MX records is a permerror; of PTR
  records, only the first 10 are used.  Exceeding a limit is a permerror.
  The lookups of the ``exp`` modifier, of record selection and of the
  ``%{p}`` macro and PTR validation are not void lookups (the names they
  ask are chosen by the client or are looked up once after the result).
  ``timeout`` bounds the whole evaluation: past it, temperror.
- A DNS error (time-out, SERVFAIL) in a mechanism: temperror (§5, §2.6.6).
- Explanations (§6.2): for a fail only, from the record whose mechanism
  failed (never from an included record; a redirect uses the target's): the
  one TXT record at the expanded ``exp`` name, macro-expanded (``c``, ``r``,
  ``t`` allowed).  Any DNS error, no record, several records, non-ASCII or a
  syntax error: no explanation (``""``), and the receiver says its own.
- Macros are :mod:`pillarbox.policy.spf_macro`.

Names are asked in A-labels (a U-label domain is converted first, RFC 8616
§4); the resolver is any :class:`~pillarbox.policy.dns.Resolver`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import re
import time
from dataclasses import dataclass, field

import idna

from pillarbox.policy.dns import Answer, DNSTemporaryError, Resolver
from pillarbox.policy.memo import Memo
from pillarbox.policy.spf_macro import (
    MacroError,
    MacroString,
    domain_name,
    expand,
    parse_domain_spec,
    parse_explanation,
)
from pillarbox.policy.verdict import Action, Verdict

__all__ = ["Result", "SPFResult", "SPFCheck", "check_host", "check_mail_from", "check_helo",
           "parse_record", "Record", "Term", "SPFPermError"]

MAX_LOOKUPS = 10      # §4.6.4: terms causing DNS lookups
MAX_VOID_LOOKUPS = 2  # §4.6.4: lookups answering NXDOMAIN or no records
MAX_MX = 10           # §4.6.4: MX records of one mx mechanism (more: permerror)
MAX_PTR = 10          # §4.6.4: PTR records used (the others are ignored)
TIMEOUT = 20.0        # §4.6.4: the whole evaluation
MAX_REPLY_TEXT = 400  # of a domain's explanation in our 550 reply

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Result(enum.Enum):
    """The results of check_host() (RFC 7208 §2.6), by their RFC names."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


_QUALIFIERS = {"+": Result.PASS, "-": Result.FAIL, "~": Result.SOFTFAIL, "?": Result.NEUTRAL}


# --- the result ------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_NOT_ASCII = re.compile(r"[^\x20-\x7e]")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-@:]+\Z")


def _safe(text: str) -> str:
    """Text for a header: no control characters."""
    return _UNSAFE.sub("?", text)


def _reply_text(text: str) -> str:
    """Text for an SMTP reply: printable ASCII only (a macro-expanded name may
    hold the sender's UTF-8 local part)."""
    return _NOT_ASCII.sub("?", text)


# The comments of ``Received-SPF:`` by result (RFC 7208 §9.1's examples).
_COMMENTS = {
    Result.PASS: "domain of {who} designates {ip} as permitted sender",
    Result.FAIL: "domain of {who} does not designate {ip} as permitted sender",
    Result.SOFTFAIL: "domain of transitioning {who} does not designate {ip} as permitted sender",
    Result.NEUTRAL: "{ip} is neither permitted nor denied by domain of {who}",
    Result.NONE: "domain of {who} does not designate permitted sender hosts",
    Result.TEMPERROR: "error in processing during lookup of {who}: {reason}",
    Result.PERMERROR: "permanent error in processing domain of {who}: {reason}",
}


@dataclass(frozen=True, slots=True)
class SPFResult:
    """The outcome of one check_host(): ``result``; ``domain`` checked (A-labels);
    ``explanation`` (fail only: the domain's, or ``""``); ``mechanism``, the
    term that decided (``"default"`` when none matched); ``reason`` for errors
    and none.  ``ip``, ``sender``, ``helo`` and ``identity`` (``"mailfrom"`` or
    ``"helo"``) are what was checked, for the headers."""

    result: Result
    domain: str
    explanation: str = ""
    mechanism: str = ""
    reason: str = ""
    ip: str = ""
    sender: str = ""
    helo: str = ""
    identity: str = "mailfrom"

    def comment(self, receiver: str = "") -> str:
        """The comment of ``Received-SPF:`` (RFC 7208 §9.1), e.g. ``mx.example.org:
        domain of a@example.com designates 192.0.2.1 as permitted sender``."""
        # (Only the one text is made: this runs for every message's verdict.)
        text = _COMMENTS[self.result].format(who=self.sender or self.domain, ip=self.ip,
                                             reason=self.reason)
        if self.result is Result.NONE and self.reason:
            text += f" ({self.reason})"
        return _safe(f"{receiver}: {text}" if receiver else text)

    def received_spf(self, receiver: str) -> str:
        """The value of a ``Received-SPF:`` header field (RFC 7208 §9.1)."""
        pairs = [("client-ip", self.ip)]
        if self.identity == "mailfrom":
            pairs.append(("envelope-from", self.sender))
        pairs += [("helo", self.helo), ("receiver", receiver), ("identity", self.identity)]
        if self.mechanism:
            pairs.append(("mechanism", self.mechanism))
        if self.reason and self.result in (Result.PERMERROR, Result.TEMPERROR):
            pairs.append(("problem", self.reason))
        fields = "; ".join(f"{k}={_quoted(v)}" for k, v in pairs if v)
        return f"{self.result.value} ({self.comment(receiver)}) {fields};"

    def __str__(self) -> str:
        return f"{self.result.value} ({self.comment()})"


def _quoted(value: str) -> str:
    value = _safe(value)
    if _DOT_ATOM.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- records -----------------------------------------------------------------------


class SPFPermError(ValueError):
    """The domain's records are wrong (a syntax error, a limit exceeded): permerror."""


class _TempError(Exception):
    """The DNS did not answer: temperror, with why."""


@dataclass(frozen=True, slots=True)
class Term:
    """One mechanism of a record: qualifier result, kind (``a``, ``mx`` …), its
    domain-spec, CIDR lengths, and for ip4/ip6 the network (as an integer)."""

    qualifier: Result
    kind: str
    spec: MacroString | None
    cidr4: int
    cidr6: int
    version: int
    network: int
    text: str


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed SPF record: its mechanisms in order, ``redirect`` and ``exp``."""

    terms: tuple[Term, ...]
    redirect: MacroString | None
    exp: MacroString | None
    text: str


_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)\Z", re.S)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)\Z", re.S)
_CIDR = r"(0|[1-9][0-9]*)"
_DUAL_CIDR = re.compile(rf"(?::(?P<spec>.*?))?(?:/{_CIDR})?(?://{_CIDR})?\Z", re.S)
_IP4 = re.compile(rf":([0-9.]+)(?:/{_CIDR})?\Z")
_IP6 = re.compile(rf":([0-9A-Fa-f:.]+)(?:/{_CIDR})?\Z")


def _spec(text: str, what: str) -> MacroString:
    try:
        return parse_domain_spec(text)
    except MacroError as e:
        raise SPFPermError(f"{what}: {e}") from None


def _network(address: str, prefix: str | None, version: int, term: str) -> tuple[int, int]:
    bits = 32 if version == 4 else 128
    length = int(prefix) if prefix is not None else bits
    if length > bits:
        raise SPFPermError(f"{term}: a CIDR length over {bits}")
    try:
        ip = ipaddress.IPv4Address(address) if version == 4 else ipaddress.IPv6Address(address)
    except ValueError:
        raise SPFPermError(f"{term}: {address!r} is not an IPv{version} address") from None
    return length, int(ip) >> (bits - length)


def _term(text: str) -> Term:
    m = _MECHANISM.match(text)
    if m is None:
        raise SPFPermError(f"{text!r} is neither a mechanism nor a modifier")
    qualifier = _QUALIFIERS[m[1] or "+"]
    kind, rest = m[2].lower(), m[3]
    if kind == "all":
        if rest:
            raise SPFPermError(f"{text!r}: all takes no argument")
        return Term(qualifier, kind, None, 32, 128, 0, 0, text)
    if kind in ("include", "exists"):
        if not rest.startswith(":") or len(rest) == 1:
            raise SPFPermError(f"{text!r}: {kind} needs ':' and a domain")
        return Term(qualifier, kind, _spec(rest[1:], text), 32, 128, 0, 0, text)
    if kind == "ptr":
        if rest and not rest.startswith(":"):
            raise SPFPermError(f"{text!r}: ptr takes only ':' and a domain")
        spec = _spec(rest[1:], text) if rest else None
        return Term(qualifier, kind, spec, 32, 128, 0, 0, text)
    if kind in ("a", "mx"):
        d = _DUAL_CIDR.match(rest)
        if d is None or (d["spec"] is None and rest[:1] not in ("", "/")):
            raise SPFPermError(f"{text!r}: not {kind}[:domain][/cidr][//cidr6]")
        spec = _spec(d["spec"], text) if d["spec"] is not None else None
        cidr4, cidr6 = int(d[2] or 32), int(d[3] or 128)
        if cidr4 > 32 or cidr6 > 128:
            raise SPFPermError(f"{text!r}: a CIDR length out of range")
        return Term(qualifier, kind, spec, cidr4, cidr6, 0, 0, text)
    if kind in ("ip4", "ip6"):
        version = 4 if kind == "ip4" else 6
        n = (_IP4 if version == 4 else _IP6).match(rest)
        if n is None:
            raise SPFPermError(f"{text!r}: not {kind}:network[/cidr]")
        length, network = _network(n[1], n[2], version, text)
        return Term(qualifier, kind, None, length if version == 4 else 32,
                    length if version == 6 else 128, version, network, text)
    raise SPFPermError(f"unknown mechanism {text!r}")


@functools.lru_cache(maxsize=4096)
def parse_record(text: str) -> Record:
    """Parse an SPF record (``v=spf1 …``); :class:`SPFPermError` for any syntax
    error (§4.6, §12)."""
    if not text.isascii():
        raise SPFPermError("the record has non-ASCII characters")
    if text[:6].lower() != "v=spf1" or text[6:7] not in ("", " "):
        raise SPFPermError("the record does not start with 'v=spf1 '")
    terms: list[Term] = []
    redirect = exp = None
    for word in text[6:].split(" "):
        if not word:
            continue
        m = _MODIFIER.match(word)
        if m is None:
            terms.append(_term(word))
            continue
        name, value = m[1].lower(), m[2]
        if name in ("redirect", "exp"):
            if (redirect if name == "redirect" else exp) is not None:
                raise SPFPermError(f"{name}= appears more than once")
            spec = _spec(value, word)
            if name == "redirect":
                redirect = spec
            else:
                exp = spec
        else:
            try:
                parse_explanation(value)  # unknown-modifier = name "=" macro-string
            except MacroError as e:
                raise SPFPermError(f"modifier {word!r}: {e}") from None
    return Record(tuple(terms), redirect, exp, text)


def _is_spf(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and text[6:7] in ("", " ")


# --- evaluation ----------------------------------------------------------------------


def _client(ip: str | IPAddress) -> IPAddress:
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _ascii_domain(domain: str) -> tuple[str, str]:
    """(A-label name, "") for a well-formed domain, or ("", why not) (§4.3)."""
    name = domain[:-1] if domain.endswith(".") else domain
    if not name:
        return "", "no domain"
    if name.startswith("["):
        return "", f"{name} is an address literal, not a domain"
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            return "", f"{domain!r} is not a valid internationalized domain name ({e})"
    labels = name.split(".")
    if len(labels) < 2:
        return "", f"{name!r} is not a fully qualified domain name"
    if any(not label for label in labels):
        return "", f"{name!r} has an empty label"
    if any(len(label) > 63 for label in labels):
        return "", f"{name!r} has a label longer than 63 characters"
    if len(name) > 253:
        return "", f"{name!r} is longer than 253 characters"
    if labels[-1].isdigit():
        return "", f"{name!r} is an IP address, not a domain"
    return name, ""


def _askable(name: str) -> bool:
    """Whether ``name`` can be a DNS name at all (else it cannot exist: no query)."""
    if not name or len(name) > 253:
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


class _Evaluation:
    """The state of one check_host() call: the macro values, the lookup and
    void-lookup counts, and the reverse names of the client."""

    def __init__(self, ip: IPAddress, sender: str, helo: str, resolver: Resolver,
                 receiver: str, void_limit: int) -> None:
        self.ip = ip
        self.version = ip.version
        self.bits = 32 if ip.version == 4 else 128
        self.ipint = int(ip)
        self.address_type = "A" if ip.version == 4 else "AAAA"
        self.resolver = resolver
        self.void_limit = void_limit
        self.lookups = 0
        self.voids = 0
        local, _, domain = sender.rpartition("@")
        if ip.version == 4:
            dotted = str(ip)
        else:
            dotted = ".".join(ip.exploded.replace(":", "").upper())
        self.values = {
            "s": sender, "l": local, "o": domain, "i": dotted,
            "v": "in-addr" if ip.version == 4 else "ip6", "h": helo,
            "c": str(ip), "r": receiver, "t": str(int(time.time())),
        }
        self._ptr_names: list[str] | None = None
        self._validated: dict[str, bool] = {}
        self._p: dict[str, str] = {}

    # ------------------------------------------------------------- DNS

    async def query(self, name: str, rdtype: str, *, void: bool = True) -> Answer:
        if not _askable(name):
            return Answer(nxdomain=True)
        try:
            answer = await self.resolver.query(name, rdtype)
        except DNSTemporaryError as e:
            raise _TempError(str(e)) from None
        if void and answer.void:
            self.voids += 1
            if self.voids > self.void_limit:
                raise SPFPermError(f"more than {self.void_limit} void DNS lookups "
                                   f"(the last: {rdtype} {name}; RFC 7208 section 4.6.4)")
        return answer

    def count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise SPFPermError(f"more than {MAX_LOOKUPS} DNS lookups "
                               f"(at {term}; RFC 7208 section 4.6.4)")

    async def addresses(self, name: str, *, void: bool = True) -> list[int]:
        """The client's family of addresses of ``name``, as integers."""
        answer = await self.query(name, self.address_type, void=void)
        out = []
        for text in answer.records:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address.version == self.version:
                out.append(int(address))
        return out

    def within(self, addresses: list[int], term: Term) -> bool:
        length = term.cidr4 if self.version == 4 else term.cidr6
        shift = self.bits - length
        mine = self.ipint >> shift
        return any(a >> shift == mine for a in addresses)

    # ------------------------------------------------------ reverse names

    async def ptr_names(self, *, void: bool) -> list[str]:
        """The first 10 PTR names of the client (§4.6.4); none on DNS errors (§5.5)."""
        if self._ptr_names is None:
            try:
                answer = await self.query(self.ip.reverse_pointer, "PTR", void=void)
            except _TempError:
                return []
            self._ptr_names = [n.rstrip(".") for n in answer.records[:MAX_PTR]]
        return self._ptr_names

    async def validated(self, name: str) -> bool:
        """Whether ``name`` has the client's address (forward-confirmed, §5.5)."""
        key = name.lower()
        if key not in self._validated:
            try:
                found = self.ipint in await self.addresses(name, void=False)
            except _TempError:
                found = False
            self._validated[key] = found
        return self._validated[key]

    async def p_macro(self, domain: str) -> str:
        """The ``%{p}`` value (§7.3): a validated reverse name, preferring the
        domain itself, then its subdomains; ``unknown`` if there is none."""
        if domain not in self._p:
            names = await self.ptr_names(void=False)
            target = domain.lower()
            ranked = ([n for n in names if n.lower() == target]
                      + [n for n in names if n.lower().endswith("." + target)]
                      + [n for n in names if n.lower() != target
                         and not n.lower().endswith("." + target)])
            self._p[domain] = "unknown"
            for name in ranked:
                if await self.validated(name):
                    self._p[domain] = name
                    break
        return self._p[domain]

    # ------------------------------------------------------------ macros

    async def expand(self, spec: MacroString, domain: str) -> str:
        literal = spec.literal
        if literal is not None:
            return literal
        values = dict(self.values, d=domain)
        if "p" in spec.letters:
            values["p"] = await self.p_macro(domain)
        return expand(spec, values)

    async def target(self, spec: MacroString | None, domain: str) -> str:
        return domain if spec is None else domain_name(await self.expand(spec, domain))

    # ------------------------------------------------------------ records

    async def record(self, domain: str) -> Record | None:
        answer = await self.query(domain, "TXT", void=False)
        found = [text for text in answer.records if _is_spf(text)]
        if not found:
            return None
        if len(found) > 1:
            raise SPFPermError(f"{domain} has {len(found)} SPF records (RFC 7208 section 4.5)")
        try:
            return parse_record(found[0])
        except SPFPermError as e:
            raise SPFPermError(f"{domain}: {e}") from None

    async def evaluate(self, domain: str, explain: bool) -> tuple[Result, str, str]:
        """check_host() for one domain: (result, deciding term, explanation)."""
        record = await self.record(domain)
        if record is None:
            return Result.NONE, "", ""
        for term in record.terms:
            if await self.matches(term, domain):
                explanation = ""
                if term.qualifier is Result.FAIL and explain and record.exp is not None:
                    explanation = await self.explanation(record.exp, domain)
                return term.qualifier, term.text, explanation
        if record.redirect is not None:
            self.count(f"redirect={record.redirect}")
            target = await self.target(record.redirect, domain)
            result, term_text, explanation = await self.evaluate(target, explain)
            if result is Result.NONE:
                raise SPFPermError(f"redirect={target}: no SPF record there (RFC 7208 section 6.1)")
            return result, term_text, explanation
        return Result.NEUTRAL, "default", ""

    async def matches(self, term: Term, domain: str) -> bool:
        kind = term.kind
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            if term.version != self.version:
                return False
            length = term.cidr4 if self.version == 4 else term.cidr6
            return self.ipint >> (self.bits - length) == term.network
        self.count(term.text)
        target = await self.target(term.spec, domain)
        if kind == "include":
            result, _, _ = await self.evaluate(target, explain=False)
            if result is Result.NONE:
                raise SPFPermError(f"include:{target}: no SPF record there (RFC 7208 section 5.2)")
            return result is Result.PASS
        if kind == "a":
            return self.within(await self.addresses(target), term)
        if kind == "mx":
            answer = await self.query(target, "MX")
            if len(answer.records) > MAX_MX:
                raise SPFPermError(f"{term.text}: {target} has {len(answer.records)} MX records, "
                                   f"more than {MAX_MX} (RFC 7208 section 4.6.4)")
            for host in answer.records:
                if host not in ("", ".") and self.within(await self.addresses(host), term):
                    return True
            return False
        if kind == "ptr":
            wanted = target.lower()
            for name in await self.ptr_names(void=True):
                low = name.lower()
                if (low == wanted or low.endswith("." + wanted)) and await self.validated(name):
                    return True
            return False
        if kind == "exists":
            return bool((await self.query(target, "A")).records)
        raise AssertionError(f"unparsed mechanism {kind}")  # pragma: no cover

    async def explanation(self, spec: MacroString, domain: str) -> str:
        """The exp= text (§6.2), or "" when there is none to be had."""
        try:
            name = await self.target(spec, domain)
            if not _askable(name):
                return ""
            answer = await self.resolver.query(name, "TXT")
        except (DNSTemporaryError, _TempError, SPFPermError):
            return ""
        if len(answer.records) != 1 or not answer.records[0].isascii():
            return ""
        try:
            text = parse_explanation(answer.records[0])
        except MacroError:
            return ""
        return _safe(await self.expand(text, domain))


async def check_host(
    ip: str | IPAddress,
    domain: str,
    sender: str,
    helo: str,
    resolver: Resolver,
    *,
    receiver: str = "unknown",
    identity: str = "mailfrom",
    void_limit: int = MAX_VOID_LOOKUPS,
    timeout: float = TIMEOUT,
) -> SPFResult:
    """RFC 7208 §4: whether ``ip`` may send mail for ``domain``.  ``sender`` is the
    identity's ``local@domain`` (a missing local-part is ``postmaster``), ``helo``
    the client's HELO name, ``receiver`` our host name (the ``%{r}`` macro).
    ``ValueError`` if ``ip`` is not an IP address (the caller's fault)."""
    address = _client(ip)
    if identity not in ("mailfrom", "helo"):
        raise ValueError(f'identity must be "mailfrom" or "helo", not {identity!r}')
    if timeout <= 0 or void_limit < 0:
        raise ValueError("timeout must be positive and void_limit not negative")
    local, at, sender_domain = sender.rpartition("@")
    if not at:
        sender_domain = sender or domain
    sender = f"{local or 'postmaster'}@{sender_domain}"
    shown = dict(ip=str(address), sender=sender, helo=helo, identity=identity)
    name, why = _ascii_domain(domain)
    if not name:
        return SPFResult(Result.NONE, domain, reason=why, **shown)
    evaluation = _Evaluation(address, sender, helo, resolver, receiver, void_limit)
    try:
        async with asyncio.timeout(timeout):
            result, term, explanation = await evaluation.evaluate(name, explain=True)
    except SPFPermError as e:
        return SPFResult(Result.PERMERROR, name, reason=str(e), **shown)
    except _TempError as e:
        return SPFResult(Result.TEMPERROR, name, reason=str(e), **shown)
    except TimeoutError:
        return SPFResult(Result.TEMPERROR, name, reason=f"no result within {timeout:g}s",
                         **shown)
    reason = "no SPF record" if result is Result.NONE else ""
    return SPFResult(result, name, explanation, term, reason, **shown)


async def check_mail_from(ip: str | IPAddress, mail_from: str, helo: str,
                          resolver: Resolver, *, receiver: str = "unknown") -> SPFResult:
    """The MAIL FROM identity (RFC 7208 §2.4), or the HELO identity when the
    reverse path is null (§2.4: ``postmaster@`` the HELO name)."""
    if mail_from in ("", "<>"):
        return await check_helo(ip, helo, resolver, receiver=receiver)
    domain = mail_from.rpartition("@")[2]
    return await check_host(ip, domain, mail_from, helo, resolver, receiver=receiver)


async def check_helo(ip: str | IPAddress, helo: str, resolver: Resolver, *,
                     receiver: str = "unknown") -> SPFResult:
    """The HELO identity (RFC 7208 §2.3): check_host() of the HELO name."""
    return await check_host(ip, helo, f"postmaster@{helo}", helo, resolver,
                            receiver=receiver, identity="helo")


# --- the policy check ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SPFCheck:
    """SPF in the policy chain (RFC 7208 §8): fail is rejected with ``550 5.7.23``
    (RFC 7372) only if ``reject_fail``, else tagged; temperror defers with
    ``451 4.7.24``; permerror is tagged, or rejected with ``550 5.7.24`` if
    ``permerror`` is REJECT; pass and none are accepted; neutral and softfail
    tagged.  The reason of every verdict is the ``Received-SPF:`` comment."""

    resolver: Resolver
    receiver: str = "unknown"
    reject_fail: bool = False
    permerror: Action = Action.TAG
    name: str = "spf"
    #: results by (ip, sender, HELO), temperror never (``policy/memo.py``)
    memo: Memo[SPFResult] = field(default_factory=Memo, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.permerror not in (Action.TAG, Action.REJECT, Action.ACCEPT):
            raise ValueError(f"spf permerror action must be tag, reject or accept, "
                             f"not {self.permerror.value}")

    def remembered(self, ip: str | IPAddress, mail_from: str, helo: str) -> SPFResult | None:
        """The result :meth:`evaluate` would give from its memo now, if it holds one."""
        return self.memo.get((str(ip), mail_from, helo))

    async def evaluate(self, ip: str | IPAddress, mail_from: str, helo: str) -> SPFResult:
        key = (str(ip), mail_from, helo)
        found = self.memo.get(key)
        if found is None:
            found = await check_mail_from(ip, mail_from, helo, self.resolver,
                                          receiver=self.receiver)
            if found.result is not Result.TEMPERROR:
                self.memo.put(key, found)
        return found

    async def __call__(self, ip: str | IPAddress, mail_from: str, helo: str) -> Verdict:
        return self.verdict(await self.evaluate(ip, mail_from, helo))

    def verdict(self, spf: SPFResult) -> Verdict:
        comment = spf.comment(self.receiver)
        if spf.result is Result.FAIL and self.reject_fail:
            why = spf.explanation or f"{spf.domain} does not allow {spf.ip} to send its mail"
            if len(why) > MAX_REPLY_TEXT:  # a reply line: 512 octets (RFC 5321 §4.5.3.1.5)
                why = why[:MAX_REPLY_TEXT - 3] + "..."
            return Verdict.reject(self.name, "5.7.23",
                                  f"SPF validation failed: {_reply_text(why)}")
        if spf.result is Result.TEMPERROR:
            return Verdict.defer(self.name, "4.7.24",
                                 f"SPF validation error: DNS of {spf.domain} did not answer, "
                                 "try again later")
        if spf.result is Result.PERMERROR:
            if self.permerror is Action.REJECT:
                return Verdict.reject(self.name, "5.7.24",
                                      f"SPF validation error: {_reply_text(spf.reason)}")
            return Verdict(self.name, self.permerror, None, comment)
        if spf.result in (Result.PASS, Result.NONE):
            return Verdict.accept(self.name, comment)
        return Verdict(self.name, Action.TAG, None, comment)
