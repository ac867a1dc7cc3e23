"""BalancedServer (net/balance.py) at start: it accepts once every worker is
ready, or after START_WAIT when one never comes up."""

from __future__ import annotations

import asyncio
import socket

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


def _connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def _as_worker(limiter: ConnectionLimiter, worker: int) -> None:
    mine = limiter.worker
    limiter.bind(worker)
    limiter.mark_ready()
    limiter.bind(mine)


def test_waits_for_the_other_worker_before_accepting() -> None:
    asyncio.run(_waits_for_the_other_worker())


async def _waits_for_the_other_worker() -> None:
    _Counting.made = []
    limiter = ConnectionLimiter(100, 100, workers=2)
    limiter.bind(0)
    sock = _listener()
    server = BalancedServer(sock, _Counting, limiter)
    limiter.mark_ready()
    socks = _connect(sock.getsockname()[1], 4)
    try:
        await asyncio.sleep(0.2)
        assert _Counting.made == []          # worker 1 is not up: its share waits
        _as_worker(limiter, 1)
        for _ in range(100):
            if len(_Counting.made) == 4:
                break
            await asyncio.sleep(0.02)
        assert len(_Counting.made) == 4      # nobody else took them: after stepping back
    finally:
        server.close()
        sock.close()
        for s in socks:
            s.close()


def test_a_worker_that_never_comes_up_delays_only_the_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balance, "START_WAIT", 0.3)
    asyncio.run(_never_comes_up())


async def _never_comes_up() -> None:
    _Counting.made = []
    limiter = ConnectionLimiter(100, 100, workers=2)
    limiter.bind(0)
    sock = _listener()
    loop = asyncio.get_running_loop()
    started = loop.time()
    server = BalancedServer(sock, _Counting, limiter)
    limiter.mark_ready()
    socks = _connect(sock.getsockname()[1], 2)
    try:
        for _ in range(200):
            if len(_Counting.made) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(_Counting.made) == 2
        assert loop.time() - started >= 0.3
    finally:
        server.close()
        sock.close()
        for s in socks:
            s.close()


def test_a_cleared_worker_is_not_ready() -> None:
    limiter = ConnectionLimiter(100, 100, workers=2)
    limiter.bind(0)
    limiter.mark_ready()
    _as_worker(limiter, 1)
    assert limiter.all_ready()
    limiter.clear(1)                         # the supervisor, when worker 1 died
    assert not limiter.all_ready()
