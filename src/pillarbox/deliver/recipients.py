"""Who a recipient address is: local accounts, aliases, catch-alls, sub-addresses.

The same resolution runs twice: at RCPT time, so that unknown local
recipients are refused there (550 5.1.1) and never bounced later
(DESIGN.md, security stance: no backscatter), and at delivery time, to find
the mailboxes.  Order, for ``local+tag@domain``:

1. an alias or account named exactly ``local+tag@domain``;
2. with sub-addressing (RFC 5233's ``user+detail``), the same for ``local@domain``;
3. the domain's catch-all alias ``@domain``.

Aliases expand recursively (one to many), to a bounded depth; targets that
are not local accounts make the alias unusable for now, since forwarding to
other post offices arrives with outbound delivery.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from pillarbox.store.base import Account
from pillarbox.store.directory import Directory

__all__ = ["Directory", "Resolution", "Verdict", "cached", "normalize", "resolve", "split_address"]

MAX_ALIAS_DEPTH = 10


class Verdict(enum.Enum):
    LOCAL = "local"          # deliver to ``accounts``
    UNKNOWN = "unknown"      # local domain, no such user: 550 5.1.1
    REMOTE = "remote"        # not one of our domains: relay (denied without auth)


@dataclass(frozen=True, slots=True)
class Resolution:
    verdict: Verdict
    accounts: tuple[Account, ...] = ()


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
        accounts = _expand(directory, key, 0, set())
        if accounts is not None:
            return Resolution(Verdict.LOCAL, tuple(accounts)) if accounts else Resolution(
                Verdict.UNKNOWN
            )
    return Resolution(Verdict.UNKNOWN)


def _expand(directory: Directory, key: str, depth: int, seen: set[str]) -> list[Account] | None:
    """Accounts that ``key`` reaches, or None if ``key`` names nothing."""
    if key in seen or depth > MAX_ALIAS_DEPTH:
        return []
    seen.add(key)
    targets = directory.alias_targets(key)
    if targets:
        found: dict[int, Account] = {}
        for target in targets:
            for reached in _expand(directory, target.lower(), depth + 1, seen) or ():
                found.setdefault(reached.id, reached)
        return list(found.values())
    account = directory.find_account(key)
    return [account] if account is not None else None


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
