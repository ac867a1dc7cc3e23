"""DMARC: does the domain the reader sees in From: stand behind this message?

RFC 7489, with the changes of DMARCbis (draft-ietf-dmarc-dmarcbis, since
published as RFC 9989) where they differ.  A message passes DMARC when SPF or
DKIM passed for a domain *aligned* with the From: domain (RFC 7489 §3.1): the
same domain (strict), or one with the same Organizational Domain (relaxed).
When it fails, the policy the domain publishes at ``_dmarc.<domain>`` says
what the owner asks for: none, quarantine or reject (§6.3), for a sample of
``pct`` per cent of the failing mail (§6.6.4).

The parts:

- :class:`DMARCRecord`: the record's tag list (RFC 7489 §6.3, §6.4; DMARCbis
  §4.7 adds ``np``, ``psd``, ``t``).  ``v=DMARC1`` must come first; ``p``
  may come anywhere after it (DMARCbis drops RFC 7489's "v, then p" order);
  unknown tags are ignored; a bad value of an optional tag falls back to its
  default and is noted in :attr:`DMARCRecord.warnings`.  A bad ``p`` or
  ``sp`` (or, in DMARCbis mode, ``np``) makes the record unusable unless it
  has a usable ``rua``, in which case it acts as ``p=none`` (RFC 7489
  §6.6.3 step 6, DMARCbis §4.10.1); a missing ``p`` is the same in RFC 7489
  mode and simply ``p=none`` in DMARCbis mode (§4.7).  Unusable means
  ``permerror``.
- :func:`author_domain`: the From: domain (DMARCbis, "Extract Author
  Domain"): exactly one domain, in A-labels.  A single From: field naming
  several domains is exempt from DMARC (DMARCbis: MUST), and so is a message
  with no usable From: (outside DMARC's scope; RFC 5322 calls it invalid);
  the result is then ``none`` with :class:`AuthorProblem` saying why.
- Policy discovery, by :class:`Discovery`:

  * ``RFC7489`` (§6.6.3): ``_dmarc.<from>``, then ``_dmarc.<organizational
    domain>`` from the Public Suffix List;
  * ``TREE_WALK`` (the default; DMARCbis §4.10): ``_dmarc.<from>``, then up
    the tree, at most 8 queries (a name of 8 labels or more jumps to its
    last 7), stopping at a record with ``psd=n`` (or ``psd=y`` above the
    start).  The policy is the From: domain's own record, else its
    Organizational Domain's, else that of its Public Suffix Domain
    (``psd=y``).

- The Organizational Domain.  Pillarbox decides it by the DMARCbis tree walk
  (§4.10.2: a ``psd=n`` record is one; below a ``psd=y`` record is one;
  otherwise the highest record) *when a record on the walk carries a
  ``psd=`` tag*, and by the Public Suffix List otherwise.  This is a choice:
  where no one published ``psd=``, the two agree for every name the list
  knows, and the list stays right where a public suffix publishes a record
  without ``psd=y`` (DMARCbis, "PSO Actions", makes ``psd=y`` a MUST, not all
  do); where ``psd=`` is published, it is the operator's own statement and
  beats the list.  In ``RFC7489`` mode only the list counts.
- :func:`evaluate` gives a :class:`DMARCResult`: pass/fail/none/temperror/
  permerror, the policy applied (``p``, ``sp`` or ``np``), the disposition
  after ``pct`` sampling and ``t=y`` (both honoured in both modes, since
  records in the wild carry both), which identifiers aligned, the ``rua``
  for the aggregate reports, and its own ``Authentication-Results:`` entry.
- :class:`DMARCCheck`: the policy check, its verdict per receiving domain
  (:class:`Enforcement`: enforce, quarantine-only, monitor).

DNS trouble: a temporary error while looking for the policy is ``temperror``
(DMARCbis leaves the handling to the receiver; the check accepts and tags by
default).  A temporary error while walking the tree for an *identifier's*
Organizational Domain falls back to the list for that identifier, and one
while asking whether the From: domain exists (for ``np``) counts it as
existing: neither turns a pass into an error.
"""

from __future__ import annotations

import enum
import random as _random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import idna

from pillarbox.mime.addresses import Group, Mailbox, parse_address_list
from pillarbox.mime.headers import split_fields

