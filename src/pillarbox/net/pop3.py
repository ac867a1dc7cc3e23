"""The asyncio adapter between a socket and the POP3 core.

Thin on purpose (DESIGN.md, layer 2): it feeds bytes to the core, hands the
core's events to the session (``pillarbox.access.pop3``), writes the
replies, and owns what only the network side can do: STLS
(``loop.start_tls``, RFC 2595), implicit TLS (RFC 8314, the listener's
``ssl``), the idle time-out (RFC 1939 3), back-pressure and connection limits.

A message is written in pieces of ``_CHUNK`` octets, and no further piece
nor command while the transport asks us to pause (``pause_writing``), so a
slow client never makes the worker buffer a whole large message twice, nor
the replies to commands it pipelines without reading them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

from pillarbox.access.pop3 import POP3Context, POP3Session
from pillarbox.log import log_event
from pillarbox.net.limits import ConnectionLimiter
from pillarbox.protocols.pop3 import events as ev
from pillarbox.protocols.pop3.replies import (
    SHUTTING_DOWN,
    TIMEOUT,
    TOO_MANY_CONNECTIONS,
    err,
)
from pillarbox.protocols.pop3.server import POP3ServerConnection, State

log = logging.getLogger("pillarbox.pop3")

_HIGH_WATER = 1 << 16  # stop reading when this much input waits unprocessed
_CHUNK = 1 << 16       # octets of a message written at a time


@dataclass(slots=True)
class POP3ListenerConfig:
    """One POP3 listener: STLS offered (``implicit_tls`` False) or TLS from the start."""

    tls_context: ssl.SSLContext | None
    implicit_tls: bool
    idle_timeout: float
    limiter: ConnectionLimiter | None


class POP3Protocol(asyncio.Protocol):
    """One POP3 connection."""

    def __init__(self, ctx: POP3Context, cfg: POP3ListenerConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.transport: asyncio.Transport | None = None
        self.core: POP3ServerConnection | None = None
        self.session: POP3Session | None = None
        self.peer = "unknown"
        self._counted = False
        self._busy = False          # waiting for the store, the authenticator or TLS
        self._write_paused = False
        self._read_paused = False
        self._pumping = False       # in _pump: a resume_writing() inside it waits for it
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._early: list[bytes] | None = None   # decrypted input during start_tls()
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()

    @property
    def busy(self) -> bool:
        """A command is being carried out (a login, QUIT's expunge, a large read)."""
        return self._busy

    # ------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "local"
        limiter = self.cfg.limiter
        if limiter is not None:
            why = limiter.acquire(self.peer)
            if why is not None:
                log_event(log, "refused", client=self.peer, reason=why, level=logging.WARNING)
                transport.write(TOO_MANY_CONNECTIONS.render())
                transport.close()
                return
            self._counted = True
        tls = self.cfg.implicit_tls
        core = POP3ServerConnection(
            self.ctx.hostname,
            self.ctx.settings.limits,
            tls_available=self.cfg.tls_context is not None and not tls,
            tls_active=tls,
        )
        self.core = core
        self.session = POP3Session(self.ctx, core, self.peer, tls=tls)
        log_event(log, "connect", client=self.peer, tls=tls, level=logging.DEBUG)
        core.greeting()
        transport.write(core.data_to_send())
        self._last = self._loop.time()
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        running = self._task is not None and not self._task.done()
        updating = running and self.core is not None and self.core.state is State.UPDATE
        if running and not updating:
            assert self._task is not None
            self._task.cancel()     # a login or a read: nothing to finish
        if self.session is not None and not updating:
            # In UPDATE, the expunge goes on (it is shielded in the store), and
            # the session releases the maildrop once it has committed.
            self.session.close()
        if self.core is not None:
            self.core.state = self.core.state.CLOSED
        if self._counted and self.cfg.limiter is not None:
            self.cfg.limiter.release(self.peer)
            self._counted = False
        self.transport = None

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None:
            return
        self._last = self._loop.time()
        if self._early is not None:
            # Decrypted by the new TLS transport before start_tls() returned to
            # us: the client's first command under TLS, not injected plaintext.
            self._early.append(data)
            return
        core.receive_data(data)
        if not self._busy:
            self._pump()
        if core.buffered > _HIGH_WATER and not self._read_paused and self.transport:
            self.transport.pause_reading()
            self._read_paused = True

    def eof_received(self) -> bool | None:
        return None  # close

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last = self._loop.time()   # the client is reading: not idle
        if not self._busy and not self._pumping:
            self._pump()

    def shutdown(self) -> None:
        """The worker stops: say so and close, unless a command is being carried out."""
        core, transport = self.core, self.transport
        if core is None or transport is None or transport.is_closing():
            return
        if not self._busy:
            core.close(SHUTTING_DOWN)
            transport.write(core.data_to_send())
        transport.close()

    # -------------------------------------------------------------- pumping

    def _pump(self) -> None:
        self._pumping = True
        try:
            self._pump_events()
        finally:
            self._pumping = False

    def _pump_events(self) -> None:
        core, session, transport = self.core, self.session, self.transport
        if core is None or session is None or transport is None or transport.is_closing():
            return
        while True:
            if not self._flush():
                return   # the client is not reading; resume_writing() goes on
            event = core.next_event()
            if event is ev.NEED_DATA or event is ev.PAUSED:
                break
            if isinstance(event, ev.Closing):
                transport.write(core.data_to_send())
                transport.close()
                return
            if isinstance(event, ev.StartTLS):
                transport.write(core.data_to_send())
                self._start_busy(self._start_tls())
                return
            if isinstance(event, ev.ProtocolViolation):
                log_event(log, "protocol error", client=self.peer, command=event.command,
                          reply=str(event.reply), level=logging.INFO)
            work = session.handle(cast(ev.Event, event))
            if work is not None:
                self._flush()
                self._start_busy(work)
                return
        self._flush()
        if self._read_paused and core.buffered <= _HIGH_WATER:
            transport.resume_reading()
            self._read_paused = False
        self._arm_timer()

    def _flush(self) -> bool:
        """Write what the core has; False while the client does not read it.

        Then no further command is taken either: replies to pipelined commands
        (LIST, CAPA ...) would otherwise pile up here without bound.
        """
        core, transport = self.core, self.transport
        assert core is not None and transport is not None
        while True:
            if self._write_paused and core.sending:
                return False
            out = core.data_to_send(_CHUNK)
            if out:
                transport.write(out)
            if not core.sending:
                return not self._write_paused

    def _start_busy(self, work: Coroutine[Any, Any, None]) -> None:
        self._busy = True
        self._task = self._loop.create_task(work)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("pop3 session task failed", exc_info=exc)
            if self.transport is not None and self.core is not None:
                self.core.close(err("Internal error, closing connection", None))
                self.transport.write(self.core.data_to_send())
                self.transport.close()
            return
        self._last = self._loop.time()
        self._pump()

    async def _start_tls(self) -> None:
        core, transport, session = self.core, self.transport, self.session
        assert core is not None and transport is not None and session is not None
        ctx = self.cfg.tls_context
        assert ctx is not None
        # Plaintext pipelined behind STLS was dropped by the core; from here on
        # the socket belongs to TLS, and what arrives is held until we are ready.
        self._early = []
        try:
            new_transport = await self._loop.start_tls(
                transport, self, ctx, server_side=True, ssl_handshake_timeout=60
            )
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            self._early = None
            log_event(log, "tls failed", client=self.peer, error=str(exc), level=logging.INFO)
            transport.abort()
            return
        early, self._early = self._early, None
        if new_transport is None:
            return
        self.transport = new_transport  # type: ignore[assignment]
        ssl_object = new_transport.get_extra_info("ssl_object")
        cipher = ssl_object.cipher() if ssl_object else None
        core.tls_established()
        session.tls_established()
        for data in early:
            core.receive_data(data)
        log_event(log, "tls", client=self.peer, version=cipher[1] if cipher else None,
                  cipher=cipher[0] if cipher else None, level=logging.DEBUG)

    # ------------------------------------------------------------- time-outs

    def _arm_timer(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(
                self._last + self.cfg.idle_timeout, self._check_timeout
            )

    def _check_timeout(self) -> None:
        self._timer = None
        core, transport = self.core, self.transport
        if core is None or transport is None or transport.is_closing():
            return
        timeout = self.cfg.idle_timeout
        now = self._loop.time()
        if self._busy:
            # Waiting for us (a login, an expunge) is not the client's idleness;
            # look again soon, since the client's clock starts when we answer.
            limit = self._last + max(timeout, 600.0)
            if now < limit:
                self._timer = self._loop.call_at(min(limit, now + timeout), self._check_timeout)
                return
        elif now < self._last + timeout:
            self._timer = self._loop.call_at(self._last + timeout, self._check_timeout)
            return
        log_event(log, "timeout", client=self.peer, level=logging.INFO)
        core.close(TIMEOUT)
        transport.write(core.data_to_send())
        transport.close()
