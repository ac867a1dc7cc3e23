"""BalancedServer (net/balance.py) at start: it accepts once every worker is
ready, or after START_WAIT when one never comes up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from pillarbox.net import balance
from pillarbox.net.balance import BalancedServer
from pillarbox.net.limits import ConnectionLimiter


class _Counting(asyncio.Protocol):
    made: list[_Counting] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(self)
        transport.close()


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _as_worker(limiter: ConnectionLimiter, worker: int) -> None:
    mine = limiter.worker
    limiter.bind(worker)
    limiter.mark_ready()
    limiter.bind(mine)


@contextlib.asynccontextmanager
async def _worker_zero(clients: int) -> AsyncIterator[ConnectionLimiter]:
    """Worker 0 of two, ready, with ``clients`` connections waiting to be accepted."""
    _Counting.made = []
    limiter = ConnectionLimiter(100, 100, workers=2)
    limiter.bind(0)
    sock = _listener()
    server = BalancedServer(sock, _Counting, limiter)
    limiter.mark_ready()
    socks = [socket.create_connection(sock.getsockname()[:2]) for _ in range(clients)]
    try:
        yield limiter
    finally:
        server.close()
        sock.close()
        for s in socks:
            s.close()


async def _accepted(n: int, within: float) -> int:
    for _ in range(int(within / 0.01)):
        if len(_Counting.made) >= n:
            break
        await asyncio.sleep(0.01)
    return len(_Counting.made)


def test_waits_for_the_other_worker_before_accepting() -> None:
    async def scenario() -> None:
        async with _worker_zero(4) as limiter:
            await asyncio.sleep(0.2)
            assert _Counting.made == []          # worker 1 is not up: its share waits
            _as_worker(limiter, 1)
            assert await _accepted(4, 2.0) == 4  # nobody else took them: after stepping back

    asyncio.run(scenario())


def test_a_worker_that_never_comes_up_delays_only_the_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balance, "START_WAIT", 0.3)

    async def scenario() -> None:
        started = asyncio.get_running_loop().time()
        async with _worker_zero(2):
            assert await _accepted(2, 2.0) == 2
            assert asyncio.get_running_loop().time() - started >= 0.3

    asyncio.run(scenario())


def test_a_cleared_worker_is_not_ready() -> None:
    limiter = ConnectionLimiter(100, 100, workers=2)
    limiter.bind(0)
    limiter.mark_ready()
    _as_worker(limiter, 1)
    assert limiter.all_ready()
    limiter.clear(1)                         # the supervisor, when worker 1 died
    assert not limiter.all_ready()
