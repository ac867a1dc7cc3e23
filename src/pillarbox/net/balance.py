"""Accepting long-lived connections in the least-loaded worker.

The workers share the listening sockets (DESIGN.md, processes and cores).
For SMTP, one connection per message, that spreads the load well enough: a
busy worker wakes later and accepts less.  An IMAP session lives for hours,
though, and a burst of connections (clients reconnecting after a network
change or a restart; imaptest's twenty clients at once) goes to whichever
worker wakes first: 18 of 20 sessions on one of two workers was measured,
that worker saturated and the other one idle.

So IMAP and POP3 accept through :class:`BalancedServer`: a worker that holds
more sessions than the least loaded other worker steps back for a few
milliseconds before it takes a waiting connection, and takes it then only if
no other worker has.  The loads are the per-worker totals the connection
limiter already keeps in shared memory (``net/limits.py``), plus the
connections this worker has accepted and not yet counted (a TLS handshake
in progress).  A worker that is stuck or dead (its row is zeroed until its
successor starts) costs the others that short delay, never a connection.

The workers start one after the other, a few hundred milliseconds apart, and
the listening sockets take connections (the kernel queues them) before any
worker accepts.  Clients that reconnect at once after a restart used to land
on whichever worker was up first, all twenty of imaptest's in one of six
tries, and stayed there.  So a worker starts accepting only once every
worker has said it is ready (a flag beside the counts), or after
``START_WAIT`` seconds, whichever comes first: a worker that never comes up
delays the first connections by that much, once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from pillarbox.net.limits import ConnectionLimiter

log = logging.getLogger("pillarbox.net")

STEP_BACK = 0.005        # seconds a more loaded worker leaves a connection to the others
START_WAIT = 2.0         # seconds a started worker waits for the others at most
_START_POLL = 0.01
_RESOURCE_PAUSE = 1.0    # out of file descriptors: stop accepting for a while (as asyncio does)
_ACCEPT_BURST = 16       # connections taken per wake-up at most


class BalancedServer:
    """Accepts from ``sock`` and hands each connection to ``factory``'s protocol."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                 limiter: ConnectionLimiter, *, ssl_context: ssl.SSLContext | None = None,
                 ssl_handshake_timeout: float = 60.0) -> None:
        self._sock = sock
        self._factory = factory
        self._limiter = limiter
        self._ssl = ssl_context
        self._handshake_timeout = ssl_handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._pending = 0          # accepted, not yet counted by the protocol
        self._reading = False
        self._closed = False
        self._waiting: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._start_by = self._loop.time() + START_WAIT
        self._await_others()

    def _await_others(self) -> None:
        self._waiting = None
        if self._closed:
            return
        if self._limiter.all_ready() or self._loop.time() >= self._start_by:
            self._resume(force=False)
        else:
            self._waiting = self._loop.call_later(_START_POLL, self._await_others)

    # ------------------------------------------------------------ readiness

    def _resume(self, force: bool) -> None:
        self._waiting = None
        if self._closed:
            return
        if force:
            # After stepping back: take what nobody else took, then balance again.
            self._accept(force=True)
            if self._closed or self._waiting is not None:
                return
        if not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._accept, False)
            self._reading = True

    def _pause(self, seconds: float, *, force: bool) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        self._waiting = self._loop.call_later(seconds, self._resume, force)

    def _more_loaded(self) -> bool:
        loads = self._limiter.loads()
        if len(loads) < 2:
            return False
        mine = loads[self._limiter.worker] + self._pending
        others = min(n for i, n in enumerate(loads) if i != self._limiter.worker)
        return mine > others

    # ------------------------------------------------------------ accepting

    def _accept(self, force: bool) -> None:
        for _ in range(_ACCEPT_BURST):
            if not force and self._more_loaded():
                self._pause(STEP_BACK, force=True)
                return
            force = False
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept connections: %s; pausing %.0f s",
                              exc.strerror, _RESOURCE_PAUSE)
                    self._pause(_RESOURCE_PAUSE, force=False)
                    return
                continue        # ECONNABORTED and the like: that client is gone
            conn.setblocking(False)
            self._pending += 1
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            if self._ssl is None:
                await self._loop.connect_accepted_socket(self._factory, conn)
            else:
                await self._loop.connect_accepted_socket(
                    self._factory, conn, ssl=self._ssl,
                    ssl_handshake_timeout=self._handshake_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("connection not set up: %s", exc)
            conn.close()
        finally:
            self._pending -= 1

    # ------------------------------------------------------------ end

    def close(self) -> None:
        """Stop accepting (the socket itself belongs to the supervisor)."""
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
