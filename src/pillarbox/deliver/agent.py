"""Delivery agents: remote SMTP delivery in processes of its own.

The queue manager decides *what* to try and records what happened; the SMTP
dialogue with other mail servers is the costly part (TLS, parsing replies,
streaming content), and one process on one core cannot do it for more than a
few hundred messages a second.  Postfix runs its smtp(8) clients as separate
processes for the same reason.  Here the supervisor starts
``delivery.processes`` agents; each runs a :class:`~pillarbox.deliver.remote.
RemoteDelivery` of its own (MX cache, connection pools) and connects to the
manager over a Unix socket in the data directory's ``run/``.

The manager holds an :class:`AgentPool`, which keeps the contract of
:mod:`pillarbox.deliver.outbound` unchanged: ``await pool.deliver(domain,
message)`` is a :class:`~pillarbox.deliver.outbound.Delivery`.  Each attempt
goes to the agent with the fewest attempts under way, so the work spreads
over the agents, and each agent keeps its idle connections for the next
message to the same destination.  The agent reads the message from the
store itself (the blob is immutable), so no content crosses the socket.

What can go wrong, and what the recipients get:

- no agent connected within ``wait_seconds`` (they are starting, or keep
  crashing): every recipient deferred, ``451 4.3.0``;
- an agent ends during an attempt: its recipients deferred, ``451 4.3.0``.
  The remote server may have taken the message before the agent ended, so
  the retry may deliver it twice; that is the at-least-once promise of
  DESIGN.md, and what Postfix does when an smtp(8) process dies.

Framing is that of :mod:`pillarbox.queue.ipc` (lengths, then JSON).  The agent
says ``hello`` with its PID; then the manager sends ``deliver`` requests with
an ``id`` and the agent answers each, in any order, with the same ``id``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pillarbox.deliver.outbound import Delivery, OutboundMessage, OutboundRecipient, Outcome
from pillarbox.log import log_event
from pillarbox.queue.ipc import FrameWriter, encode, read_frame

__all__ = ["AgentPool", "DeliveryAgent", "message_to_json", "message_from_json"]

log = logging.getLogger("pillarbox.deliver.agent")


class _Remote(Protocol):
    async def deliver(self, domain: str, message: OutboundMessage) -> Delivery: ...


def message_to_json(message: OutboundMessage) -> dict[str, Any]:
    """The message without its body reader (the agent opens the blob itself)."""
    return {
        "queue_id": message.queue_id, "reverse_path": message.reverse_path,
        "recipients": [asdict(r) for r in message.recipients], "size": message.size,
        "body": message.body, "smtputf8": message.smtputf8, "dsn_ret": message.dsn_ret,
        "dsn_envid": message.dsn_envid, "requiretls": message.requiretls,
        "tls_required_no": message.tls_required_no,
    }


def message_from_json(obj: dict[str, Any],
                      open_message: Callable[[str], BinaryIO]) -> OutboundMessage:
    return OutboundMessage(
        queue_id=obj["queue_id"], reverse_path=obj["reverse_path"],
        recipients=tuple(OutboundRecipient(**r) for r in obj["recipients"]),
        size=obj["size"], open_body=functools.partial(open_message, obj["queue_id"]),
        body=obj["body"], smtputf8=obj["smtputf8"], dsn_ret=obj["dsn_ret"],
        dsn_envid=obj["dsn_envid"], requiretls=bool(obj.get("requiretls")),
        tls_required_no=bool(obj.get("tls_required_no")),
    )


def delivery_from_json(obj: dict[str, Any]) -> Delivery:
    return Delivery(tuple(Outcome(**o) for o in obj["outcomes"]), obj.get("tls"))


def _all_deferred(message: OutboundMessage, reply: str) -> Delivery:
    return Delivery(tuple(Outcome(r.idx, "deferred", reply, "4.3.0")
                          for r in message.recipients))


class _Agent:
    """The manager's view of one connected agent."""

    def __init__(self, pid: int, writer: asyncio.StreamWriter) -> None:
        self.pid = pid
        self.writer = writer
        self.out = FrameWriter(writer)    # a delivery batch's requests in one write
        self.pending: dict[int, asyncio.Future[Delivery]] = {}


