"""The asyncio adapter between a socket and the IMAP core and session.

Thin on purpose (DESIGN.md, layer 2): bytes from the socket go into the core
(``protocols/imap/server.py``); each event it yields is executed by the
session (``access/imap/session.py``), one at a time and in order; what the
core has to send is written when the session is done with an event, or when
a long answer (a big FETCH) asks for it.  This side owns what only the
network can do: STARTTLS and implicit TLS, COMPRESS=DEFLATE (RFC 4978),
back-pressure both ways, the idle time-out (RFC 9051 §5.4) and the limits
on connections per server and per client address.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import zlib
from dataclasses import dataclass
from typing import Any, cast

from pillarbox.access.imap.session import IMAPContext, IMAPSession
from pillarbox.log import log_event
from pillarbox.net.limits import ConnectionLimiter
from pillarbox.protocols.imap import responses as r
from pillarbox.protocols.imap.server import NEED_DATA, PAUSED, IMAPServerConnection, Limits

log = logging.getLogger("pillarbox.imap")

_HIGH_WATER = 1 << 20     # stop reading while this much input waits unparsed
_TURN = 0.02              # seconds of pipelined commands before other sessions get the loop


@dataclass(slots=True)
class IMAPListenerConfig:
    limits: Limits
    idle_timeout: float
    tls_context: ssl.SSLContext | None
    implicit_tls: bool = False
    limiter: ConnectionLimiter | None = None


class IMAPProtocol(asyncio.Protocol):
    """One IMAP connection."""

    def __init__(self, ctx: IMAPContext, cfg: IMAPListenerConfig,
                 registry: set[IMAPProtocol] | None = None) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self._registry = registry
        self.transport: asyncio.Transport | None = None
        self.core: IMAPServerConnection | None = None
        self.session: IMAPSession | None = None
        self.peer = "unknown"
        self._counted = False
        self._loop = asyncio.get_running_loop()
        self._input = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._runner: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._active = 0.0        # loop time of the last input (the idle time-out's start)
        self._closing = False
        self._paused = False
        self._deflate: Any = None
        self._inflate: Any = None
        self._in_tls = False
        self._early: list[bytes] | None = None   # decrypted input during start_tls()
        self._eof = False         # the client half-closed: no more input

    # ------------------------------------------------------------ lifecycle

    @property
    def can_start_tls(self) -> bool:
        return self.cfg.tls_context is not None and not self._in_tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._registry is not None:
            self._registry.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "unknown"
        if self.peer.startswith("::ffff:"):
            self.peer = self.peer[7:]
        self._in_tls = self.cfg.implicit_tls
        limiter = self.cfg.limiter
        if limiter is not None:
            refused = limiter.acquire(self.peer)
            if refused is not None:
                self.transport.write(b"* BYE [UNAVAILABLE] " + refused.encode() + b"\r\n")
                self.transport.close()
                return
            self._counted = True
        self.core = IMAPServerConnection(self.cfg.limits, tls_active=self._in_tls)
        self.session = IMAPSession(self.ctx, self.core, self, self.peer, tls=self._in_tls)
        self.core.send(r.Untagged(
            "OK", self.ctx.greeting_text, r.CapabilityCode(tuple(self.session.capabilities()))
        ))
        self.flush()
        self._touch()
        self._runner = self._loop.create_task(self._run())

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._registry is not None:
            self._registry.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._counted and self.cfg.limiter is not None:
            self.cfg.limiter.release(self.peer)
            self._counted = False
        if self.session is not None:
            self.session.closed()
        if self._runner is not None:
            self._runner.cancel()
        self._input.set()
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self.core is None or self._closing:
            return
        if self._early is not None:
            # Decrypted by the new TLS transport before start_tls() returned to
            # us: the client's first command under TLS, not injected plaintext
            # (which the core dropped before the handshake began).
            self._early.append(data)
            self._touch()
            return
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                self._abort("* BYE Corrupt compressed data")
                return
        self.core.receive_data(data)
        self._touch()
        self._input.set()
        if self.core.buffered > _HIGH_WATER and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # A half-close: the client sends no more but still reads.  Answer the
        # commands it sent before, then close (``_run``).  Over TLS asyncio
        # cannot keep a half-open transport, so there it closes at once.
        self._eof = True
        self._input.set()
        return None if self._in_tls else True

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ------------------------------------------------------------ the session's output

    def flush(self) -> None:
        if self.core is None or self.transport is None or self.transport.is_closing():
            return
        data = self.core.data_to_send()
        if not data:
            return
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def start_compression(self) -> None:
        """RFC 4978 §3: everything after the tagged OK is deflated, both ways."""
        assert self.core is not None
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        pending = self.core.compression_started()
        if pending:
            try:
                self.core.receive_data(self._inflate.decompress(pending))
            except zlib.error:
                self._abort("* BYE Corrupt compressed data")

    async def start_tls(self) -> bool:
        assert self.transport is not None and self.core is not None
        context = self.cfg.tls_context
        if context is None:
            return False
        self._early = []
        try:
            transport = await self._loop.start_tls(
                self.transport, self, context, server_side=True, ssl_handshake_timeout=30
            )
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            self._early = None
            log_event(log, "tls failed", client=self.peer, error=str(exc),
                      level=logging.WARNING)
            self.close()
            return False
        early, self._early = self._early, None
        if transport is None:
            self.close()
            return False
        self.transport = transport
        self._in_tls = True
        self.core.start_tls_done()
        for data in early:
            self.core.receive_data(data)
        if early:
            self._input.set()
        return True

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        core, session = self.core, self.session
        assert core is not None and session is not None
        loop = self._loop
        try:
            turn_end = loop.time() + _TURN
            while not self._closing:
                event = core.next_event()
                if event is NEED_DATA or event is PAUSED:
                    self.flush()
                    if core.closed or self._eof:
                        self.close()
                        return
                    if self._paused and self.transport is not None:
                        self._paused = False
                        self.transport.resume_reading()
                    self._input.clear()
                    await self._input.wait()
                    turn_end = loop.time() + _TURN
                    continue
                await session.handle(cast(Any, event))
                self.flush()
                if not self._writable.is_set():
                    # The client does not read its answers: take no further
                    # command (so input stops being read past _HIGH_WATER)
                    # until it does, or answers pile up here without bound.
                    await self._writable.wait()
                    turn_end = loop.time() + _TURN
                elif loop.time() >= turn_end:
                    # Commands answered from memory never wait: a client that
                    # pipelines thousands must not hold the worker's loop.
                    await asyncio.sleep(0)
                    turn_end = loop.time() + _TURN
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a bug in one session must not take the worker
            log.exception("IMAP session failed (client %s)", self.peer)
            self._abort("* BYE [SERVERBUG] Internal error; please reconnect")

    def shutdown(self) -> None:
        """The server stops: say so (RFC 9051 §7.1.5) and close."""
        self._abort("* BYE Server shutting down")

    def _abort(self, line: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            data = line.encode() + b"\r\n"
            if self._deflate is not None:
                data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            self.transport.write(data)
        self.close()

    def _touch(self) -> None:
        # Input moves the deadline; the one timer looks at it when it fires
        # (a timer made and cancelled at every input was about 3 us a command
        # under uvloop, a read of the loop's clock is 0.1).
        self._active = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self.cfg.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self._closing:
            return
        left = self._active + self.cfg.idle_timeout - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_idle)
            return
        self._timed_out()

    def _timed_out(self) -> None:
        log_event(log, "idle timeout", client=self.peer)
        self._abort("* BYE Autologout; idle for too long")
