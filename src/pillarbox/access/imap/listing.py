"""LIST and LSUB: which names match, and with which attributes.

RFC 9051 §6.3.9 (with RFC 5258 LIST-EXTENDED, RFC 6154 SPECIAL-USE, and
RFC 3501 §6.3.9 LSUB).  One namespace, personal, with ``/`` as the hierarchy
delimiter and no prefix (NAMESPACE answers ``(("" "/")) NIL NIL``).

Wildcards: ``*`` matches anything, ``%`` anything but the delimiter.  The
reference name is prefixed to the pattern as RFC 9051 §6.3.9 describes
(Dovecot's behaviour: reference ``a/`` with pattern ``b*`` is ``a/b*``).
``INBOX`` matches case-insensitively.

Mailboxes whose parent does not exist imply that parent: it is listed as
``\\NonExistent`` (``\\Noselect`` too in IMAP4rev1) with ``\\HasChildren``
when a pattern matches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from pillarbox.store.base import Mailbox

DELIMITER = "/"


@dataclass(slots=True)
class Entry:
    name: str
    attributes: list[str] = field(default_factory=list)
    childinfo: bool = False           # CHILDINFO ("SUBSCRIBED") of RECURSIVEMATCH
    mailbox: Mailbox | None = None    # None for a name that exists only implied


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def full_pattern(reference: str, pattern: str) -> str:
    if not reference or pattern.startswith(DELIMITER):
        return pattern
    return reference + pattern


def matches(pattern: str, name: str) -> bool:
    if name == "INBOX" or name.upper().startswith("INBOX" + DELIMITER):
        # INBOX is case-insensitive, also as the first level of a pattern.
        head, sep, rest = pattern.partition(DELIMITER)
        if head.upper() == "INBOX":
            pattern = "INBOX" + sep + rest
    return _pattern(pattern).match(name) is not None


def _parents(name: str) -> list[str]:
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def list_mailboxes(
    boxes: list[Mailbox],
    subscriptions: list[str],
    reference: str,
    patterns: tuple[str, ...],
    *,
    selection: tuple[str, ...] = (),
    returns: tuple[str, ...] = (),
    lsub: bool = False,
    rev2: bool = False,
) -> list[Entry]:
    """The entries of one LIST or LSUB, in name order (INBOX first)."""
    by_name = {b.name: b for b in boxes}
    subscribed = set(subscriptions)
    names = set(by_name)
    implied = {p for n in names for p in _parents(n)} - names
    children = {p for n in names | implied for p in _parents(n)}
    sub_children = {p for n in subscribed for p in _parents(n)}
    want_subscribed = "SUBSCRIBED" in selection or lsub
    recursive = "RECURSIVEMATCH" in selection
    special_only = "SPECIAL-USE" in selection
    show_subscribed = "SUBSCRIBED" in returns or "SUBSCRIBED" in selection
    # RFC 6154 §2 lets plain LIST carry the special-use attributes too, as
    # Dovecot does; clients that never ask for them still find Sent & co.
    show_special = True
    full = [full_pattern(reference, p) for p in patterns]

    def matched(name: str) -> bool:
        return any(matches(p, name) for p in full)

    def childinfo(name: str) -> bool:
        """RFC 5258 §3.5: a name gets CHILDINFO when a subscribed descendant
        satisfies the selection but is not itself listed."""
        prefix = name + DELIMITER
        return any(d.startswith(prefix) and not matched(d) for d in subscribed)

    entries: dict[str, Entry] = {}
    if want_subscribed:
        candidates = set(subscribed)
        if recursive or lsub:
            candidates |= sub_children
    else:
        candidates = names | implied
    for name in candidates:
        if not matched(name):
            continue
        box = by_name.get(name)
        entry = Entry(name, mailbox=box)
        attrs = entry.attributes
        if want_subscribed and name not in subscribed:
            if lsub:
                # RFC 3501 §6.3.9: a "%" may match a parent of subscribed
                # names that is not itself subscribed: \Noselect.
                if any(matches(p, name) and "%" in p for p in full) and name in sub_children:
                    attrs.append("\\Noselect")
                else:
                    continue
            elif recursive and name in sub_children and childinfo(name):
                entry.childinfo = True
            else:
                continue
        if box is None:
            if lsub:
                pass
            elif rev2 or want_subscribed:
                attrs.append("\\NonExistent")
            else:
                attrs.append("\\Noselect")
        if not lsub:
            if name in children:
                attrs.append("\\HasChildren")
            elif box is not None or not want_subscribed:
                attrs.append("\\HasNoChildren")
        if show_subscribed and name in subscribed and not lsub:
            attrs.append("\\Subscribed")
        if box is not None and box.special_use and show_special and not lsub:
            attrs.append(box.special_use)
        if special_only and (box is None or not box.special_use):
            continue
        entries[name] = entry
    # RECURSIVEMATCH: parents whose own name does not satisfy the selection
    # but have a descendant that does get CHILDINFO (RFC 5258 §3.5).
    if recursive and want_subscribed:
        for name in sub_children:
            if name in entries or not matched(name) or name in subscribed:
                continue
            if not childinfo(name):
                continue
            box = by_name.get(name)
            entry = Entry(name, mailbox=box, childinfo=True)
            if box is None:
                entry.attributes.append("\\NonExistent")
            entry.attributes.append("\\HasChildren")
            entries[name] = entry
    return sorted(entries.values(), key=lambda e: (e.name != "INBOX", e.name))


def patterns_match_nothing(patterns: tuple[str, ...]) -> bool:
    """LIST "" "": the delimiter and root query (RFC 9051 §6.3.9)."""
    return all(p == "" for p in patterns)
