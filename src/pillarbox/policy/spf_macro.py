"""SPF macros (RFC 7208 §7): parsing macro strings and expanding them.

A domain-spec (``include:%{ir}.%{v}._spf.%{d2}``) and an explanation string
(``exp=`` TXT text) are *macro strings*: literal text with ``%{…}`` macros.
Parsing is separate from expansion, so a record is parsed once and its terms
expanded for every check; nothing here does DNS (the ``p`` macro's value is
looked up by :mod:`pillarbox.policy.spf` and handed in).

The rules, with the RFC text they follow:

- ``%{`` letter transformers delimiters ``}``, ``%%`` (``%``), ``%_`` (a
  space) and ``%-`` (``%20``); any other ``%`` is a syntax error (§7.1).
- Letters ``s l o d i p v h`` everywhere, ``c r t`` only in explanation
  text (§7.2); letters are case-insensitive, and an upper-case letter's
  value is URL-escaped: every octet outside the unreserved set
  ``ALPHA DIGIT - . _ ~`` becomes ``%XX`` (§7.3).
- Transformers (§7.3): split the value on the delimiters (``.-+,/_=``,
  default ``.``), reverse the parts if ``r``, keep the rightmost N parts
  (N must not be zero), join them with ``.``.
- Literal characters are the visible ASCII ones (``%x21-7E``); explanation
  text may also hold spaces (§7.1, ``explain-string``).
- A domain-spec ends in a macro or in ``.`` and a top label (letters and
  digits, not all digits unless it has an inner hyphen), optionally followed
  by a dot (§7.1, ``domain-end``); this is checked before expansion, never
  after (the suite's ``invalid-hello-macro``).
- An expanded domain name loses one trailing dot, and when it is longer than
  253 characters its left-most labels are dropped until it fits (§7.3).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Macro", "MacroError", "MacroString", "expand", "parse_domain_spec",
           "parse_explanation", "domain_name"]

LETTERS = frozenset("slodipvhcrt")
EXPLANATION_ONLY = frozenset("crt")
DELIMITERS = ".-+,/_="

_MACRO = re.compile(r"%\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<reverse>[rR]?)"
                    r"(?P<delimiters>[.\-+,/_=]*)\}")
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")
_SPLITTERS: dict[str, re.Pattern[str]] = {}


class MacroError(ValueError):
    """A syntax error in a macro string: the domain's record is at fault (permerror)."""


@dataclass(frozen=True, slots=True)
class Macro:
    """One ``%{…}``: its letter (lower case), how many right-hand parts to keep
    (0: all), whether to reverse, the delimiters, and whether to URL-escape."""

    letter: str
    keep: int
    reverse: bool
    delimiters: str
    escape: bool

    def __str__(self) -> str:
        letter = self.letter.upper() if self.escape else self.letter
        keep = str(self.keep) if self.keep else ""
        return f"%{{{letter}{keep}{'r' if self.reverse else ''}{self.delimiters}}}"


@dataclass(frozen=True, slots=True)
class MacroString:
    """A parsed macro string: literal text and :class:`Macro` parts, in order."""

    parts: tuple[str | Macro, ...]

    @property
    def literal(self) -> str | None:
        """The text, if it has no macros (then it needs no expansion)."""
        if any(isinstance(p, Macro) for p in self.parts):
            return None
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def letters(self) -> frozenset[str]:
        return frozenset(p.letter for p in self.parts if isinstance(p, Macro))

    def __str__(self) -> str:
        return "".join(p.replace("%", "%%") if isinstance(p, str) else str(p)
                       for p in self.parts)


def _parse(text: str, *, explanation: bool) -> MacroString:
    parts: list[str | Macro] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "%":
            if not ("\x21" <= ch <= "\x7e" or (explanation and ch == " ")):
                raise MacroError(f"character {ch!r} is not allowed in {text!r}")
            literal.append(ch)
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
            i += 2
            continue
        m = _MACRO.match(text, i)
        if nxt != "{" or m is None:
            raise MacroError(f"'%' must be followed by '{{', '%', '_' or '-' "
                             f"(at {text[i:i + 8]!r} in {text!r})")
        letter = m["letter"].lower()
        if letter not in LETTERS:
            raise MacroError(f"unknown macro letter in {m[0]!r}")
        if letter in EXPLANATION_ONLY and not explanation:
            raise MacroError(f"macro {m[0]!r}: c, r and t are allowed in explanations only")
        if m["digits"] and int(m["digits"]) == 0:
            raise MacroError(f"macro {m[0]!r}: the number of parts must not be zero")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(Macro(letter, int(m["digits"] or 0), bool(m["reverse"]),
                           m["delimiters"], m["letter"].isupper()))
        i = m.end()
    if literal:
        parts.append("".join(literal))
    return MacroString(tuple(parts))


def parse_domain_spec(text: str) -> MacroString:
    """A domain-spec (§7.1); :class:`MacroError` if it is not one."""
    if not text:
        raise MacroError("empty domain-spec")
    spec = _parse(text, explanation=False)
    last = spec.parts[-1]
    if isinstance(last, Macro):
        return spec
    tail = last[:-1] if last.endswith(".") else last
    head, dot, toplabel = tail.rpartition(".")
    if not dot or not _TOPLABEL.fullmatch(toplabel):
        raise MacroError(f"domain-spec {text!r} does not end in a macro or in "
                         "'.' and a top label")
    if not head and len(spec.parts) == 1:
        raise MacroError(f"domain-spec {text!r} has no name before its top label")
    return spec


def parse_explanation(text: str) -> MacroString:
    """An explanation string (§6.2, ``explain-string``); :class:`MacroError` if not."""
    return _parse(text, explanation=True)


def _splitter(delimiters: str) -> re.Pattern[str]:
    pattern = _SPLITTERS.get(delimiters)
    if pattern is None:
        pattern = _SPLITTERS[delimiters] = re.compile("[" + re.escape(delimiters) + "]")
    return pattern


def _transform(value: str, macro: Macro) -> str:
    if macro.keep or macro.reverse or macro.delimiters:
        parts = _splitter(macro.delimiters or ".").split(value)
        if macro.reverse:
            parts.reverse()
        if macro.keep:
            parts = parts[-macro.keep:]
        value = ".".join(parts)
    if macro.escape:
        value = urllib.parse.quote(value, safe="~")
    return value


def expand(spec: MacroString, values: Mapping[str, str]) -> str:
    """The text of ``spec`` with each macro replaced by its value from ``values``
    (letter → text; §7.3)."""
    out = []
    for part in spec.parts:
        out.append(part if isinstance(part, str) else _transform(values[part.letter], part))
    return "".join(out)


def domain_name(expanded: str) -> str:
    """An expanded domain-spec as the name to ask: one trailing dot removed, and
    left-hand labels dropped while it is longer than 253 characters (§7.3)."""
    if expanded.endswith("."):
        expanded = expanded[:-1]
    while len(expanded) > 253 and "." in expanded:
        expanded = expanded.split(".", 1)[1]
    return expanded
