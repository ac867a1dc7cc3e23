"""The asyncio adapter between a socket and the SMTP client core.

Thin on purpose (DESIGN.md, layer 2): it connects, feeds the server's bytes
to :class:`~pillarbox.protocols.smtp.client.SMTPClientConnection`, writes
what the core asks for, and owns what only the network side can do:

- the connect time-out, and the time-outs of RFC 5321 §4.5.3.2, chosen by
  the command whose reply is awaited (greeting 5 min, MAIL 5 min, RCPT
  5 min, DATA initiation 2 min, each data block 3 min, the end of data
  10 min), all configurable; nothing waits without a bound;
- TLS: STARTTLS (RFC 3207) through ``loop.start_tls`` (by the stream's
  ``start_tls``), or implicit TLS from the first byte (RFC 8314, a
  smarthost on 465), and what was negotiated (:class:`TLSInfo`).

Every failure of the conversation, other than a reply, is a
:class:`SessionFailed` that names the stage and what happened, so that the
delivery layer can write an outcome such as ``451 4.4.2 … timeout after RCPT``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from pillarbox.protocols.smtp import client as core
from pillarbox.protocols.smtp.client import (
    NEED_DATA,
    ClientLimits,
    Envelope,
    Extensions,
    SASLClient,
    ServerReply,
    SMTPClientConnection,
    SMTPClientError,
)

__all__ = ["SMTPClient", "SessionFailed", "TLSInfo", "Timeouts", "Transaction"]

_READ = 65536
WRITE_BATCH = 65536   # content octets buffered before a write (the last ones go with the end)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait for each step (RFC 5321 §4.5.3.2 defaults)."""

    connect: float = 30.0
    greeting: float = 300.0        # §4.5.3.2.1 initial 220
    command: float = 300.0         # EHLO, STARTTLS, AUTH, RSET, QUIT: as MAIL
    mail: float = 300.0            # §4.5.3.2.2
    rcpt: float = 300.0            # §4.5.3.2.3
    data_init: float = 120.0       # §4.5.3.2.4 the 354
    data_block: float = 180.0      # §4.5.3.2.5 each write of content
    data_end: float = 600.0        # §4.5.3.2.6 the reply to the final "."
    tls_handshake: float = 60.0

    def for_reply(self, command: str | None) -> float:
        return {
            "GREETING": self.greeting, "MAIL": self.mail, "RCPT": self.rcpt,
            "DATA": self.data_init, "DOT": self.data_end, "BDAT LAST": self.data_end,
            "BDAT": self.data_block, "DISCARD": self.data_end,
        }.get(command or "", self.command)


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What a TLS handshake gave: ``TLSv1.3 TLS_AES_256_GCM_SHA384 verified``."""

    protocol: str
    cipher: str
    verified: bool           # the certificate chain and name were checked and good
    peer_name: str | None    # the certificate's subject CN or first DNS name

    def __str__(self) -> str:
        return f"{self.protocol} {self.cipher} {'verified' if self.verified else 'unverified'}"


class SessionFailed(Exception):
    """The conversation ended without the awaited reply.

    ``kind``: ``"connect"`` (no connection), ``"timeout"``, ``"lost"`` (the
    connection closed), ``"closing"`` (an unsolicited 421, in ``reply``),
    ``"protocol"`` (the server broke the protocol), ``"tls"`` (the handshake
    failed).  ``stage`` is the command whose reply was awaited.
    """

    def __init__(self, kind: str, stage: str, detail: str,
                 reply: ServerReply | None = None) -> None:
        super().__init__(f"{detail} ({kind} at {stage})")
        self.kind = kind
        self.stage = stage
        self.detail = detail
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Transaction:
    """The replies of one mail transaction (per-recipient results follow from them)."""

    mail: ServerReply
    rcpts: tuple[ServerReply | None, ...]
    data: ServerReply | None       # 354 (or the refusal of DATA); None with BDAT
    final: ServerReply | None      # the reply to the end of the content, if sent


E = TypeVar("E")


class SMTPClient:
    """One client connection, driven by awaiting its steps in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 helo_name: str, timeouts: Timeouts, peer: str,
                 limits: ClientLimits = ClientLimits(), use_chunking: bool = True) -> None:
        self._reader = reader
        self._writer = writer
        self.core = SMTPClientConnection(helo_name, limits, use_chunking=use_chunking)
        self.timeouts = timeouts
        self.peer = peer                      # "mx.example.net[192.0.2.1]:25"
        self.host_name = peer.split("[", 1)[0]   # the MX host name, as routed
        self.address = ""                     # the IP literal connected to
        self.port = 0
        self.greeting: ServerReply | None = None
        self.tls: TLSInfo | None = None
        self.messages = 0                     # transactions completed on this connection
        self.last_used = time.monotonic()
        # A transaction was begun and not ended by a reply to its content (its
        # recipients all refused, say): the server may hold its MAIL still, so
        # the next one needs an RSET first.
        self.needs_reset = False
        self._first_reply: float | None = None    # see send(first_reply=...)

    # -------------------------------------------------------------- connect

    @classmethod
    async def connect(cls, address: str, port: int, *, helo_name: str,
                      timeouts: Timeouts = Timeouts(), host_name: str | None = None,
                      implicit_tls: ssl.SSLContext | None = None,
                      limits: ClientLimits = ClientLimits(),
                      use_chunking: bool = True) -> SMTPClient:
        """Connect to ``address`` (an IP literal) and read the greeting.

        With ``implicit_tls`` the handshake comes first (RFC 8314 §3), with
        ``host_name`` as the SNI and the name checked (if the context checks).
        """
        peer = f"{host_name or address}[{address}]:{port}"
        try:
            async with asyncio.timeout(timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    address, port, ssl=implicit_tls,
                    server_hostname=(host_name or address) if implicit_tls else None,
                    ssl_handshake_timeout=timeouts.tls_handshake if implicit_tls else None,
                    limit=_READ * 2,
                )
        except TimeoutError:
            raise SessionFailed("connect", "connect",
                                f"no connection to {peer} in {timeouts.connect:g}s") from None
        except ssl.SSLError as exc:
            raise SessionFailed("tls", "connect", f"TLS with {peer} failed: {exc}") from None
        except OSError as exc:
            raise SessionFailed("connect", "connect",
                                f"cannot connect to {peer}: {exc.strerror or exc}") from None
        client = cls(reader, writer, helo_name=helo_name, timeouts=timeouts, peer=peer,
                     limits=limits, use_chunking=use_chunking)
        client.host_name, client.address, client.port = host_name or address, address, port
        if implicit_tls is not None:
            client.tls = _tls_info(writer, implicit_tls)
            client.core.tls_active = True
        try:
            client.greeting = (await client._expect(core.Greeting)).reply
        except BaseException:
            client.abort()
            raise
        return client

    # ------------------------------------------------------------- commands

    @property
    def extensions(self) -> Extensions:
        return self.core.extensions

    @property
    def closed(self) -> bool:
        return self.core.closed or self._writer.is_closing()

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS session once STARTTLS (or implicit TLS) is up: for checks of the
        server's certificate chain after the handshake (DANE, RFC 7672 §3)."""
        obj = self._writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    async def hello(self) -> ServerReply:
        """EHLO, or HELO where EHLO is not known (RFC 5321 §3.2)."""
        self.core.hello()
        await self._write()
        return (await self._expect(core.HelloDone)).reply

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> ServerReply:
        """STARTTLS; on 220 the handshake and a new EHLO (RFC 3207 §4.2).

        Returns the refusal if STARTTLS is refused, else the reply to the EHLO
        under TLS.  A failed handshake is a :class:`SessionFailed` ``"tls"``.
        """
        self.core.starttls()
        await self._write()
        reply = (await self._expect(core.StartTLSDone)).reply
        if reply.code != 220:
            return reply
        try:
            await self._writer.start_tls(context, server_hostname=server_hostname,
                                         ssl_handshake_timeout=self.timeouts.tls_handshake)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            self.abort()
            raise SessionFailed("tls", "STARTTLS",
                                f"TLS handshake with {self.peer} failed: {exc}") from None
        self.core.tls_established()
        self.tls = _tls_info(self._writer, context)
        return await self.hello()

    async def auth(self, mechanism: SASLClient) -> ServerReply:
        """AUTH (RFC 4954); 235 or the refusal."""
        self.core.auth(mechanism)
        await self._write()
        return (await self._expect(core.AuthDone)).reply

    async def send(self, envelope: Envelope, content: Iterable[bytes], *,
                   first_reply: float | None = None) -> Transaction:
        """One transaction: envelope, then the content if some recipient was accepted.

        ``first_reply``: the seconds to wait for the reply to MAIL, when shorter
        than its time-out (a connection that was idle may be dead without a word).
        """
        self.needs_reset = True
        self.core.send_envelope(envelope)
        self._first_reply = first_reply
        await self._write()
        env = await self._expect(core.EnvelopeDone)
        if not env.accepted:
            return Transaction(env.mail, env.rcpts, env.data, None)
        # Written once WRITE_BATCH octets are waiting, and with the end of the
        # message: a small message and its final dot (or BDAT LAST) go in one
        # write, not one for the content and another for the dot.
        waiting = 0
        for chunk in content:
            self.core.send_content(chunk)
            waiting += len(chunk)
            if waiting >= WRITE_BATCH:
                await self._write(self.timeouts.data_block, "data block")
                waiting = 0
        self.core.end_content()
        await self._write(self.timeouts.data_block, "data block")
        final = (await self._expect(core.MessageDone)).reply
        self.needs_reset = False     # RFC 5321 4.1.1.4: the reply to the end ends it
        self.messages += 1
        self.last_used = time.monotonic()
        return Transaction(env.mail, env.rcpts, env.data, final)

    async def reset(self) -> ServerReply:
        """RSET (RFC 5321 §4.1.1.5): before a message on a connection that carried one."""
        self.core.reset()
        await self._write()
        return (await self._expect(core.ReplyEvent)).reply

    async def quit(self, timeout: float = 5.0) -> None:
        """QUIT politely, then close; never raises, never waits more than ``timeout``."""
        try:
            if not self.closed and self.core.state in (core.State.READY, core.State.GREETED):
                self.core.quit()
                async with asyncio.timeout(timeout):
                    await self._write()
                    await self._expect(core.ReplyEvent)
        except (SessionFailed, SMTPClientError, TimeoutError, OSError):
            pass
        self.abort()

    def abort(self) -> None:
        """Close at once."""
        self.core.state = core.State.CLOSED
        transport = self._writer.transport
        if not transport.is_closing():
            transport.close()

    # ------------------------------------------------------------- plumbing

    async def _write(self, timeout: float | None = None, stage: str | None = None) -> None:
        data = self.core.data_to_send()
        if not data:
            return
        stage = stage or self.core.awaiting or "write"
        try:
            self._writer.write(data)
            async with asyncio.timeout(timeout or self.timeouts.for_reply(stage)):
                await self._writer.drain()
        except TimeoutError:
            self.abort()
            raise SessionFailed("timeout", stage, f"{self.peer} did not read for "
                                f"{timeout or self.timeouts.for_reply(stage):g}s") from None
        except (OSError, ConnectionError) as exc:
            self.abort()
            raise SessionFailed("lost", stage, f"connection to {self.peer} lost: {exc}") from None

    async def _event(self) -> core.Event:
        """The next event of the core, reading as needed, each reply within its time."""
        replies, deadline, limit = -1, 0.0, 0.0
        loop = asyncio.get_running_loop()
        while True:
            stage = self.core.awaiting or "reply"
            try:
                event = self.core.next_event()
            except SMTPClientError as exc:
                self.abort()
                raise SessionFailed("protocol", stage, f"{self.peer}: {exc}") from None
            if event is not NEED_DATA:
                assert not isinstance(event, core._Sentinel)
                return event
            if self.core.closed:
                raise SessionFailed("lost", stage, f"the session with {self.peer} is closed")
            # Without PIPELINING the core releases the next command on a reply.
            await self._write()
            if replies != self.core.replies:
                replies = self.core.replies
                limit = self.timeouts.for_reply(stage)
                if self._first_reply is not None:
                    limit, self._first_reply = min(limit, self._first_reply), None
                deadline = loop.time() + limit
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self._reader.read(_READ)
            except TimeoutError:
                self.abort()
                raise SessionFailed("timeout", stage, f"no reply from {self.peer} to {stage} "
                                    f"in {limit:g}s") from None
            except (OSError, ConnectionError) as exc:
                data = b""
                if not self.core.closed:
                    self.abort()
                    raise SessionFailed("lost", stage,
                                        f"connection to {self.peer} lost: {exc}") from None
            if data:
                self.core.receive_data(data)
            else:
                self.core.receive_eof()

    async def _expect(self, kind: type[E]) -> E:
        stage = self.core.awaiting or "reply"
        event = await self._event()
        if isinstance(event, kind):
            return event
        self.abort()
        if isinstance(event, core.ServerClosing):
            raise SessionFailed("closing", stage, f"{self.peer} closed the session: "
                                f"{event.reply.quote()}", event.reply)
        if isinstance(event, core.ConnectionClosed):
            raise SessionFailed("lost", event.waiting or stage,
                                f"{self.peer} closed the connection")
        raise SessionFailed("protocol", stage, f"unexpected {type(event).__name__} "
                            f"from {self.peer}")


def _tls_info(writer: asyncio.StreamWriter, context: ssl.SSLContext) -> TLSInfo:
    obj = writer.get_extra_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return TLSInfo("?", "?", False, None)
    cipher = obj.cipher()
    verified = context.verify_mode == ssl.CERT_REQUIRED
    return TLSInfo(obj.version() or "?", cipher[0] if cipher else "?", verified,
                   _peer_name(obj.getpeercert(binary_form=True)))


def _peer_name(der: bytes | None) -> str | None:
    """The subject CN, else the first DNS name, of the server's certificate."""
    if not der:
        return None
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if cns:
            return str(cns[0].value)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = sans.value.get_values_for_type(x509.DNSName)
        return names[0] if names else None
    except Exception:  # a certificate we cannot read names nobody; not an error
        return None
