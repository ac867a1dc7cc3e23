"""Who a recipient address is: local accounts, aliases, catch-alls, sub-addresses.

The same resolution runs twice: at RCPT time, so that unknown local
recipients are refused there (550 5.1.1) and never bounced later
(DESIGN.md, security stance: no backscatter), and at delivery time, to find
the mailboxes.  Order, for ``local+tag@domain``:

1. an alias or account named exactly ``local+tag@domain``;
2. with sub-addressing (RFC 5233's ``user+detail``), the same for ``local@domain``;
3. the domain's catch-all alias ``@domain``.

Aliases expand recursively (one to many), to a bounded depth
(``MAX_ALIAS_DEPTH``).  A target in a domain that is not ours is a
*forward*: the receiving session queues a copy for it (sealed with ARC, its
envelope sender rewritten with SRS: ``pillarbox.receive.forwarding``), so
one alias may reach local accounts and other post offices at once.  A
target in one of our domains that names nothing (a dangling alias) is
skipped; an alias that reaches nothing at all makes its address unknown.

An address that reaches only forwards resolves to ``FORWARD``: local
delivery has nothing to put in a mailbox for it (the copies were queued at
reception, as Postfix's cleanup expands virtual aliases before the queue).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from pillarbox.store.base import Account
from pillarbox.store.directory import Directory

__all__ = ["Directory", "Resolution", "Verdict", "cached", "normalize", "resolve", "split_address"]

MAX_ALIAS_DEPTH = 10


class Verdict(enum.Enum):
    LOCAL = "local"          # deliver to ``accounts``
    UNKNOWN = "unknown"      # local domain, no such user: 550 5.1.1
    REMOTE = "remote"        # not one of our domains: relay (denied without auth)
    FORWARD = "forward"      # an alias of ours that reaches only other post offices


@dataclass(frozen=True, slots=True)
class Resolution:
    """``accounts`` to deliver to; ``forwards``: remote addresses the alias reaches
    (normalised, in the order found, once each), with LOCAL or FORWARD."""

    verdict: Verdict
    accounts: tuple[Account, ...] = ()
    forwards: tuple[str, ...] = ()


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain


def normalize(local: str, domain: str) -> str:
    """Lookup key: local parts are matched without case, as most servers do."""
    return f"{local.lower()}@{domain.lower()}"


def lookup_keys(local: str, domain: str, delimiters: str) -> list[str]:
    """The keys ``local@domain`` is looked up by: itself, then without its
    sub-address (``alice+tag`` → ``alice``; the first delimiter after the
    first character cuts)."""
    keys = [normalize(local, domain)]
    if delimiters:
        cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
        if cut > 0:
            keys.append(normalize(local[:cut], domain))
    return keys


def resolve(directory: Directory, local: str, domain: str, delimiters: str) -> Resolution:
    """Resolve ``local@domain`` (domain in ASCII A-label form)."""
    domain = domain.lower()
    if not directory.is_local_domain(domain):
        return Resolution(Verdict.REMOTE)
    candidates = [*lookup_keys(local, domain, delimiters), f"@{domain}"]
    for key in candidates:
        reached = _Reached()
        if _expand(directory, key, 0, set(), reached):
            if reached.accounts:
                return Resolution(Verdict.LOCAL, tuple(reached.accounts.values()),
                                  tuple(reached.forwards))
            if reached.forwards:
                return Resolution(Verdict.FORWARD, (), tuple(reached.forwards))
            return Resolution(Verdict.UNKNOWN)
    return Resolution(Verdict.UNKNOWN)


@dataclass(slots=True)
class _Reached:
    accounts: dict[int, Account] = field(default_factory=dict)
    forwards: dict[str, None] = field(default_factory=dict)     # an ordered set


def _expand(directory: Directory, key: str, depth: int, seen: set[str],
            reached: _Reached) -> bool:
    """Collect what ``key`` reaches into ``reached``; False if ``key`` names nothing."""
    if key in seen or depth > MAX_ALIAS_DEPTH:
        return True
    seen.add(key)
    targets = directory.alias_targets(key)
    if targets:
        for target in targets:
            _, target_domain = split_address(target)
            if target_domain and not directory.is_local_domain(target_domain.lower()):
                # Another post office's address: its local part is its own
                # (RFC 5321 2.4), kept as the alias names it.
                reached.forwards.setdefault(target, None)
            else:
                _expand(directory, target.lower(), depth + 1, seen, reached)
        return True
    account = directory.find_account(key)
    if account is None:
        return False
    reached.accounts.setdefault(account.id, account)
    return True


def cached(directory: Directory, ttl: float = 1.0, max_entries: int = 10000) -> Directory:
    """The same lookups, remembered for ``ttl`` seconds (positive and negative).

    RCPT checks run for every recipient of every session; a worker answers
    most of them from memory.  A change made with the CLI is seen within
    ``ttl`` seconds.  Delivery does not use this: it resolves afresh, inside
    its transaction.
    """
    import time

    def remember(lookup: Callable[[str], object]) -> Callable[[str], object]:
        memory: dict[str, tuple[float, object]] = {}

        def cached_lookup(key: str) -> object:
            now = time.monotonic()
            hit = memory.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
            value = lookup(key)
            if len(memory) >= max_entries:
                memory.clear()
            memory[key] = (now + ttl, value)
            return value

        return cached_lookup

    return Directory(
        remember(directory.is_local_domain),  # type: ignore[arg-type]
        remember(directory.find_account),  # type: ignore[arg-type]
        remember(directory.alias_targets),  # type: ignore[arg-type]
    )
