"""The Public Suffix List: where registrations end and organisations begin.

DMARC (RFC 7489 §3.2) calls the registrable domain of a name its
*Organizational Domain*: the public suffix (``com``, ``co.uk``, ``kobe.jp``'s
every child) plus one label.  The list and the algorithm are those of
https://publicsuffix.org/list/:

1. every rule that matches the name is noted; a rule matches when its labels
   equal the name's rightmost labels, ``*`` standing for exactly one label;
2. an exception rule (``!city.kobe.jp``) prevails over all others, and counts
   as the rule without its leftmost label;
3. otherwise the rule with the most labels prevails; when none matches, the
   implicit rule ``*`` does (an unlisted TLD is a public suffix);
4. the public suffix is the name's labels matched by the prevailing rule, the
   registrable domain that suffix with one more label.

The list has two sections.  The ICANN section holds what registries sell;
the PRIVATE section suffixes that companies hand out (``github.io``,
``uk.com``).  DMARC receivers commonly use the ICANN section only, so that is
the default here, and ``private=True`` adds the other.

Names are matched on A-labels (RFC 5890 §2.3.2.1): a rule or a name written
in U-labels (``公司.cn``) is converted first, so ``食狮.公司.cn`` and
``xn--85x722f.xn--55qx5d.cn`` find the same rule; the answer keeps the form
of the question.

The list changes every week, so it is data, not code: :meth:`PublicSuffixList.load`
reads the file that configuration names (updatable without a release) and
falls back to the copy shipped in ``policy/data/`` (see its README).  A file
that cannot be read or parsed is a :class:`PSLError` naming the file and line.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import idna

__all__ = [
    "PSLError",
    "PublicSuffixList",
    "Rule",
    "default_list",
    "organizational_domain",
]

#: The copy shipped with Pillarbox (``src/pillarbox/policy/data/``).
SHIPPED = "data/public_suffix_list.dat"

_BEGIN_PRIVATE = "===BEGIN PRIVATE DOMAINS==="
_END_PRIVATE = "===END PRIVATE DOMAINS==="
# UTS #46 treats these as label separators, as the full stop
_PLAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class PSLError(Exception):
    """The public suffix list file cannot be read or parsed (the operator's to fix)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the list: ``name`` without its ``*.`` or ``!`` prefix."""

    name: str
    wildcard: bool = False
    exception: bool = False
    private: bool = False

    def __str__(self) -> str:
        return ("!" if self.exception else "") + ("*." if self.wildcard else "") + self.name


_shipped: PublicSuffixList | None = None    # the shipped list, once read


class PublicSuffixList:
    """A parsed list with the matching algorithm; build it with :meth:`load` or :meth:`parse`."""

    __slots__ = ("source", "_exact", "_wild", "_except", "_count")

    def __init__(self, rules: Iterable[Rule], source: str = "<rules>") -> None:
        self.source = source
        # name (A-labels) -> True when only the PRIVATE section has the rule
        self._exact: dict[str, bool] = {}
        self._wild: dict[str, bool] = {}      # keyed by the part after "*."
        self._except: dict[str, bool] = {}    # keyed by the name after "!"
        self._count = 0
        for rule in rules:
            table = self._except if rule.exception else self._wild if rule.wildcard else self._exact
            key = _ascii_name(rule.name)
            # in both sections: the ICANN entry decides (it applies either way)
            table[key] = table.get(key, rule.private) and rule.private
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<PublicSuffixList {self.source}: {self._count} rules>"

    # -- loading -------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> PublicSuffixList:
        """Parse the list's text format; errors name ``source`` and the line."""
        rules: list[Rule] = []
        private = False
        for lineno, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
            line = line.strip()
            if line.startswith("//"):
                if _BEGIN_PRIVATE in line:
                    private = True
                elif _END_PRIVATE in line:
                    private = False
                continue
            if not line:
                continue
            token = line.split()[0]      # "each line is only read up to the first whitespace"
            try:
                rules.append(_parse_rule(token, private))
            except ValueError as e:
                raise PSLError(f"public suffix list {source}, line {lineno}: {e}: {token!r}") from None
        if not rules:
            raise PSLError(f"public suffix list {source}: no rules in it "
                           "(is it the file from https://publicsuffix.org/list/?)")
        return cls(rules, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PublicSuffixList:
        """Read the list at ``path`` (a configured file), or the shipped copy when None
        (read once per process, and kept: ``serve`` reads it before the children
        drop privileges, and they inherit it)."""
        if path is None:
            global _shipped
            if _shipped is not None:
                return _shipped
            _shipped = cls._load_shipped()
            return _shipped
        source = os.fspath(path)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PSLError(f"public suffix list {source} cannot be read: "
                           f"{e.strerror or e}") from None
        return cls._decode(data, source)

    @classmethod
    def _load_shipped(cls) -> PublicSuffixList:
        ref = resources.files("pillarbox.policy").joinpath(SHIPPED)
        source = str(ref)
        try:
            data = ref.read_bytes()
        except OSError as e:
            raise PSLError(f"public suffix list {source} (shipped with Pillarbox) "
                           f"cannot be read: {e.strerror or e}") from None
        return cls._decode(data, source)

    @classmethod
    def _decode(cls, data: bytes, source: str) -> PublicSuffixList:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PSLError(f"public suffix list {source} is not UTF-8 text "
                           f"(byte {e.start}): is it the right file?") from None
        return cls.parse(text, source)

    # -- matching ------------------------------------------------------------

    def _suffix_labels(self, alabels: list[str], private: bool) -> int:
        """How many of the name's rightmost labels its public suffix has."""
        n = len(alabels)
        best, exception = 1, 0        # the implicit rule "*" matches one label
        suffix = ""
        for k in range(1, n + 1):
            label = alabels[n - k]
            suffix = label if k == 1 else f"{label}.{suffix}"
            p = self._except.get(suffix)
            if p is not None and (private or not p):
                exception = k
            p = self._exact.get(suffix)
            if p is not None and (private or not p):
                best = max(best, k)
            p = self._wild.get(suffix)
            if p is not None and (private or not p) and k < n:
                best = max(best, k + 1)
        return exception - 1 if exception else best

    def public_suffix(self, name: str, *, private: bool = False) -> str | None:
        """The public suffix of ``name``; None when ``name`` is not a domain name."""
        labels = _labels(name)
        if labels is None:
            return None
        k = self._suffix_labels([_ascii_label(x) for x in labels], private)
        return ".".join(labels[-k:])

    def registrable_domain(self, name: str, *, private: bool = False) -> str | None:
        """The public suffix plus one label; None for a public suffix or a non-name.

        This is the function the list's own test vectors (``test_psl.txt``) check.
        """
        labels = _labels(name)
        if labels is None:
            return None
        k = self._suffix_labels([_ascii_label(x) for x in labels], private)
        return ".".join(labels[-k - 1:]) if len(labels) > k else None

    def is_public_suffix(self, name: str, *, private: bool = False) -> bool:
        labels = _labels(name)
        if labels is None:
            return False
        return self._suffix_labels([_ascii_label(x) for x in labels], private) >= len(labels)

    def organizational_domain(self, name: str, *, private: bool = False) -> str:
        """The Organizational Domain of RFC 7489 §3.2: the registrable domain.

        A name that is itself a public suffix is its own Organizational Domain
        (DMARCbis: public suffix domains are not exempt from DMARC).  A name
        that is no domain name at all is a :class:`ValueError`.
        """
        labels = _labels(name)
        if labels is None:
            raise ValueError(f"not a domain name: {name!r}")
        k = self._suffix_labels([_ascii_label(x) for x in labels], private)
        return ".".join(labels[-k - 1:]) if len(labels) > k else ".".join(labels)


@functools.cache
def default_list() -> PublicSuffixList:
    """The shipped list, parsed once per process."""
    return PublicSuffixList.load()


def organizational_domain(name: str, psl: PublicSuffixList | None = None, *,
                          private: bool = False) -> str:
    """:meth:`PublicSuffixList.organizational_domain` with the shipped list by default."""
    return (psl or default_list()).organizational_domain(name, private=private)


# -- names ---------------------------------------------------------------------

def _parse_rule(token: str, private: bool) -> Rule:
    if _PLAIN.fullmatch(token):      # most lines: letters, digits, hyphens and dots
        return Rule(token.lower(), False, False, private)
    exception = token.startswith("!")
    if exception:
        token = token[1:]
    wildcard = token.startswith("*.")
    if wildcard:
        token = token[2:]
    labels = token.split(".")
    if not token or any(not x for x in labels):
        raise ValueError("empty label")
    if any("*" in x for x in labels):
        raise ValueError("a wildcard is allowed only as the whole leftmost label")
    if exception and wildcard:
        raise ValueError("an exception rule cannot be a wildcard")
    if exception and len(labels) < 2:
        raise ValueError("an exception rule needs two labels at least")
    if "!" in token:
        raise ValueError("'!' is allowed only at the start")
    return Rule(token.translate(_DOTS).lower(), wildcard, exception, private)


def _labels(name: str) -> list[str] | None:
    """The name's labels, lower-cased; None for an empty name, a leading dot or an empty label."""
    name = name.translate(_DOTS)
    if name.endswith("."):
        name = name[:-1]          # the root: "example.com." is "example.com"
    if not name or len(name) > 1000:
        return None
    labels = name.lower().split(".")
    if any(not x for x in labels):
        return None
    return labels


def _ascii_name(name: str) -> str:
    """A rule's name as A-labels.  The list's U-labels are already in the form
    IDNA2008 checks for (lower case, NFC), so the A-label is their Punycode
    (RFC 3492), without the cost of :func:`idna.encode`'s checks."""
    name = name.lower()
    if name.isascii():
        return name
    return ".".join(x if x.isascii() else "xn--" + x.encode("punycode").decode("ascii")
                    for x in name.split("."))


@functools.lru_cache(maxsize=4096)
def _ascii_label(label: str) -> str:
    """A label as its A-label; a label that IDNA refuses stays as it is (it matches no rule)."""
    if label.isascii():
        return label.lower()
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        try:
            return "xn--" + label.lower().encode("punycode").decode("ascii")
        except UnicodeError:
            return label.lower()
