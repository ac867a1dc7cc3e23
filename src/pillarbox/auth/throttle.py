"""Counting failed logins in a sliding window, per client address and per account.

A :class:`FailureWindow` keeps, per key, the times of the failures within
the last ``window`` seconds; a key with ``limit`` of them is *blocked* until
the oldest one ages out.  (Parallel attempts are handled by the service,
which asks again once an attempt's turn to hash has come.)

Client addresses are counted by :func:`client_key`: an IPv4 address as is,
an IPv6 address by its /64 (one subscriber usually holds a whole /64, and
counting single IPv6 addresses would let one client take billions of
tries).  Tables are bounded (``max_keys``); past it, the oldest entries go
first, so spraying names or addresses costs memory only up to the bound.
The counts live in one process: with N worker processes a client gets at
most N times the limit.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable

__all__ = ["FailureWindow", "client_key", "is_loopback"]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])   # no zone index
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_loopback(client_ip: str) -> bool:
    """127.0.0.0/8, ::1 and ::ffff:127.x; a name or garbage is not loopback."""
    addr = _address(client_ip)
    return addr is not None and addr.is_loopback


def client_key(client_ip: str) -> str:
    """The key a client address is counted under: IPv4 as is, IPv6 by its /64."""
    addr = _address(client_ip)
    if addr is None:
        return client_ip
    if isinstance(addr, ipaddress.IPv6Address) and not addr.is_loopback:
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class FailureWindow:
    """At most ``limit`` failures per key within ``window`` seconds."""

    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000,
                 clock: Callable[[], float]) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a failure window needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _live(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def count(self, key: str) -> int:
        times = self._live(key, self._clock())
        return len(times) if times else 0

    def blocked(self, key: str) -> bool:
        return self.count(key) >= self.limit

    def add(self, key: str) -> None:
        """Record a failure now."""
        now = self._clock()
        times = self._live(key, now)
        if times is None:
            while len(self._failures) >= self._max_keys:   # oldest first: O(1)
                del self._failures[next(iter(self._failures))]
            times = self._failures[key] = deque()
        times.append(now)

    def __len__(self) -> int:
        return len(self._failures)