from .authres import MethodResult
from .dns import DNSTemporaryError, Resolver
from .psl import PublicSuffixList, default_list
from .verdict import Action, Verdict

__all__ = [
    "Alignment", "AuthorDomain", "AuthorProblem", "DKIMOutcome", "DMARCCheck",
    "DMARCRecord", "DMARCRecordError", "DMARCResult", "Discovery", "Enforcement",
    "Policy", "ReportURI", "SPFOutcome", "Status", "author_domain", "evaluate",
    "normalize_domain", "tree_walk_targets",
]

#: DMARCbis §4.10: the tree walk asks at most this many names.
TREE_WALK_LIMIT = 8
#: All the DMARC queries one message may cost (policy walk, identifier walks, np check).
QUERY_BUDGET = 32


class Policy(enum.StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    def weaker(self) -> Policy:
        """The next less strict policy (RFC 7489 §6.6.4, for mail not sampled by pct)."""
        return Policy.QUARANTINE if self is Policy.REJECT else Policy.NONE


class Alignment(enum.StrEnum):
    RELAXED = "r"
    STRICT = "s"


class Status(enum.StrEnum):
    """The DMARC result (RFC 7489 §11.2, DMARCbis "IANA Considerations")."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Discovery(enum.Enum):
    RFC7489 = "rfc7489"        # From: domain, then the PSL's Organizational Domain
    TREE_WALK = "tree-walk"    # DMARCbis §4.10


class AuthorProblem(enum.StrEnum):
    """Why a message has no single Author Domain (it is then exempt from DMARC)."""

    NO_FROM = "no From: header field"
    NO_DOMAIN = "no domain in From:"
    BAD_DOMAIN = "the From: domain is not a valid domain name"
    SEVERAL_DOMAINS = "From: names several domains"
    SEVERAL_FIELDS = "several From: header fields with different domains"


# -- the record ------------------------------------------------------------------

class DMARCRecordError(ValueError):
    """Not a DMARC record: it does not start with ``v=DMARC1`` (the publisher's fault)."""


@dataclass(frozen=True, slots=True)
class ReportURI:
    """One ``rua``/``ruf`` entry: a URI and the report size it accepts (``!10m``)."""

    uri: str
    max_size: int | None = None

    def __str__(self) -> str:
        return self.uri if self.max_size is None else f"{self.uri}!{self.max_size}"


_VERSION = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")
_TAG = re.compile(r"[A-Za-z]+")
_URI = re.compile(r"(?P<uri>[A-Za-z][A-Za-z0-9+.-]*:[^\s!,]+)(?:!(?P<n>[0-9]{1,15})(?P<u>[kmgtKMGT])?)?")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_ABSENT = "no p= tag"


@dataclass(frozen=True, slots=True)
class DMARCRecord:
    """A parsed DMARC record; ``*_error`` say why ``p``/``sp``/``np`` are unusable."""

    p: Policy | None
    sp: Policy | None = None
    np: Policy | None = None
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    pct: int = 100
    rua: tuple[ReportURI, ...] = ()
    ruf: tuple[ReportURI, ...] = ()
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = 86400
    psd: str = "u"
    t: bool = False
    p_error: str | None = None
    sp_error: str | None = None
    np_error: str | None = None
    warnings: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> DMARCRecord:
        """Parse one TXT record (RFC 7489 §6.4); :class:`DMARCRecordError` if it is none."""
        if not _VERSION.match(text):
            raise DMARCRecordError(f"not a DMARC record (it must start with v=DMARC1): {text[:80]!r}")
        warnings: list[str] = []
        tags: dict[str, str] = {}
        for item in text.split(";")[1:]:
            item = item.strip(" \t")
            if not item:
                continue
            name, eq, value = item.partition("=")
            name, value = name.strip(" \t").lower(), value.strip(" \t")
            if not eq or not _TAG.fullmatch(name):
                warnings.append(f"{item[:40]!r} is not tag=value: ignored")
            elif name == "v":
                warnings.append("v= given again: ignored")
            elif name in tags:
                warnings.append(f"{name}= given twice: the first counts")
            else:
                tags[name] = value
        kw: dict[str, object] = {}

        def policy(tag: str) -> Policy | None:
            if tag not in tags:
                return None
            try:
                return Policy(tags[tag].lower())
            except ValueError:
                kw[f"{tag}_error"] = f"{tag}={tags[tag][:40]!r} is not none, quarantine or reject"
                return None

        p = policy("p")
        if "p" not in tags:
            kw["p_error"] = _ABSENT
        kw["sp"], kw["np"] = policy("sp"), policy("np")

        def choice(tag: str, allowed: str, default: str) -> str:
            value = tags.get(tag, default).lower()
            if value not in allowed.split():
                warnings.append(f"{tag}={tags[tag][:40]!r} is not one of {allowed}: {default} used")
                return default
            return value

        kw["adkim"] = Alignment(choice("adkim", "r s", "r"))
        kw["aspf"] = Alignment(choice("aspf", "r s", "r"))
        kw["psd"] = choice("psd", "y n u", "u")
        kw["t"] = choice("t", "y n", "n") == "y"
        if "pct" in tags:
            v = tags["pct"]
            if v.isdigit() and len(v) <= 3 and int(v) <= 100:
                kw["pct"] = int(v)
            else:
                warnings.append(f"pct={v[:40]!r} is not 0 to 100: 100 used")
        if "ri" in tags:
            v = tags["ri"]
            if v.isdigit() and len(v) <= 10 and int(v) < 1 << 32:
                kw["ri"] = int(v)
            else:
                warnings.append(f"ri={v[:40]!r} is not a number of seconds: 86400 used")
        if "fo" in tags:
            opts = tuple(o.strip(" \t").lower() for o in tags["fo"].split(":"))
            if opts and all(o in ("0", "1", "d", "s") for o in opts):
                kw["fo"] = opts
            else:
                warnings.append(f"fo={tags['fo'][:40]!r} is not options 0, 1, d, s: 0 used")
        if "rf" in tags:
            formats = tuple(f.strip(" \t").lower() for f in tags["rf"].split(":"))
            if all(_TAG.fullmatch(f) for f in formats):
                kw["rf"] = formats
            else:
                warnings.append(f"rf={tags['rf'][:40]!r} is not a list of formats: afrf used")
        for tag in ("rua", "ruf"):
            if tag in tags:
                kw[tag] = _uris(tag, tags[tag], warnings)
        return cls(p=p, warnings=tuple(warnings), **kw)  # type: ignore[arg-type]

    def render(self) -> str:
        """The record as it would be published (defaults left out)."""
        parts = ["v=DMARC1"]
        parts += [f"{t}={v}" for t, v in (("p", self.p), ("sp", self.sp), ("np", self.np)) if v]
        if self.adkim is Alignment.STRICT:
            parts.append("adkim=s")
        if self.aspf is Alignment.STRICT:
            parts.append("aspf=s")
        if self.pct != 100:
            parts.append(f"pct={self.pct}")
        if self.psd != "u":
            parts.append(f"psd={self.psd}")
        if self.t:
            parts.append("t=y")
        for tag, uris in (("rua", self.rua), ("ruf", self.ruf)):
            if uris:
                parts.append(f"{tag}=" + ",".join(map(str, uris)))
        if self.fo != ("0",):
            parts.append("fo=" + ":".join(self.fo))
        if self.rf != ("afrf",):
            parts.append("rf=" + ":".join(self.rf))
        if self.ri != 86400:
            parts.append(f"ri={self.ri}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.render()


def _uris(tag: str, value: str, warnings: list[str]) -> tuple[ReportURI, ...]:
    out: list[ReportURI] = []
    for item in value.split(","):
        item = item.strip(" \t")
        m = _URI.fullmatch(item)
        if not m:
            warnings.append(f"{tag}: {item[:60]!r} is not a URI: ignored")
            continue
        size = None if m["n"] is None else int(m["n"]) * _UNITS[(m["u"] or "").lower()]
        out.append(ReportURI(m["uri"], size))
    return tuple(out)


# -- the identifiers ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SPFOutcome:
    """What SPF said of the MAIL FROM domain (for ``<>``, the HELO domain, RFC 7208 §2.4)."""

    result: str      # pass, fail, softfail, neutral, none, temperror, permerror
    domain: str


@dataclass(frozen=True, slots=True)
class DKIMOutcome:
    """What DKIM said of one signature: its result and its ``d=`` (and ``s=``)."""

    result: str      # pass, fail, neutral, policy, temperror, permerror
    domain: str
    selector: str = ""


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def normalize_domain(name: str) -> str | None:
    """A domain in lower-case A-labels (DMARCbis, "Extract Author Domain"; RFC 5890 §2.3), or None."""
    name = name.strip().rstrip(".")
    if not name or name.startswith("["):
        return None
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            return None
    name = name.lower()
    if len(name) > 253 or not all(_LABEL.fullmatch(x) for x in name.split(".")):
        return None
    return name


@dataclass(frozen=True, slots=True)
class AuthorDomain:
    """The From: domain DMARC evaluates, or the problem that leaves none."""

    domain: str | None
    problem: AuthorProblem | None = None
    detail: str = ""


def author_domain(header_block: bytes | str) -> AuthorDomain:
    """Find the Author Domain in a message's header block (DMARCbis, "Extract Author Domain")."""
    if isinstance(header_block, str):
        header_block = header_block.encode("utf-8")
    values = [f.unfolded for f in split_fields(header_block) if f.name.lower() == "from"]
    return author_domain_of(values)


def author_domain_of(from_values: Sequence[bytes]) -> AuthorDomain:
    """The same, given the values of the From: fields."""
    if not from_values:
        return AuthorDomain(None, AuthorProblem.NO_FROM, "the message has no From: field")
    per_field: list[set[str]] = []
    bad: list[str] = []
    for value in from_values:
        domains: set[str] = set()
        for addr in parse_address_list(value):
            for box in addr.members if isinstance(addr, Group) else [addr]:
                if not isinstance(box, Mailbox) or box.domain is None:
                    continue
                raw = box.domain.decode("utf-8", "replace")
                d = normalize_domain(raw)
                if d is None:
                    bad.append(raw)
                else:
                    domains.add(d)
        per_field.append(domains)
    every = set().union(*per_field)
    if not every:
        if bad:
            return AuthorDomain(None, AuthorProblem.BAD_DOMAIN, f"{bad[0][:80]!r} is not a domain name")
        return AuthorDomain(None, AuthorProblem.NO_DOMAIN, "no address with a domain in From:")
    if len(every) > 1:
        names = ", ".join(sorted(every)[:5])
        if any(len(d) > 1 for d in per_field):
            return AuthorDomain(None, AuthorProblem.SEVERAL_DOMAINS, f"From: names {names}")
        return AuthorDomain(None, AuthorProblem.SEVERAL_FIELDS, f"From: fields name {names}")
    return AuthorDomain(every.pop())


# -- DNS: the records and the tree walk ----------------------------------------------

@dataclass(frozen=True, slots=True)
class _Lookup:
    """What ``_dmarc.<domain>`` holds: one record, or none (and why), or a DNS failure."""

    record: DMARCRecord | None = None
    note: str = ""
    error: DNSTemporaryError | None = None


def tree_walk_targets(domain: str) -> list[str]:
    """The names the DMARCbis tree walk asks, in order (§4.10: at most 8).

    ``a.b.c.d.e.f.g.h.example.com`` gives itself, then its last 7 labels, 6, ... 1.
    """
    labels = domain.split(".")
    out = [domain]
    x = len(labels)
    while x > 1:
        x = x - 1 if x < TREE_WALK_LIMIT else TREE_WALK_LIMIT - 1
        out.append(".".join(labels[-x:]))
    return out


class _DNS:
    """One evaluation's DMARC lookups: each name asked once, all within a budget."""

    def __init__(self, resolver: Resolver, budget: int = QUERY_BUDGET) -> None:
        self.resolver = resolver
        self.budget = budget
        self.memo: dict[str, _Lookup] = {}

    async def lookup(self, domain: str) -> _Lookup:
        if domain in self.memo:
            return self.memo[domain]
        name = f"_dmarc.{domain}"
        if len(name) > 253:
            found = _Lookup(note=f"{name[:60]}... is too long to look up")
        elif self.budget <= 0:
            found = _Lookup(error=DNSTemporaryError(name, "TXT", "too many DMARC lookups for one message"))
        else:
            self.budget -= 1
            try:
                answer = await self.resolver.query(name, "TXT")
            except DNSTemporaryError as e:
                found = _Lookup(error=e)
            else:
                found = _select(name, answer.records)
        self.memo[domain] = found
        return found

    async def walk(self, domain: str) -> tuple[list[tuple[str, DMARCRecord]], DNSTemporaryError | None]:
        """The records found walking up from ``domain`` (DMARCbis §4.10), and a DNS failure if one stopped it."""
        found: list[tuple[str, DMARCRecord]] = []
        for i, target in enumerate(tree_walk_targets(domain)):
            looked = await self.lookup(target)
            if looked.error is not None:
                return found, looked.error
            rec = looked.record
            if rec is not None:
                found.append((target, rec))
                if rec.psd == "n" or (rec.psd == "y" and i > 0):
                    break
        return found, None

    async def exists(self, domain: str) -> bool:
        """False only on NXDOMAIN (DMARCbis "Non-existent Domains": RFC 8020); a failure counts as existing."""
        if self.budget <= 0:
            return True
        self.budget -= 1
        try:
            return not (await self.resolver.query(domain, "A")).nxdomain
        except DNSTemporaryError:
            return True


def _select(name: str, records: Iterable[str]) -> _Lookup:
    """RFC 7489 §6.6.3 steps 1-2: keep the records that start with v=DMARC1; exactly one counts."""
    dmarc = [r for r in records if _VERSION.match(r)]
    if not dmarc:
        return _Lookup()
    if len(dmarc) > 1:
        return _Lookup(note=f"{name} has {len(dmarc)} DMARC records, so none counts")
    return _Lookup(DMARCRecord.parse(dmarc[0]))


def _org_by_walk(start: str, found: list[tuple[str, DMARCRecord]]) -> str | None:
    """DMARCbis §4.10.2 on the records of a walk, when one carries psd=; else None."""
    if not any(rec.psd in ("y", "n") for _, rec in found):
        return None
    labels = start.split(".")
    for domain, rec in found:                    # longest first
        if rec.psd == "n":
            return domain
        if rec.psd == "y" and domain != start:
            return ".".join(labels[-(domain.count(".") + 2):])
    return min(found, key=lambda f: f[0].count("."))[0]


# -- the evaluation ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DMARCResult:
    """The outcome of DMARC for one message (what the check, the header and the reports need)."""

    result: Status
    reason: str
    author_domain: str | None = None
    author_problem: AuthorProblem | None = None
    policy_domain: str | None = None
    record: DMARCRecord | None = None
    #: which tag's policy applies: "p", "sp" or "np"
    policy_tag: str | None = None
    #: what that tag asks for
    requested: Policy | None = None
    #: what to do with this message: the request, or less after pct/t
    disposition: Policy = Policy.NONE
    sampled_out: bool = False
    spf_aligned: bool = False
    dkim_aligned: tuple[str, ...] = ()
    organizational_domain: str | None = None

    @property
    def rua(self) -> tuple[ReportURI, ...]:
        return self.record.rua if self.record else ()

    def method_result(self) -> MethodResult:
        """This result as an ``Authentication-Results:`` resinfo (RFC 7489 §11.2)."""
        props: list[tuple[str, str]] = []
        if self.author_domain:
            props.append(("header.from", self.author_domain))
        if self.policy_domain and self.policy_domain != self.author_domain:
            props.append(("polrec.domain", self.policy_domain))     # DMARCbis IANA registry
        if self.requested is not None:
            props.append(("policy.dmarc", str(self.requested)))
        comment = None
        if self.record is not None and self.result in (Status.PASS, Status.FAIL):
            comment = f"p={self.record.p or 'none'}"
            if self.record.sp:
                comment += f" sp={self.record.sp}"
            comment += f" dis={self.disposition}"
        elif self.result is not Status.PASS and self.reason:
            comment = self.reason[:120]
        return MethodResult("dmarc", str(self.result), properties=tuple(props), comment=comment)

    def __str__(self) -> str:
        return f"dmarc={self.result} ({self.reason})"


async def evaluate(
    from_domain: str | AuthorDomain,
    spf: SPFOutcome | None,
    dkim: Sequence[DKIMOutcome],
    resolver: Resolver,
    *,
    psl: PublicSuffixList | None = None,
    discovery: Discovery = Discovery.TREE_WALK,
    random: Callable[[], float] = _random.random,
    private_suffixes: bool = False,
) -> DMARCResult:
    """Evaluate DMARC (RFC 7489 §6.6, DMARCbis "Mail Receiver Actions") for one message.

    ``from_domain`` is the Author Domain (see :func:`author_domain`); ``spf``
    the outcome for the MAIL FROM domain; ``dkim`` one outcome per signature.
    ``random`` gives floats in [0, 1) for the ``pct`` sampling.
    """
    author = from_domain if isinstance(from_domain, AuthorDomain) else _author(from_domain)
    if author.domain is None:
        return DMARCResult(Status.NONE, f"exempt from DMARC: {author.detail or author.problem}",
                           author_problem=author.problem)
    ev = _Evaluation(author.domain, resolver, psl or default_list(), discovery, private_suffixes)
    return await ev.run(spf, dkim, random)


def _author(domain: str) -> AuthorDomain:
    d = normalize_domain(domain)
    if d is None:
        return AuthorDomain(None, AuthorProblem.BAD_DOMAIN, f"{domain[:80]!r} is not a domain name")
    return AuthorDomain(d)


class _Evaluation:
    def __init__(self, domain: str, resolver: Resolver, psl: PublicSuffixList,
                 discovery: Discovery, private: bool) -> None:
        self.domain = domain
        self.dns = _DNS(resolver)
        self.psl = psl
        self.discovery = discovery
        self.private = private
        self.orgs: dict[str, str] = {}

    def _psl_org(self, name: str) -> str:
        return self.psl.organizational_domain(name, private=self.private)

    async def org(self, name: str) -> str:
        """The Organizational Domain of ``name`` (see the module's docstring for the choice)."""
        if name not in self.orgs:
            org = None
            if self.discovery is Discovery.TREE_WALK:
                found, _ = await self.dns.walk(name)   # a DNS failure leaves what was found
                org = _org_by_walk(name, found)
            self.orgs[name] = org or self._psl_org(name)
        return self.orgs[name]

    async def discover(self) -> tuple[str, DMARCRecord] | DMARCResult:
        """Find the policy record: (the domain it is published at, the record), or a final result."""
        d = self.domain
        first = await self.dns.lookup(d)
        if first.error is not None:
            return self._temperror(first.error)
        if first.record is not None:
            return d, first.record
        if self.discovery is Discovery.RFC7489:
            if first.note:                            # §6.6.3 step 5: several records, no DMARC
                return DMARCResult(Status.NONE, first.note, d)
            org = self._psl_org(d)
            if org == d:
                return DMARCResult(Status.NONE, f"no DMARC record at _dmarc.{d}", d)
            second = await self.dns.lookup(org)
            if second.error is not None:
                return self._temperror(second.error)
            if second.record is None:
                why = second.note or f"no DMARC record at _dmarc.{d} or _dmarc.{org}"
                return DMARCResult(Status.NONE, why, d)
            return org, second.record
        found, error = await self.dns.walk(d)
        if error is not None:
            return self._temperror(error)
        org = _org_by_walk(d, found) or self._psl_org(d)
        self.orgs[d] = org
        records = dict(found)
        if org != d:
            at_org = records.get(org)
            if at_org is None:                        # not on the walk: more than 8 labels
                looked = await self.dns.lookup(org)
                if looked.error is not None:
                    return self._temperror(looked.error)
                at_org = looked.record
            if at_org is not None:
                return org, at_org
        for domain, rec in found:
            if rec.psd == "y" and domain != d and d.endswith("." + domain) and domain != org:
                return domain, rec                    # the Public Suffix Domain's policy
        why = first.note or f"no DMARC record for {d}, its Organizational Domain {org} or a public suffix above"
        return DMARCResult(Status.NONE, why, d, organizational_domain=org)

    def _temperror(self, error: DNSTemporaryError) -> DMARCResult:
        return DMARCResult(Status.TEMPERROR, f"DMARC policy lookup failed: {error}", self.domain)

    def usable(self, record: DMARCRecord) -> DMARCRecord | str:
        """The record to apply (RFC 7489 §6.6.3 step 6, DMARCbis §4.10.1), or why there is none."""
        problem = record.sp_error or record.p_error
        if record.p_error == _ABSENT and self.discovery is Discovery.TREE_WALK:
            problem = record.sp_error             # DMARCbis §4.7: no p= is p=none
        if self.discovery is Discovery.TREE_WALK:
            problem = problem or record.np_error
        if problem is None:
            return record if record.p is not None else replace(record, p=Policy.NONE)
        if record.rua:
            return replace(record, p=Policy.NONE, sp=None, np=None,
                           warnings=record.warnings + (f"{problem}: treated as p=none (rua= is given)",))
        return problem

    async def aligned(self, identifier: str, mode: Alignment) -> bool:
        """Identifier Alignment (RFC 7489 §3.1): the same name, or (relaxed) the same Organizational Domain."""
        ident = normalize_domain(identifier)
        if ident is None:
            return False
        if ident == self.domain:
            return True
        if mode is Alignment.STRICT or ident.rsplit(".", 1)[-1] != self.domain.rsplit(".", 1)[-1]:
            return False
        return await self.org(ident) == await self.org(self.domain)

    async def run(self, spf: SPFOutcome | None, dkim: Sequence[DKIMOutcome],
                  random: Callable[[], float]) -> DMARCResult:
        d = self.domain
        found = await self.discover()
        if isinstance(found, DMARCResult):
            return found
        policy_domain, published = found
        record = self.usable(published)
        if isinstance(record, str):
            return DMARCResult(Status.PERMERROR, f"the DMARC record at _dmarc.{policy_domain} "
                               f"is unusable: {record}", d, policy_domain=policy_domain,
                               record=published)
        spf_aligned = bool(spf and spf.result.lower() == "pass"
                           and await self.aligned(spf.domain, record.aspf))
        dkim_aligned: list[str] = []
        for sig in dkim:
            if sig.result.lower() == "pass" and await self.aligned(sig.domain, record.adkim):
                dkim_aligned.append(normalize_domain(sig.domain) or sig.domain)
        tag, requested = "p", record.p or Policy.NONE
        if policy_domain != d and record.sp is not None:
            tag, requested = "sp", record.sp
        base = DMARCResult(Status.PASS, "", d, policy_domain=policy_domain, record=record,
                           policy_tag=tag, requested=requested, spf_aligned=spf_aligned,
                           dkim_aligned=tuple(dict.fromkeys(dkim_aligned)),
                           organizational_domain=self._known_org())
        if spf_aligned or dkim_aligned:
            how = " and ".join((["SPF"] if spf_aligned else []) + (["DKIM"] if dkim_aligned else []))
            return replace(base, reason=f"{how} aligned with {d}")
        # DMARCbis "Determine Handling Policy": a temporary error of an identifier that could have aligned is no fail
        if spf and spf.result.lower() == "temperror" and await self.aligned(spf.domain, record.aspf):
            return replace(base, result=Status.TEMPERROR, reason=f"SPF temperror for {spf.domain}")
        for sig in dkim:
            if sig.result.lower() == "temperror" and await self.aligned(sig.domain, record.adkim):
                return replace(base, result=Status.TEMPERROR, reason=f"DKIM temperror for d={sig.domain}")
        # RFC 7489 §6.6.3 step 3 / DMARCbis §4.10.1: sp for a subdomain, np for one that does not exist
        if policy_domain != d and record.np is not None and not await self.dns.exists(d):
            tag, requested = "np", record.np
        disposition, sampled_out = requested, False
        if requested is not Policy.NONE:
            if record.t:
                disposition = requested.weaker()      # DMARCbis §4.7 t=y: testing
            elif record.pct < 100 and not random() * 100 < record.pct:
                disposition, sampled_out = requested.weaker(), True
        return replace(base, result=Status.FAIL, policy_tag=tag, requested=requested,
                       disposition=disposition, sampled_out=sampled_out,
                       reason="neither SPF nor DKIM passed for a domain aligned with " + d,
                       organizational_domain=self._known_org())

    def _known_org(self) -> str | None:
        """The From: domain's Organizational Domain if known without more DNS (None if not needed)."""
        if self.discovery is Discovery.RFC7489:
            return self._psl_org(self.domain)
        return self.orgs.get(self.domain)


# -- the check -----------------------------------------------------------------------

class Enforcement(enum.Enum):
    """How a receiving domain treats DMARC failures."""

    ENFORCE = "enforce"                  # reject and quarantine as the policy asks
    QUARANTINE_ONLY = "quarantine-only"  # a reject becomes a quarantine (into Junk)
    MONITOR = "monitor"                  # record only: tag, never act


_STRICTNESS = {Action.ACCEPT: 0, Action.TAG: 1, Action.QUARANTINE: 2, Action.DEFER: 3, Action.REJECT: 4}


@dataclass
class DMARCCheck:
    """The DMARC policy check (DESIGN.md layer 5): evaluate, then a verdict per receiving domain.

    A failing message whose policy says reject is refused at DATA with
    ``550 5.7.1`` naming the domain's policy; quarantine goes into Junk;
    ``temperror`` is accepted and tagged unless ``defer_on_temperror``
    (then ``451 4.4.3``).  ``overrides`` maps a receiving domain to its
    :class:`Enforcement`; other domains get ``enforcement``.
    """

    name: ClassVar[str] = "dmarc"

    resolver: Resolver
    psl: PublicSuffixList | None = None
    discovery: Discovery = Discovery.TREE_WALK
    enforcement: Enforcement = Enforcement.ENFORCE
    overrides: Mapping[str, Enforcement] = field(default_factory=dict)
    defer_on_temperror: bool = False
    private_suffixes: bool = False
    random: Callable[[], float] = _random.random

    def __post_init__(self) -> None:
        self.overrides = {k.lower().rstrip("."): v for k, v in self.overrides.items()}

    async def evaluate(self, header_block: bytes, spf: SPFOutcome | None,
                       dkim: Sequence[DKIMOutcome]) -> DMARCResult:
        """DMARC for a message: its header block (for From:), SPF's and DKIM's outcomes."""
        return await evaluate(author_domain(header_block), spf, dkim, self.resolver,
                              psl=self.psl, discovery=self.discovery, random=self.random,
                              private_suffixes=self.private_suffixes)

    async def check(self, header_block: bytes, spf: SPFOutcome | None, dkim: Sequence[DKIMOutcome],
                    receiving_domains: Iterable[str] = ()) -> tuple[DMARCResult, Verdict]:
        """Evaluate and judge in one call: the result (for the header and reports) and the verdict."""
        result = await self.evaluate(header_block, spf, dkim)
        return result, self.verdict_for(result, receiving_domains)

    def enforcement_for(self, receiving_domain: str | None) -> Enforcement:
        if receiving_domain is None:
            return self.enforcement
        return self.overrides.get(receiving_domain.lower().rstrip("."), self.enforcement)

    def verdict(self, result: DMARCResult, receiving_domain: str | None = None) -> Verdict:
        """The verdict for mail to ``receiving_domain`` (None: the default enforcement)."""
        mode = self.enforcement_for(receiving_domain)
        note = str(result)
        if result.result is Status.TEMPERROR:
            if self.defer_on_temperror and mode is not Enforcement.MONITOR:
                return Verdict.defer(self.name, "4.4.3",
                                     f"Temporary DNS failure looking up the DMARC policy of {result.author_domain}")
            return Verdict(self.name, Action.TAG, reason=note)
        if result.result is not Status.FAIL:
            action = Action.ACCEPT if result.result in (Status.PASS, Status.NONE) else Action.TAG
            return Verdict(self.name, action, reason=note)
        disposition = result.disposition
        if mode is Enforcement.MONITOR or disposition is Policy.NONE:
            return Verdict(self.name, Action.TAG, reason=f"{note}, disposition none ({mode.value})")
        if disposition is Policy.REJECT and mode is Enforcement.ENFORCE:
            return Verdict.reject(self.name, "5.7.1", _reject_text(result))
        return Verdict(self.name, Action.QUARANTINE,
                       reason=f"{note}, {result.policy_tag}={result.requested}, quarantined")

    def verdict_for(self, result: DMARCResult, receiving_domains: Iterable[str]) -> Verdict:
        """One verdict for a message to several domains: the most lenient of theirs.

        After DATA one reply answers every recipient, so a reject is given only
        if every receiving domain would reject; to quarantine for some
        recipients and not for others, ask :meth:`verdict` per domain at delivery.
        """
        verdicts = [self.verdict(result, d) for d in receiving_domains] or [self.verdict(result)]
        return min(verdicts, key=lambda v: _STRICTNESS[v.action])


def _reject_text(result: DMARCResult) -> str:
    d, pd = result.author_domain, result.policy_domain
    where = "" if pd == d else f" ({result.policy_tag}={result.requested} published at {pd})"
    return f"Email rejected per DMARC policy for {d}{where}"
