"""Delivery agents (deliver/agent.py): attempts cross the socket and come back
whole; an agent that ends, or none at all, leaves the recipients deferred."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from pillarbox.deliver.agent import AgentPool, DeliveryAgent
from pillarbox.deliver.outbound import Delivery, OutboundMessage, OutboundRecipient, Outcome


def _message(queue_id: str = "Q1", n: int = 2) -> OutboundMessage:
    return OutboundMessage(
        queue_id=queue_id, reverse_path="a@sender.test",
        recipients=tuple(OutboundRecipient(i, f"r{i}@remote.test", "SUCCESS,FAILURE",
                                           f"rfc822;r{i}@remote.test") for i in range(n)),
        size=5, open_body=lambda: io.BytesIO(b"never"), body="8BITMIME", smtputf8=True,
        dsn_ret="HDRS", dsn_envid="env-1",
    )


class _Remote:
    """Reads the body the agent opened and answers per recipient."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.seen: list[tuple[str, OutboundMessage, bytes]] = []
        self.hold = hold

    async def deliver(self, domain: str, message: OutboundMessage) -> Delivery:
        with message.open_body() as f:
            body = f.read()
        self.seen.append((domain, message, body))
        if self.hold is not None:
            await self.hold.wait()
        return Delivery(tuple(
            Outcome(r.idx, "delivered" if r.idx == 0 else "failed",
                    "250 2.0.0 ok" if r.idx == 0 else "550 5.1.1 no such user\nreally",
                    "2.0.0" if r.idx == 0 else "5.1.1", "mx.remote.test")
            for r in message.recipients), "TLSv1.3 TLS_AES_256_GCM_SHA384 unverified")


def _opener(queue_id: str) -> io.BytesIO:
    return io.BytesIO(f"body of {queue_id}".encode())


async def _start(tmp_path: Path, remote: _Remote, **kw: float
                 ) -> tuple[AgentPool, asyncio.Event, asyncio.Task[None]]:
    pool = AgentPool(tmp_path / "delivery.sock", **kw)
    await pool.start()
    stop = asyncio.Event()
    task = asyncio.create_task(DeliveryAgent(remote, _opener).run(pool.path, stop, retry=0.02))
    for _ in range(200):
        if pool.agents:
            break
        await asyncio.sleep(0.01)
    return pool, stop, task


def test_attempt_round_trip(tmp_path: Path) -> None:
    asyncio.run(_test_attempt_round_trip(tmp_path))


async def _test_attempt_round_trip(tmp_path: Path) -> None:
    remote = _Remote()
    pool, stop, task = await _start(tmp_path, remote)
    delivery = await pool.deliver("remote.test", _message())
    assert [o.result for o in delivery.outcomes] == ["delivered", "failed"]
    assert delivery.outcomes[1].reply == "550 5.1.1 no such user\nreally"
    assert delivery.outcomes[0].remote_mta == "mx.remote.test"
    assert delivery.tls == "TLSv1.3 TLS_AES_256_GCM_SHA384 unverified"
    domain, message, body = remote.seen[0]
    assert domain == "remote.test" and body == b"body of Q1"
    original = _message()
    assert message.recipients == original.recipients
    assert (message.body, message.smtputf8, message.dsn_ret, message.dsn_envid) == (
        "8BITMIME", True, "HDRS", "env-1")
    stop.set()
    await task
    await pool.close()


def test_attempts_spread_over_agents(tmp_path: Path) -> None:
    asyncio.run(_test_attempts_spread_over_agents(tmp_path))


async def _test_attempts_spread_over_agents(tmp_path: Path) -> None:
    hold = asyncio.Event()
    first, second = _Remote(hold), _Remote(hold)
    pool, stop, task = await _start(tmp_path, first)
    stop2 = asyncio.Event()
    task2 = asyncio.create_task(DeliveryAgent(second, _opener).run(pool.path, stop2, retry=0.02))
    while pool.agents < 2:
        await asyncio.sleep(0.01)
    attempts = [asyncio.create_task(pool.deliver("remote.test", _message(f"Q{i}", 1)))
                for i in range(6)]
    while len(first.seen) + len(second.seen) < 6:
        await asyncio.sleep(0.01)
    assert len(first.seen) == len(second.seen) == 3
    hold.set()
    assert all(d.outcomes[0].result == "delivered" for d in await asyncio.gather(*attempts))
    stop.set()
    stop2.set()
    await asyncio.gather(task, task2)
    await pool.close()


def test_agent_gone_mid_attempt_defers(tmp_path: Path) -> None:
    asyncio.run(_test_agent_gone_mid_attempt_defers(tmp_path))


async def _test_agent_gone_mid_attempt_defers(tmp_path: Path) -> None:
    remote = _Remote(asyncio.Event())      # never answers
    pool, stop, task = await _start(tmp_path, remote)
    attempt = asyncio.create_task(pool.deliver("remote.test", _message()))
    while not remote.seen:
        await asyncio.sleep(0.01)
    task.cancel()                          # the agent process ends
    with pytest.raises(asyncio.CancelledError):
        await task
    delivery = await asyncio.wait_for(attempt, 5)
    assert [o.result for o in delivery.outcomes] == ["deferred", "deferred"]
    assert all(o.reply.startswith("451 4.3.0 ") for o in delivery.outcomes)
    await pool.close()


def test_no_agent_defers_after_the_wait(tmp_path: Path) -> None:
    asyncio.run(_test_no_agent_defers_after_the_wait(tmp_path))


async def _test_no_agent_defers_after_the_wait(tmp_path: Path) -> None:
    pool = AgentPool(tmp_path / "delivery.sock", wait_seconds=0.05)
    await pool.start()
    delivery = await pool.deliver("remote.test", _message())
    assert [o.result for o in delivery.outcomes] == ["deferred", "deferred"]
    assert "No delivery process" in delivery.outcomes[0].reply
    await pool.close()


def test_agent_failure_is_reported_as_deferred(tmp_path: Path) -> None:
    asyncio.run(_test_agent_failure_is_reported_as_deferred(tmp_path))


async def _test_agent_failure_is_reported_as_deferred(tmp_path: Path) -> None:
    class Broken(_Remote):
        async def deliver(self, domain: str, message: OutboundMessage) -> Delivery:
            raise RuntimeError("boom")

    pool, stop, task = await _start(tmp_path, Broken())
    delivery = await pool.deliver("remote.test", _message())
    assert [o.result for o in delivery.outcomes] == ["deferred", "deferred"]
    assert "boom" in delivery.outcomes[0].reply
    stop.set()
    await task
    await pool.close()


def test_agent_reconnects_when_the_manager_restarts(tmp_path: Path) -> None:
    asyncio.run(_test_agent_reconnects_when_the_manager_restarts(tmp_path))


async def _test_agent_reconnects_when_the_manager_restarts(tmp_path: Path) -> None:
    remote = _Remote()
    pool, stop, task = await _start(tmp_path, remote)
    await pool.close()
    pool2 = AgentPool(tmp_path / "delivery.sock")
    await pool2.start()
    delivery = await asyncio.wait_for(pool2.deliver("remote.test", _message()), 5)
    assert delivery.outcomes[0].result == "delivered"
    stop.set()
    await task
    await pool2.close()
