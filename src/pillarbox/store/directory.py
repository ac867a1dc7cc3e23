"""The directory: the three lookups recipient resolution needs from the store.

Resolution itself (aliases, sub-addresses, catch-alls) is policy and lives in
``pillarbox.deliver.recipients``; the store only answers the questions, each
backend in its own way (``SQLiteStore.directory``).  The value lives here, in
the store's interface, so that the store never imports from the services
above it (DESIGN.md, layer 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pillarbox.store.base import Account


@dataclass(frozen=True, slots=True)
class Directory:
    """The lookups resolution needs, bound to a store connection.

    ``is_local_domain(domain)`` for an A-label domain; ``find_account(address)``
    and ``alias_targets(source)`` for a normalised address (or ``@domain``,
    the catch-all).
    """

    is_local_domain: Callable[[str], bool]
    find_account: Callable[[str], Account | None]
    alias_targets: Callable[[str], list[str]]
