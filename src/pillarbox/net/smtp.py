"""The asyncio adapter between a socket and the SMTP core.

Thin on purpose (DESIGN.md, layer 2): it feeds bytes to the core, hands the
core's events to the session, writes the replies, and owns what only the
network side can do: STARTTLS (``loop.start_tls``), time-outs, back-pressure
and connection limits.  Replies to pipelined commands are written once the
input is used up (RFC 2920 3.2).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import cast

from pillarbox.log import log_event
from pillarbox.net.limits import ConnectionLimiter
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.reply import TIMEOUT, TOO_MANY_CONNECTIONS
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from pillarbox.receive.session import ReceiverContext, Session

log = logging.getLogger("pillarbox.smtp")

_HIGH_WATER = 1 << 20  # stop reading when this much input waits unprocessed
_BATCH = 128           # pipelined commands answered before the replies are written


@dataclass(slots=True)
class SMTPListenerConfig:
    limits: Limits
    command_timeout: float
    data_timeout: float
    tls_context: ssl.SSLContext | None
    limiter: ConnectionLimiter | None
    submission: bool = False      # RFC 6409: MAIL needs AUTH, headers completed
    implicit_tls: bool = False    # RFC 8314: TLS from the first byte (port 465)


class SMTPProtocol(asyncio.Protocol):
    """One SMTP connection."""

    def __init__(self, ctx: ReceiverContext, cfg: SMTPListenerConfig,
                 live: set[SMTPProtocol] | None = None) -> None:
        self.ctx = ctx
        self.cfg = cfg
        # The worker's open sessions (for the shutdown): we leave it as the
        # connection goes, so a closed session's objects are freed at once.
        self._live = live
        if live is not None:
            live.add(self)
        self.transport: asyncio.Transport | None = None
        self.core: SMTPServerConnection | None = None
        self.session: Session | None = None
        self.peer = "unknown"
        self._counted = False
        self._busy = False          # waiting for the store or for TLS
        self._paused = False
        self._write_paused = False  # the client does not read its replies
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._early: list[bytes] | None = None   # decrypted input during start_tls()

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
        implicit = self.cfg.implicit_tls
        core = SMTPServerConnection(
            self.ctx.hostname, self.cfg.limits,
            tls_available=self.cfg.tls_context is not None and not implicit, tls_active=implicit,
        )
        self.core = core
        sockname = transport.get_extra_info("sockname")
        local = (sockname[0],) if isinstance(sockname, tuple) else ()
        self.session = Session(self.ctx, core, self.peer, submission=self.cfg.submission,
                               local_addresses=local, tls=_tls_info(transport) if implicit else None)
        log_event(log, "connect", client=self.peer, level=logging.DEBUG)
        core.greeting()
        transport.write(core.data_to_send())
        self._last = self._loop.time()
        self._arm_timer(self.cfg.command_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session is not None:
            self.session.discard()
            log_event(
                log, "disconnect", client=self.peer, helo=self.core.helo_name if self.core else None,
                messages=self.session.messages, errors=self.core.errors if self.core else 0,
                tls=self.session.tls[0] if self.session.tls else None,
                seconds=round(self._loop.time() - self._started, 3),
            )
        if self._counted and self.cfg.limiter is not None:
            self.cfg.limiter.release(self.peer)
            self._counted = False
        if self.core is not None:
            self.core.state = self.core.state.CLOSED
        if self._live is not None:
            self._live.discard(self)

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None:
            return
        self._last = self._loop.time()
        if self._early is not None:
            # Decrypted by the new TLS transport before start_tls() returned:
            # the client's first command under TLS, not injected plaintext.
            self._early.append(data)
            return
        core.receive_data(data)
        if not self._busy and not self._write_paused:
            self._pump()
        if core.buffered > _HIGH_WATER and not self._paused and self.transport:
            self.transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool | None:
        return None  # close

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last = self._loop.time()   # the client is reading: not idle
        if not self._busy and self.core is not None and self.transport is not None \
                and not self.transport.is_closing():
            self._pump()

    # -------------------------------------------------------------- pumping

    def _pump(self) -> None:
        core, session, transport = self.core, self.session, self.transport
        assert core is not None and session is not None and transport is not None
        n = 0
        while True:
            n += 1
            if n > _BATCH:
                # A client pipelining thousands of commands: write what it has
                # so far, and take no more while it does not read (the input
                # then waits in the core, and reading stops at _HIGH_WATER).
                n = 0
                out = core.data_to_send()
                if out:
                    transport.write(out)
                if self._write_paused:
                    break
            event = core.next_event()
            if session.answer_now(event):
                continue
            kind = type(event)
            if event is ev.NEED_DATA or event is ev.PAUSED:
                break
            elif kind is ev.MessageEnd:
                self._start_busy(self._finish_message(event))  # type: ignore[arg-type]
                break
            elif kind is ev.AuthStart or kind is ev.AuthResponse:
                self._start_busy(self._auth(event))  # type: ignore[arg-type]
                break
            elif kind is ev.AuthCancelled:
                session.auth_cancelled()
            elif kind is ev.StartTLS:
                transport.write(core.data_to_send())
                self._start_busy(self._start_tls())
                return
            elif kind is ev.ProtocolViolation:
                session.auth_cancelled()   # a broken AUTH response ends the exchange
                log_event(
                    log, "protocol error", client=self.peer, command=event.command,  # type: ignore[union-attr]
                    reply=str(event.reply), level=logging.INFO,  # type: ignore[union-attr]
                )
            elif kind is ev.Closing:
                transport.write(core.data_to_send())
                transport.close()
                return
        out = core.data_to_send()
        if out:
            transport.write(out)
        if self._paused and not self._write_paused and core.buffered <= _HIGH_WATER:
            transport.resume_reading()
            self._paused = False
        self._arm_timer(self.cfg.data_timeout if core.in_data else self.cfg.command_timeout)

    def _start_busy(self, coro) -> None:  # type: ignore[no-untyped-def]
        self._busy = True
        task = self._loop.create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("session task failed", exc_info=task.exception())
            if self.transport is not None:
                self.transport.abort()

    def _resume(self) -> None:
        self._busy = False
        if self.transport is None or self.transport.is_closing():
            return
        if self._paused:
            self.transport.resume_reading()
            self._paused = False
        self._pump()

    async def _finish_message(self, event: ev.MessageEnd) -> None:
        assert self.session is not None and self.core is not None
        reply = await self.session.message_end(event)
        self.core.respond(reply)
        self._resume()

    async def _auth(self, event: ev.AuthStart | ev.AuthResponse) -> None:
        assert self.session is not None
        await self.session.auth(event)
        self._resume()

    async def _start_tls(self) -> None:
        core, transport = self.core, self.transport
        assert core is not None and transport is not None and self.session is not None
        ctx = self.cfg.tls_context
        assert ctx is not None
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
        if cipher:
            self.session.tls = (cipher[1], cipher[0], cipher[2])
        core.tls_established()
        self.session.tls_established()
        for data in early or ():
            core.receive_data(data)
        log_event(log, "tls", client=self.peer, version=cipher[1] if cipher else None,
                  cipher=cipher[0] if cipher else None, level=logging.DEBUG)
        self._resume()

    # ------------------------------------------------------------- time-outs

    def _arm_timer(self, timeout: float) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        core = self.core
        if core is None or self.transport is None or self.transport.is_closing():
            return
        timeout = self.cfg.data_timeout if core.in_data else self.cfg.command_timeout
        if self._busy:
            timeout = max(timeout, 600.0)
        due = self._last + timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        log_event(log, "timeout", client=self.peer, level=logging.INFO)
        core.close(TIMEOUT)
        self.transport.write(core.data_to_send())
        self.transport.close()



def _tls_info(transport: asyncio.BaseTransport) -> tuple[str, str, int] | None:
    """(version, cipher, bits) of a TLS transport, for the log and ``Received:``."""
    ssl_object = transport.get_extra_info("ssl_object")
    cipher = ssl_object.cipher() if ssl_object else None
    return (cipher[1], cipher[0], cipher[2]) if cipher else None
