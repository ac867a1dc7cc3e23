"""SORT: the messages of a search result in the order of the sort criteria.

RFC 5256 §3 (ARRIVAL CC DATE FROM REVERSE SIZE SUBJECT TO) and RFC 5957
(DISPLAYFROM DISPLAYTO). String keys compare in their folded form
(:func:`pillarbox.access.cache.fold`, i;ascii-casemap extended to Unicode);
messages that compare equal on every criterion keep their mailbox order
(RFC 5256 §3: "sorted according to the order in which they appear in the
mailbox"), REVERSE included: REVERSE reverses its criterion, not the ties.

The header values come from the cache entries (``cache(meta)``), computed from
the content when missing; the search itself is :func:`pillarbox.access.search.search`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..protocols.imap.commands import SortKey
from ..store.base import MessageMeta
from .cache import CacheEntry, lookup, sent_date

__all__ = ["SORT_CRITERIA", "SortError", "sort"]


class SortError(ValueError):
    """A sort criterion we do not know (the parser lets none through)."""


_Item = tuple[int, MessageMeta, CacheEntry]

_KEYS: dict[str, Callable[[_Item], Any]] = {
    "ARRIVAL": lambda t: t[1].internal_date,
    "SIZE": lambda t: t[1].size,
    "DATE": lambda t: sent_date(t[1], t[2]),
    "SUBJECT": lambda t: t[2].subject,
    "FROM": lambda t: t[2].from_,
    "TO": lambda t: t[2].to,
    "CC": lambda t: t[2].cc,
    "DISPLAYFROM": lambda t: t[2].display_from,
    "DISPLAYTO": lambda t: t[2].display_to,
}
#: For sorts on ARRIVAL and SIZE only, which need no header.
_NO_HEADERS = CacheEntry(b"", b"", b"")
_NO_ENTRY = frozenset({"ARRIVAL", "SIZE"})

#: Every criterion :func:`sort` knows, for the capability list (SORT, SORT=DISPLAY).
SORT_CRITERIA = frozenset(_KEYS)


def sort(criteria: Sequence[SortKey], messages: Sequence[tuple[int, MessageMeta]], *,
         cache: Callable[[MessageMeta], CacheEntry | None],
         content: Callable[[MessageMeta], bytes], uid: bool = False,
         computed: dict[str, CacheEntry] | None = None) -> list[int]:
    """The sequence numbers (UIDs with ``uid``) of ``messages`` sorted by ``criteria``.

    ``messages`` are the ``(seq, meta)`` that matched the search, in mailbox order.
    Entries computed from content are put in ``computed`` (keyed by blob).
    """
    for c in criteria:
        if c.key not in _KEYS:
            raise SortError(f"unknown sort criterion {c.key}")
    need = any(c.key not in _NO_ENTRY for c in criteria)
    items: list[_Item] = [
        (s, m, lookup(m, cache, content, computed) if need else _NO_HEADERS)
        for s, m in messages]
    items.sort(key=lambda t: t[0])
    # stable sorts from the last criterion to the first: ties keep mailbox order
    for c in reversed(criteria):
        items.sort(key=_KEYS[c.key], reverse=c.reverse)
    if uid:
        return [t[1].uid for t in items]
    return [t[0] for t in items]