class AgentPool:
    """The manager's side: hands attempts to the connected agents."""

    def __init__(self, path: Path, *, wait_seconds: float = 30.0) -> None:
        self.path = path
        self.wait_seconds = wait_seconds
        self._agents: list[_Agent] = []
        self._present = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._next = 0

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._connection, str(self.path))

    @property
    def agents(self) -> int:
        return len(self._agents)

    async def deliver(self, domain: str, message: OutboundMessage) -> Delivery:
        if not self._agents:
            try:
                await asyncio.wait_for(self._present.wait(), self.wait_seconds)
            except TimeoutError:
                return _all_deferred(
                    message, "451 4.3.0 No delivery process is running on this server")
        agent = min(self._agents, key=lambda a: len(a.pending))
        self._next += 1
        request_id = self._next
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        agent.pending[request_id] = future
        agent.out.write(encode({"id": request_id, "op": "deliver", "domain": domain,
                                "message": message_to_json(message)}))
        try:
            return await future
        except _AgentGone as exc:
            return _all_deferred(message, f"451 4.3.0 {exc}")
        finally:
            agent.pending.pop(request_id, None)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        agent: _Agent | None = None
        why = "the delivery process ended during the attempt"
        try:
            hello = await read_frame(reader)
            if not hello or hello.get("op") != "hello":
                return
            agent = _Agent(int(hello.get("pid", 0)), writer)
            self._agents.append(agent)
            self._present.set()
            log_event(log, "delivery agent connected", pid=agent.pid, agents=len(self._agents))
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                future = agent.pending.get(frame.get("id", -1))
                if future is not None and not future.done():
                    if "delivery" in frame:
                        future.set_result(delivery_from_json(frame["delivery"]))
                    else:
                        future.set_exception(_AgentGone(
                            f"the delivery process failed: {frame.get('error', '?')}"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = f"the delivery process connection broke: {exc!r}"
        except asyncio.CancelledError:
            why = "the queue manager is stopping"
        finally:
            if agent is not None:
                self._agents.remove(agent)
                if not self._agents:
                    self._present.clear()
                for future in agent.pending.values():
                    if not future.done():
                        future.set_exception(_AgentGone(why))
                log_event(log, "delivery agent gone", pid=agent.pid, agents=len(self._agents),
                          in_flight=len(agent.pending),
                          level=logging.WARNING if agent.pending else logging.INFO)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for agent in list(self._agents):
            agent.writer.close()
        self.path.unlink(missing_ok=True)


class _AgentGone(Exception):
    pass


class DeliveryAgent:
    """The agent's side: takes attempts from the manager and runs them."""

    def __init__(self, remote: _Remote, open_message: Callable[[str], BinaryIO]) -> None:
        self.remote = remote
        self.open_message = open_message
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, path: Path, stop: asyncio.Event, *, retry: float = 0.2) -> None:
        """Serve the manager at ``path`` until ``stop``; reconnect when it restarts."""
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
            except OSError:
                try:
                    await asyncio.wait_for(stop.wait(), retry)
                except TimeoutError:
                    pass
                continue
            serving = asyncio.create_task(self._serve(reader, writer))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                serving.cancel()
                writer.close()
        if self._tasks:
            # Attempts under way finish (the manager may be gone; then their
            # answers go nowhere and the leases make the entries due again).
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode({"op": "hello", "pid": os.getpid()}))
        out = FrameWriter(writer)     # answers that come in one turn of the loop, together
        while True:
            try:
                frame = await read_frame(reader)
            except (OSError, ValueError, json.JSONDecodeError):
                return
            if frame is None:
                return
            if frame.get("op") != "deliver":
                continue
            task = asyncio.create_task(self._attempt(frame, out))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempt(self, frame: dict[str, Any], out: FrameWriter) -> None:
        answer: dict[str, Any] = {"id": frame.get("id")}
        try:
            message = message_from_json(frame["message"], self.open_message)
            delivery = await self.remote.deliver(frame["domain"], message)
            answer["delivery"] = {"outcomes": [asdict(o) for o in delivery.outcomes],
                                  "tls": delivery.tls}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the manager defers the recipients
            log.exception("delivery attempt failed in the agent")
            answer["error"] = repr(exc)
        out.write(encode(answer))
