"""Remote delivery against real peers on loopback.

Peers: Pillarbox's own SMTP server core on an asyncio server in this process
(``CorePeer``: STARTTLS with a self-signed certificate, AUTH PLAIN, chosen
greetings and refusals), ``pillarbox serve`` itself, and Postfix's
``smtp-sink`` for a server without 8BITMIME, SMTPUTF8, DSN or CHUNKING.
Routes are built here (the MX resolver is another module); everything from
the route on is the real delivery path.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import io
import logging
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from pillarbox.auth.scram import ScramError, ScramSecrets, ScramServer
from pillarbox.deliver.outbound import OutboundMessage, OutboundRecipient
from pillarbox.deliver.remote import RelayHost, RemoteDelivery, TLSPolicy
from pillarbox.net.smtp_client import Timeouts
from pillarbox.net.tls import ensure_self_signed, server_context
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.reply import Reply
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from tests.conftest import free_port, need_tool

# ---------------------------------------------------------------- the peers


@dataclass(frozen=True, slots=True)
class MXHost:
    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    domain: str
    hosts: tuple[MXHost, ...]
    implicit: bool = False


class RouteError(Exception):
    def __init__(self, reply: str, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


class Resolver:
    def __init__(self, routes: Mapping[str, Route | RouteError]) -> None:
        self.routes = routes
        self.asked: list[str] = []

    async def route(self, domain: str) -> Route:
        self.asked.append(domain)
        found = self.routes[domain]
        if isinstance(found, RouteError):
            raise found
        return found


def one_mx(domain: str, *addresses: str, name: str = "localhost") -> Route:
    return Route(domain, (MXHost(name, 10, addresses or ("127.0.0.1",)),))


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    params: list[Any] = field(default_factory=list)


class CorePeer:
    """The sans-IO server core on an asyncio server: a real SMTP peer."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 starttls: ssl.SSLContext | None = None, implicit: ssl.SSLContext | None = None,
                 greeting: Reply | None = None, refuse: tuple[str, ...] = (),
                 limits: Limits = Limits(), auth: tuple[str, str] | None = None,
                 drop_in_data: bool = False, without: tuple[str, ...] = (),
                 bad_tls: bool = False, hold: float = 0.0, mail_reply: Reply | None = None,
                 end_reply: Reply | None = None, mechanisms: str = "PLAIN") -> None:
        self.host, self.port = host, port
        self.starttls, self.implicit = starttls, implicit
        self.greeting, self.refuse, self.limits = greeting, refuse, limits
        self.auth, self.drop_in_data, self.without = auth, drop_in_data, without
        self.bad_tls, self.hold, self.mechanisms = bad_tls, hold, mechanisms
        self.mechanisms_used: list[str] = []
        self.mail_reply, self.end_reply = mail_reply, end_reply
        self.open = 0
        self.most_open = 0
        self.protocols: list[_PeerProtocol] = []
        self.messages: list[Received] = []
        self.connections = 0
        self.resets = 0
        self.auth_lines: list[bytes] = []
        self.authenticated = 0
        self.tls_sessions = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> CorePeer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _PeerProtocol(self), self.host,
                                                self.port, ssl=self.implicit)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_all(self) -> None:
        """Close every connection without a word, as a server that timed out idle ones."""
        for proto in self.protocols:
            if proto.transport is not None:
                proto.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server.close_clients() if hasattr(self._server, "close_clients") else None


class _PeerProtocol(asyncio.Protocol):
    def __init__(self, peer: CorePeer) -> None:
        self.peer = peer
        self.core = SMTPServerConnection("peer.test", peer.limits,
                                         tls_available=peer.starttls is not None,
                                         tls_active=peer.implicit is not None)
        self.transport: asyncio.Transport | None = None
        self.current: Received | None = None
        self.data = bytearray()
        self.tls_pending = False
        self.held = bytearray()      # arrived under TLS before start_tls() returned
        self.sasl: list[Any] | None = None   # [mechanism, state...] during AUTH

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer.connections += 1
        self.peer.protocols.append(self)
        self.peer.open += 1
        self.peer.most_open = max(self.peer.most_open, self.peer.open)
        self.core.greeting(self.peer.greeting)
        self._write()
        if self.peer.greeting is not None and self.peer.greeting.code != 220:
            self.core.state = self.core.state.GREETED

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.open -= 1

    def _write(self) -> None:
        out = self.core.data_to_send()
        if b" Hello " in out and out.startswith(b"250-"):
            lines = [ln for ln in out.split(b"\r\n")[:-1]
                     if ln[4:].split(b" ")[0].decode() not in self.peer.without]
            if self.peer.auth:
                lines.append(b"250 AUTH " + self.peer.mechanisms.encode())
            out = b"".join(b"250-" + ln[4:] + b"\r\n" for ln in lines[:-1])
            out += b"250 " + lines[-1][4:] + b"\r\n"
        if out and self.transport is not None:
            self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.tls_pending:
            self.held += data
            return
        if self.sasl is not None or (self.peer.auth and data.upper().startswith(b"AUTH ")
                                     and not self.core.in_data):
            self.peer.auth_lines.append(data)
            self._auth(data.strip())
            return
        self.core.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        assert self.transport is not None
        core = self.core
        while True:
            event = core.next_event()
            if event is ev.NEED_DATA or event is ev.PAUSED:
                break
            if isinstance(event, ev.MailFrom):
                path = event.reverse_path
                self.current = Received(str(path) if path else "", [], b"", [event.params])
                core.respond(self.peer.mail_reply or Reply(250, "2.1.0", "Ok"))
            elif isinstance(event, ev.RcptTo):
                address = str(event.forward_path)
                if address in self.peer.refuse:
                    core.respond(Reply(550, "5.1.1", f"<{address}>: no such user"))
                else:
                    assert self.current is not None
                    self.current.rcpts.append(address)
                    self.current.params.append(event.params)
                    core.respond(Reply(250, "2.1.5", "Ok"))
            elif isinstance(event, ev.MessageStart):
                self.data = bytearray()
            elif isinstance(event, ev.MessageData):
                if self.peer.drop_in_data:
                    self.transport.abort()
                    return
                self.data += event.data
            elif isinstance(event, ev.MessageEnd):
                assert self.current is not None
                if self.peer.end_reply is not None:
                    core.respond(self.peer.end_reply)
                    continue
                self.current.data = bytes(self.data)
                self.peer.messages.append(self.current)
                reply = Reply(250, "2.0.0", f"Ok: queued as Q{len(self.peer.messages)}")
                if self.peer.hold:
                    asyncio.get_running_loop().call_later(self.peer.hold, self._answer, reply)
                    return
                core.respond(reply)
            elif isinstance(event, ev.Reset):
                self.peer.resets += 1
            elif isinstance(event, ev.StartTLS):
                self._write()
                if self.peer.bad_tls:   # a broken TLS stack: garbage for a handshake
                    asyncio.get_running_loop().call_later(
                        0.05, self.transport.write, b"this is not a TLS record\r\n" * 20)
                    return
                self.tls_pending = True
                asyncio.get_running_loop().create_task(self._tls())
                return
            elif isinstance(event, ev.Closing):
                self._write()
                self.transport.close()
                return
        self._write()

    def _auth(self, line: bytes) -> None:
        """AUTH (RFC 4954) with PLAIN, LOGIN or SCRAM-SHA-256 (our own server side)."""
        assert self.transport is not None and self.peer.auth is not None
        transport = self.transport
        user, password = self.peer.auth

        def done(ok: bool) -> None:
            self.sasl = None
            ok = ok and self.core.tls_active
            self.peer.authenticated += ok
            transport.write(b"235 2.7.0 ok\r\n" if ok else b"535 5.7.8 bad credentials\r\n")

        def challenge(data: bytes) -> None:
            transport.write(b"334 " + base64.b64encode(data) + b"\r\n")

        if self.sasl is None:
            words = line.split()
            mech = words[1].decode().upper()
            self.peer.mechanisms_used.append(mech)
            initial = base64.b64decode(words[2]) if len(words) > 2 else None
            if mech == "PLAIN":
                done(initial == f"\0{user}\0{password}".encode())
            elif mech == "LOGIN":
                self.sasl = ["LOGIN"]
                challenge(b"Username:")
            elif mech == "SCRAM-SHA-256":
                server = ScramServer()
                first = server.receive_client_first(initial or b"")
                stored = ScramSecrets.derive(password if first.username == user else "x" * 9,
                                             iterations=4096)
                self.sasl = ["SCRAM", server]
                challenge(server.server_first(stored))
            else:
                self.transport.write(b"504 5.5.4 unknown mechanism\r\n")
            return
        state, answer = self.sasl, base64.b64decode(line)
        if state[0] == "LOGIN":
            state.append(answer)
            if len(state) == 2:
                challenge(b"Password:")
            else:
                done(state[1:] == [user.encode(), password.encode()])
        elif len(state) == 2:
            try:
                final = state[1].receive_client_final(answer)
            except ScramError:
                done(False)
                return
            state.append(final)
            challenge(final)
        else:
            done(answer == b"")

    def _answer(self, reply: Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.core.respond(reply)
            self._pump()

    async def _tls(self) -> None:
        assert self.transport is not None and self.peer.starttls is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, self.peer.starttls,
                                             server_side=True)
        except (OSError, ssl.SSLError):
            return
        assert transport is not None
        self.transport = transport
        self.peer.tls_sessions += 1
        self.core.tls_established()
        self.tls_pending = False
        if self.held:
            held, self.held = bytes(self.held), bytearray()
            self.data_received(held)


def msg(*rcpts: str, data: bytes | None = None, **kw: Any) -> OutboundMessage:
    body = data if data is not None else (
        b"From: a@example.org\r\nTo: b@remote.test\r\nSubject: test\r\n\r\nHello.\r\n.dot\r\n")
    return OutboundMessage(
        kw.pop("queue_id", "Q1"), kw.pop("reverse_path", "a@example.org"),
        tuple(OutboundRecipient(i, r, notify=kw.get("notify")) for i, r in enumerate(rcpts)),
        len(body), lambda: io.BytesIO(body), **{k: v for k, v in kw.items() if k != "notify"})


FAST = Timeouts(connect=5, greeting=5, command=5, mail=5, rcpt=5, data_init=5,
                data_block=5, data_end=5, tls_handshake=5)


def remote(resolver: Any, port: int, **kw: Any) -> RemoteDelivery:
    kw.setdefault("timeouts", FAST)
    return RemoteDelivery(resolver, helo_name="out.test", port=port, **kw)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_self_signed(tmp_path_factory.mktemp("tls"), "localhost")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# ---------------------------------------------------------- core peer tests


def test_starttls_self_signed_and_reuse(tls_files: tuple[Path, Path],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pillarbox.remote")

    async def scenario() -> None:
        peer = await CorePeer(starttls=server_context(*tls_files)).start()
        rd = remote(Resolver({"remote.test": one_mx("remote.test")}), peer.port)
        results = [await rd.deliver("remote.test", msg("b@remote.test", queue_id=f"Q{i}"))
                   for i in range(3)]
        await rd.close()
        await peer.stop()
        assert peer.connections == 1 and peer.tls_sessions == 1
        # Each transaction ended with the reply to its content (RFC 5321
        # 4.1.1.4): messages 2 and 3 go without an RSET.
        assert peer.resets == 0
        assert len(peer.messages) == 3
        assert peer.messages[0].data.endswith(b"Hello.\r\n.dot\r\n")
        for d in results:
            assert d.outcomes[0].result == "delivered"
            assert d.outcomes[0].reply.startswith("250 2.0.0 Ok: queued as Q")
            assert d.tls is not None and d.tls.startswith("TLS") and d.tls.endswith("unverified")

    run(scenario())
    lines = [r for r in caplog.records if r.getMessage() == "attempt"]
    assert len(lines) == 3
    fields = lines[1].pbx_fields  # type: ignore[attr-defined]
    assert fields["queue_id"] == "Q1" and fields["domain"] == "remote.test"
    assert fields["mx"] == "localhost" and fields["address"] == "127.0.0.1"
    assert fields["tls"].startswith("TLS") and fields["reused"] is True
    assert fields["result"] == "delivered"


def _drop_silently(peer: CorePeer) -> None:
    peer.drop_all()


def _close_with_421(peer: CorePeer) -> None:
    for protocol in list(peer.protocols):
        if protocol.transport is not None:
            protocol.transport.write(b"421 4.4.2 idle too long\r\n")
            protocol.transport.close()


@pytest.mark.parametrize("drop", [_drop_silently, _close_with_421], ids=["silently", "421"])
def test_a_dropped_idle_connection_is_replaced(drop: Callable[[CorePeer], None]) -> None:
    """The server dropped the idle connection, without a word or with a 421 (read
    where MAIL's reply should be): the next message goes over a new one."""
    async def scenario() -> None:
        peer = await CorePeer().start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        first = await rd.deliver("r.test", msg("b@r.test"))
        drop(peer)
        await asyncio.sleep(0.05)
        second = await rd.deliver("r.test", msg("b@r.test"))
        await rd.close()
        await peer.stop()
        assert first.outcomes[0].result == second.outcomes[0].result == "delivered"
        assert peer.connections == 2 and len(peer.messages) == 2

    run(scenario())


def test_a_connection_whose_transaction_stopped_short_is_reset_before_reuse() -> None:
    """Every recipient refused: the server may still hold the MAIL, so the next
    message on that connection comes after an RSET; after a whole transaction none."""
    async def scenario() -> None:
        peer = await CorePeer(refuse=("nobody@r.test",)).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        refused = await rd.deliver("r.test", msg("nobody@r.test", queue_id="Q0"))
        taken = await rd.deliver("r.test", msg("b@r.test", queue_id="Q1"))
        again = await rd.deliver("r.test", msg("b@r.test", queue_id="Q2"))
        await rd.close()
        await peer.stop()
        assert refused.outcomes[0].result == "failed"
        assert taken.outcomes[0].result == again.outcomes[0].result == "delivered"
        assert peer.connections == 1 and peer.resets == 1 and len(peer.messages) == 2

    run(scenario())


def test_verify_policy_checks_the_certificate(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        peer = await CorePeer(starttls=server_context(*tls_files)).start()
        routes = {"good.test": one_mx("good.test"),
                  "wrong.test": one_mx("wrong.test", name="mx.wrong.test")}
        rd = remote(Resolver(routes), peer.port, default_tls=TLSPolicy.VERIFY,
                    ca_file=tls_files[0])
        good = await rd.deliver("good.test", msg("b@good.test"))
        bad = await rd.deliver("wrong.test", msg("b@wrong.test"))
        await rd.close()
        await peer.stop()
        assert good.outcomes[0].result == "delivered"
        assert good.tls is not None and good.tls.endswith(" verified")
        assert bad.outcomes[0].result == "deferred"
        assert bad.outcomes[0].reply.startswith("451 4.7.5 TLS handshake")
        assert "CERTIFICATE_VERIFY_FAILED" in bad.outcomes[0].reply

    run(scenario())


def test_tls_required_but_not_offered_and_none_policy(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        plain = await CorePeer().start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), plain.port,
                    default_tls=TLSPolicy.ENCRYPT)
        d = await rd.deliver("r.test", msg("b@r.test"))
        assert d.outcomes[0].result == "deferred"
        assert d.outcomes[0].reply.startswith("450 4.7.4 TLS is required, but localhost")
        assert plain.messages == []
        await rd.close()
        await plain.stop()
        tls_peer = await CorePeer(starttls=server_context(*tls_files)).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), tls_peer.port,
                    tls_policies={"r.test": TLSPolicy.NONE})
        d = await rd.deliver("r.test", msg("b@r.test"))
        assert d.outcomes[0].result == "delivered" and d.tls is None
        assert tls_peer.tls_sessions == 0
        await rd.close()
        await tls_peer.stop()

    run(scenario())


def test_first_address_refused_then_second() -> None:
    async def scenario() -> None:
        peer = await CorePeer("127.0.0.1").start()
        # Nothing listens on ::1 at this port: connection refused, then 127.0.0.1.
        rd = remote(Resolver({"r.test": one_mx("r.test", "::1", "127.0.0.1")}), peer.port)
        d = await rd.deliver("r.test", msg("b@r.test"))
        await rd.close()
        await peer.stop()
        assert d.outcomes[0].result == "delivered" and len(peer.messages) == 1

    run(scenario())


@pytest.mark.parametrize("greeting", [Reply(421, "", "mx1 busy, try later"),
                                      Reply(554, "", "mx1 does not want you")])
def test_refusing_greeting_moves_to_the_next_mx(greeting: Reply) -> None:
    async def scenario() -> None:
        port = free_port()
        first = await CorePeer("::1", port, greeting=greeting).start()
        second = await CorePeer("127.0.0.1", port).start()
        route = Route("r.test", (MXHost("mx1.r.test", 10, ("::1",)),
                                 MXHost("mx2.r.test", 20, ("127.0.0.1",))))
        rd = remote(Resolver({"r.test": route}), port)
        d = await rd.deliver("r.test", msg("b@r.test"))
        await rd.close()
        await first.stop()
        await second.stop()
        assert first.connections == 1 and first.messages == []
        assert d.outcomes[0].result == "delivered" and d.outcomes[0].remote_mta == "mx2.r.test"
        assert len(second.messages) == 1

    run(scenario())


def test_an_mx_that_is_ourselves_is_never_tried_nor_the_ones_after_it() -> None:
    """RFC 5321 §5.1: only the MX hosts preferred to us; none is a loop (5.4.6)."""
    async def scenario() -> None:
        peer = await CorePeer("127.0.0.1").start()
        ours = remote(Resolver({
            "loop.test": Route("loop.test", (MXHost("out.test", 10, ("127.0.0.1",)),
                                             MXHost("backup.loop.test", 20, ("127.0.0.1",)))),
            "r.test": Route("r.test", (MXHost("mx1.r.test", 5, ("127.0.0.1",)),
                                       MXHost("OUT.test.", 10, ("127.0.0.1",)))),
        }), peer.port)
        d = await ours.deliver("loop.test", msg("b@loop.test"))
        assert d.outcomes[0].result == "failed" and d.outcomes[0].status == "5.4.6"
        assert "loops back to myself" in d.outcomes[0].reply and peer.connections == 0
        d = await ours.deliver("r.test", msg("b@r.test"))
        assert d.outcomes[0].result == "delivered" and d.outcomes[0].remote_mta == "mx1.r.test"
        await ours.close()
        await peer.stop()

    run(scenario())


def test_every_mx_refusing_defers_or_fails() -> None:
    async def scenario() -> None:
        busy = await CorePeer(greeting=Reply(421, "", "busy")).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), busy.port)
        d = await rd.deliver("r.test", msg("b@r.test"))
        assert d.outcomes[0].result == "deferred" and d.outcomes[0].reply == "421 busy"
        await rd.close()
        await busy.stop()
        hostile = await CorePeer(greeting=Reply(554, "", "no SMTP service here")).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), hostile.port)
        d = await rd.deliver("r.test", msg("b@r.test"))
        assert d.outcomes[0].result == "failed"
        assert d.outcomes[0].reply == "554 no SMTP service here"
        assert d.outcomes[0].status == "5.0.0"
        await rd.close()
        await hostile.stop()
        dead = free_port()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), dead)
        d = await rd.deliver("r.test", msg("b@r.test"))
        assert d.outcomes[0].result == "deferred"
        assert d.outcomes[0].reply.startswith("451 4.4.1 No answer from localhost[127.0.0.1]")
        await rd.close()

    run(scenario())


def test_per_recipient_5xx_and_exact_quote() -> None:
    async def scenario() -> None:
        peer = await CorePeer(refuse=("c@r.test",)).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        d = await rd.deliver("r.test", msg("b@r.test", "c@r.test", "d@r.test"))
        await rd.close()
        await peer.stop()
        assert [o.result for o in d.outcomes] == ["delivered", "failed", "delivered"]
        assert d.outcomes[1].reply == "550 5.1.1 <c@r.test>: no such user"
        assert d.outcomes[1].status == "5.1.1" and d.outcomes[1].idx == 1
        assert peer.messages[0].rcpts == ["b@r.test", "d@r.test"]

    run(scenario())


def test_size_limit_fails_with_534() -> None:
    async def scenario() -> None:
        peer = await CorePeer(limits=Limits(max_message_size=50)).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        d = await rd.deliver("r.test", msg("b@r.test"))
        await rd.close()
        await peer.stop()
        assert d.outcomes[0].result == "failed" and d.outcomes[0].status == "5.3.4"
        assert peer.messages == []

    run(scenario())


def test_dsn_parameters_reach_a_dsn_peer() -> None:
    async def scenario() -> None:
        peer = await CorePeer().start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        m = OutboundMessage("Q9", "a@example.org", (
            OutboundRecipient(0, "b@r.test", "SUCCESS,FAILURE", "rfc822;b+2Bx@r.test"),),
            10, lambda: io.BytesIO(b"Subject: x\r\n\r\nhi\r\n"), dsn_ret="HDRS",
            dsn_envid="env 1")
        d = await rd.deliver("r.test", m)
        await rd.close()
        await peer.stop()
        assert d.outcomes[0].result == "delivered"     # the next hop does DSN
        mail, rcpt = peer.messages[0].params
        assert mail.ret == "HDRS" and mail.envid == "env 1"
        assert rcpt.notify == ("SUCCESS", "FAILURE") and rcpt.orcpt == ("rfc822", "b+x@r.test")

    run(scenario())


def test_connection_lost_in_the_transaction_defers() -> None:
    async def scenario() -> None:
        peer = await CorePeer(drop_in_data=True, without=("CHUNKING",)).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        d = await rd.deliver("r.test", msg("b@r.test", "c@r.test"))
        await rd.close()
        await peer.stop()
        assert [o.result for o in d.outcomes] == ["deferred", "deferred"]
        assert d.outcomes[0].reply.startswith("451 4.4.2")
        assert rd.idle_connections == 0

    run(scenario())


class _FailingBody(io.RawIOBase):
    """A spool file whose disk fails after the first block."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(5, "Input/output error")
        return b"Subject: x\r\n\r\n" + b"a" * 60000 + b"\r\n"


@pytest.mark.parametrize("without", [(), ("CHUNKING",)])
def test_a_spool_read_error_never_ends_the_message(without: tuple[str, ...]) -> None:
    async def scenario() -> None:
        peer = await CorePeer(without=without).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        m = OutboundMessage("Q1", "a@example.org", (OutboundRecipient(0, "b@r.test"),), 200000,
                            lambda: cast(Any, _FailingBody()))
        d = await rd.deliver("r.test", m)
        await asyncio.sleep(0.2)
        await rd.close()
        await peer.stop()
        assert d.outcomes[0].result == "deferred"
        assert d.outcomes[0].reply.startswith("451 4.3.0 Local error reading the message")
        assert peer.messages == []            # the server never saw an end of data

    run(scenario())


def test_a_dead_destination_does_not_hold_back_others() -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)      # accepts, never greets

        port = free_port()
        black_hole = await asyncio.start_server(silent, "::1", port)
        good = await CorePeer("127.0.0.1", port).start()
        routes = {"slow.test": one_mx("slow.test", "::1"), "good.test": one_mx("good.test")}
        timeouts = Timeouts(connect=4, greeting=4, command=4, mail=4, rcpt=4)
        rd = remote(Resolver(routes), port, timeouts=timeouts, per_destination=2, total=4)
        t0 = time.monotonic()
        slow = [asyncio.create_task(rd.deliver("slow.test", msg("x@slow.test")))
                for _ in range(4)]
        await asyncio.sleep(0.1)
        fast = [await rd.deliver("good.test", msg("b@good.test", queue_id=f"G{i}"))
                for i in range(3)]
        fast_done = time.monotonic() - t0
        slow_results = await asyncio.gather(*slow)
        await rd.close()
        black_hole.close()
        await good.stop()
        assert all(d.outcomes[0].result == "delivered" for d in fast)
        assert fast_done < 3.0, fast_done      # long before the slow ones time out
        for d in slow_results:
            assert d.outcomes[0].result == "deferred"
            assert d.outcomes[0].reply.startswith("451 4.4.2 Timeout: no reply")

    run(scenario())


def test_route_errors() -> None:
    async def scenario() -> None:
        resolver = Resolver({
            "null.test": RouteError("550 5.1.10 null.test accepts no mail (null MX)", True),
            "slow.test": RouteError("451 4.4.3 DNS timeout for slow.test", False),
        })
        rd = remote(resolver, 25)
        d = await rd.deliver("null.test", msg("a@null.test", "b@null.test"))
        assert [o.result for o in d.outcomes] == ["failed", "failed"]
        assert d.outcomes[0].status == "5.1.10"
        d = await rd.deliver("slow.test", msg("a@slow.test"))
        assert d.outcomes[0].result == "deferred" and d.outcomes[0].status == "4.4.3"
        d = await rd.deliver("broken.test", msg("a@broken.test"))   # the resolver's bug
        assert d.outcomes[0].result == "deferred"
        assert d.outcomes[0].reply.startswith("451 4.4.3 Routing error for broken.test")
        await rd.close()

    run(scenario())


def test_smarthost_with_auth_plain_over_starttls(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        peer = await CorePeer(starttls=server_context(*tls_files),
                              auth=("relayuser", "s3cret")).start()
        relay = RelayHost("127.0.0.1", peer.port, username="relayuser", password="s3cret")
        rd = RemoteDelivery(None, helo_name="out.test", relay=relay, timeouts=FAST)
        d1 = await rd.deliver("anywhere.example", msg("b@anywhere.example"))
        d2 = await rd.deliver("elsewhere.example", msg("c@elsewhere.example"))
        await rd.close()
        assert d1.outcomes[0].result == d2.outcomes[0].result == "delivered"
        assert peer.authenticated == 1 and peer.connections == 1   # one session, reused
        assert [m.rcpts for m in peer.messages] == [["b@anywhere.example"],
                                                   ["c@elsewhere.example"]]
        wrong = RemoteDelivery(None, helo_name="out.test", timeouts=FAST,
                               relay=RelayHost("127.0.0.1", peer.port, username="relayuser",
                                               password="wrong"))
        d = await wrong.deliver("anywhere.example", msg("b@anywhere.example"))
        await wrong.close()
        await peer.stop()
        assert d.outcomes[0].result == "deferred"
        assert "535 5.7.8 bad credentials" in d.outcomes[0].reply
        assert len(peer.messages) == 2

    run(scenario())


@pytest.mark.parametrize("offered, used", [("PLAIN LOGIN SCRAM-SHA-256", "SCRAM-SHA-256"),
                                            ("LOGIN", "LOGIN")])
def test_smarthost_with_scram_or_login(tls_files: tuple[Path, Path], offered: str,
                                       used: str) -> None:
    async def scenario() -> None:
        peer = await CorePeer(starttls=server_context(*tls_files), auth=("relay@x", "pässwörd"),
                              mechanisms=offered).start()
        ok = RemoteDelivery(None, helo_name="out.test", timeouts=FAST, relay=RelayHost(
            "127.0.0.1", peer.port, username="relay@x", password="pässwörd"))
        d = await ok.deliver("anywhere.example", msg("b@anywhere.example"))
        await ok.close()
        bad = RemoteDelivery(None, helo_name="out.test", timeouts=FAST, relay=RelayHost(
            "127.0.0.1", peer.port, username="relay@x", password="wrong"))
        refused = await bad.deliver("anywhere.example", msg("b@anywhere.example"))
        await bad.close()
        await peer.stop()
        assert d.outcomes[0].result == "delivered", d
        assert refused.outcomes[0].result == "deferred"
        assert peer.mechanisms_used == [used, used] and peer.authenticated == 1
        assert len(peer.messages) == 1

    run(scenario())


def test_smarthost_with_implicit_tls(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        peer = await CorePeer(implicit=server_context(*tls_files),
                              auth=("u", "p")).start()
        relay = RelayHost("127.0.0.1", peer.port, implicit_tls=True, username="u", password="p")
        rd = RemoteDelivery(None, helo_name="out.test", relay=relay, timeouts=FAST)
        d = await rd.deliver("x.example", msg("b@x.example"))
        await rd.close()
        await peer.stop()
        assert d.outcomes[0].result == "delivered" and d.tls and "TLS" in d.tls
        assert peer.authenticated == 1

    run(scenario())


def test_no_credentials_without_tls() -> None:
    async def scenario() -> None:
        peer = await CorePeer(auth=("u", "p")).start()
        relay = RelayHost("127.0.0.1", peer.port, tls=TLSPolicy.MAY, username="u", password="p")
        rd = RemoteDelivery(None, helo_name="out.test", relay=relay, timeouts=FAST)
        d = await rd.deliver("x.example", msg("b@x.example"))
        await rd.close()
        await peer.stop()
        assert d.outcomes[0].result == "deferred" and "without TLS" in d.outcomes[0].reply
        assert peer.auth_lines == []

    run(scenario())


def test_failed_handshake_under_may_falls_back_to_plaintext(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        peer = await CorePeer(starttls=server_context(*tls_files), bad_tls=True).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        d = await rd.deliver("r.test", msg("b@r.test"))
        await rd.close()
        await peer.stop()
        assert d.outcomes[0].result == "delivered" and d.tls is None, d   # RFC 7435
        assert peer.connections == 2 and len(peer.messages) == 1

    run(scenario())


def test_connection_limits_per_destination_and_reuse() -> None:
    async def scenario() -> None:
        peer = await CorePeer(hold=0.3).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port, per_destination=2)
        results = await asyncio.gather(*[
            rd.deliver("r.test", msg("b@r.test", queue_id=f"Q{i}")) for i in range(6)])
        assert rd.idle_connections == 2
        await rd.close()
        await peer.stop()
        assert all(d.outcomes[0].result == "delivered" for d in results)
        assert peer.most_open == 2 and peer.connections == 2 and len(peer.messages) == 6
        assert rd._destinations == {}            # nothing kept for an unused destination

    run(scenario())


def test_refused_mail_and_refused_content_apply_to_every_recipient() -> None:
    async def scenario() -> None:
        peer = await CorePeer(mail_reply=Reply(451, "4.7.1", "greylisted, come back later"),
                              ).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        d = await rd.deliver("r.test", msg("b@r.test", "c@r.test"))
        assert [o.result for o in d.outcomes] == ["deferred", "deferred"]
        assert d.outcomes[1].reply == "451 4.7.1 greylisted, come back later"
        await rd.close()
        await peer.stop()
        peer = await CorePeer(end_reply=Reply(554, "5.7.1", ("spam detected", "go away")),
                              refuse=("c@r.test",)).start()
        rd = remote(Resolver({"r.test": one_mx("r.test")}), peer.port)
        d = await rd.deliver("r.test", msg("b@r.test", "c@r.test", "d@r.test"))
        assert [o.result for o in d.outcomes] == ["failed"] * 3
        assert d.outcomes[0].reply == "554-5.7.1 spam detected\n554 5.7.1 go away"
        assert d.outcomes[1].reply == "550 5.1.1 <c@r.test>: no such user"
        await rd.close()
        await peer.stop()

    run(scenario())


def test_hostile_endless_reply_is_a_protocol_error() -> None:
    async def scenario() -> None:
        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                for _ in range(100000):
                    writer.write(b"220-and more and more\r\n")
                    await writer.drain()
            except (ConnectionError, OSError):
                pass

        server = await asyncio.start_server(endless, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rd = remote(Resolver({"r.test": one_mx("r.test")}), port)
        d = await rd.deliver("r.test", msg("b@r.test"))
        await rd.close()
        server.close()
        assert d.outcomes[0].result == "deferred"
        assert d.outcomes[0].reply.startswith("451 4.5.0 Protocol error")
        assert "more than 128 lines" in d.outcomes[0].reply

    run(scenario())


def test_from_config() -> None:
    from pillarbox.config import DeliveryConfig

    async def scenario() -> None:
        config = DeliveryConfig(tls_policy="bank.test=verify, other.test=none",
                                connections_per_destination=3, data_end_timeout=42.0,
                                remote_port=2525)
        rd = RemoteDelivery.from_config(config, Resolver({}), helo_name="out.test")
        assert rd.port == 2525 and rd.per_destination == 3
        assert rd.timeouts.data_end == 42.0 and rd.timeouts.mail == 300.0
        assert rd.tls_policies == {"bank.test": TLSPolicy.VERIFY, "other.test": TLSPolicy.NONE}
        assert rd._policy("BANK.test") is TLSPolicy.VERIFY
        assert rd._policy("else.test") is TLSPolicy.MAY
        relay = RemoteDelivery.from_config(
            DeliveryConfig(relay_host="smtp.example.net:465", relay_implicit_tls=True,
                           relay_username="me"), None, helo_name="out.test")
        assert relay.relay is not None and relay.relay.port == 465
        assert relay.relay.implicit_tls and relay.relay.username == "me"
        assert "password" not in repr(relay.relay)

    run(scenario())


# ------------------------------------------------------------------ smtp-sink


class Sink:
    """Postfix's smtp-sink on a free port, dumping each message to a file."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        args = [need_tool("smtp-sink"), *options, "-d", str(self.dir / "%M."),
                f"127.0.0.1:{self.port}", "10"]
        if os.geteuid() == 0:
            args[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def dumps(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dir.iterdir())]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sink_factory() -> Any:
    # smtp-sink drops to "nobody", who must reach the dump directory: pytest's
    # tmp_path is under a 0700 directory, so this one is made in /tmp.
    top = Path(tempfile.mkdtemp(prefix="pillarbox-sink-"))
    os.chmod(top, 0o755)
    sinks: list[Sink] = []

    def make(*options: str) -> Sink:
        sink = Sink(top / f"sink{len(sinks)}", *options)
        sinks.append(sink)
        return sink

    yield make
    for s in sinks:
        s.stop()
    shutil.rmtree(top, ignore_errors=True)


EIGHT_BIT = (
    "From: Jörg <a@example.org>\r\nTo: b@sink.test\r\nSubject: Grüße aus Köln\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
    "--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Straße, Größe, naïve café.\r\n.a dot line\r\n"
    "--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
).encode() + b"\xff\xfe binary-ish \xe9\r\n--XX--\r\n"


def _decoded_parts(raw: bytes) -> list[tuple[str, object]]:
    m = email.message_from_bytes(raw, policy=email.policy.default)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in m.walk()
            if not p.is_multipart()]


def test_8bit_to_a_peer_without_8bitmime_is_converted_and_equal(
        sink_factory: Callable[..., Sink]) -> None:
    sink = sink_factory("-8", "-p")         # no 8BITMIME, no PIPELINING
    message = msg("b@sink.test", data=EIGHT_BIT, body="8BITMIME")

    async def scenario() -> Any:
        rd = remote(Resolver({"sink.test": one_mx("sink.test")}), sink.port)
        d = await rd.deliver("sink.test", message)
        await rd.close()
        return d

    d = run(scenario())
    assert d.outcomes[0].result == "delivered", d
    (dump,) = _wait_dumps(sink, 1)
    sent = dump.split(b"\n", 1)[1] if dump.startswith(b"X-") else dump
    sent = sent[sent.index(b"From: "):]   # after smtp-sink's own X- and Received lines
    assert all(b < 128 for b in sent), "not 7-bit"
    assert b"BODY=" not in dump.split(b"\nFrom: ")[0]
    original = _decoded_parts(EIGHT_BIT)
    arrived = _decoded_parts(sent.replace(b"\n", b"\r\n"))
    assert arrived == original
    m = email.message_from_bytes(sent, policy=email.policy.default)
    assert str(m["Subject"]) == "Grüße aus Köln"


def test_8bit_to_a_peer_with_8bitmime_is_sent_as_is(sink_factory: Callable[..., Sink]) -> None:
    sink = sink_factory()
    message = msg("b@sink.test", data=EIGHT_BIT, body="8BITMIME")

    async def scenario() -> Any:
        rd = remote(Resolver({"sink.test": one_mx("sink.test")}), sink.port)
        d = await rd.deliver("sink.test", message)
        await rd.close()
        return d

    assert run(scenario()).outcomes[0].result == "delivered"
    (dump,) = _wait_dumps(sink, 1)
    assert "Straße".encode() in dump and b"BODY=8BITMIME" in dump


def test_smtputf8_to_a_peer_without_it_fails_567(sink_factory: Callable[..., Sink]) -> None:
    sink = sink_factory()
    body = "From: jörg@example.org\r\nSubject: x\r\n\r\nhi\r\n".encode()

    async def scenario() -> Any:
        rd = remote(Resolver({"sink.test": one_mx("sink.test")}), sink.port)
        d = await rd.deliver("sink.test", msg("b@sink.test", data=body, smtputf8=True,
                                              reverse_path="jörg@example.org"))
        await rd.close()
        return d

    d = run(scenario())
    assert [o.result for o in d.outcomes] == ["failed"]
    assert d.outcomes[0].status == "5.6.7" and "SMTPUTF8" in d.outcomes[0].reply
    assert sink.dumps() == []


def test_notify_success_to_a_peer_without_dsn_is_relayed(
        sink_factory: Callable[..., Sink]) -> None:
    sink = sink_factory("-N", "-E", "-p")   # no DSN, no enhanced codes, no pipelining

    async def scenario() -> Any:
        rd = remote(Resolver({"sink.test": one_mx("sink.test")}), sink.port)
        a = await rd.deliver("sink.test", msg("b@sink.test", notify="SUCCESS,FAILURE"))
        b = await rd.deliver("sink.test", msg("c@sink.test"))
        await rd.close()
        return a, b

    a, b = run(scenario())
    assert a.outcomes[0].result == "relayed" and b.outcomes[0].result == "delivered"
    assert a.outcomes[0].status == "2.0.0"
    dumps = _wait_dumps(sink, 2)
    assert all(b"NOTIFY" not in d for d in dumps)


def _wait_dumps(sink: Sink, n: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while len(sink.dumps()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return sink.dumps()


# ------------------------------------------------------------ pillarbox serve


def test_delivery_to_pillarbox_serve_with_starttls_verified(server_factory: Any) -> None:
    server = server_factory(accounts=("alice@example.test",))
    cert = server.data_dir / "tls" / "selfsigned.crt"
    route = Route("example.test", (MXHost("mx.test", 10, ("127.0.0.1",)),))

    async def scenario() -> Any:
        rd = remote(Resolver({"example.test": route}), server.port,
                    default_tls=TLSPolicy.VERIFY, ca_file=cert)
        d = await rd.deliver("example.test", msg("alice@example.test", "nobody@example.test",
                                                 queue_id="P1"))
        d2 = await rd.deliver("example.test", msg(
            "alice@example.test", queue_id="P2", data=EIGHT_BIT, body="8BITMIME",
            smtputf8=True, reverse_path="jörg@example.org"))
        await rd.close()
        return d, d2

    d, d2 = run(scenario())
    assert [o.result for o in d.outcomes] == ["delivered", "failed"]
    assert d.outcomes[1].reply.startswith("550 5.1.1")
    assert d.tls is not None and d.tls.endswith(" verified")
    assert d2.outcomes[0].result == "delivered"
    assert server.wait_delivered(2) == 2
    inbox = server.inbox("alice@example.test")
    assert b"Hello.\r\n.dot\r\n" in inbox[0]
    assert inbox[1].endswith(EIGHT_BIT)             # 8BITMIME and SMTPUTF8: octet for octet
    assert "jörg@example.org".encode() in inbox[1]  # the return path, in UTF-8


# ------------------------------------------------------------ Postfix as MX


def _postfix_mx(root: Path, port: int, next_hop: int, tls: tuple[Path, Path],
                **settings: str) -> Any:
    """A private Postfix (tests/interop/postfix.py) with an ``smtpd`` on ``port``
    that relays mail for remote.test to ``next_hop`` on loopback."""
    from tests.interop.postfix import PrivatePostfix

    class PostfixMX(PrivatePostfix):
        def write_config(self) -> None:
            super().write_config()
            with open(self.config_dir / "master.cf", "a", encoding="utf-8") as f:
                f.write(f"127.0.0.1:{port} inet n - n - - smtpd\n")

    cert, key = root / "mx.crt", root / "mx.key"
    shutil.copy(tls[0], cert)
    shutil.copy(tls[1], key)
    config = {
        "myhostname": "postfix-mx.test", "mydestination": "", "inet_interfaces": "127.0.0.1",
        "mynetworks": "127.0.0.0/8", "relay_domains": "remote.test",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "transport_maps": f"inline:{{remote.test=smtp:[127.0.0.1]:{next_hop}}}",
        "smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(key), "smtp_tls_security_level": "none",
        "smtpd_tls_loglevel": "1", **settings,
    }
    return PostfixMX(root, config, postfix=need_tool("postfix"),
                     sendmail=need_tool("sendmail"))


def test_postfix_mx_starttls_and_8bit_downgrade(tls_files: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    """Postfix's smtpd as the MX, with 8BITMIME and SMTPUTF8 discarded from its EHLO:
    the message goes out over STARTTLS as 7-bit MIME, Postfix relays it on, and
    what arrives decodes to what was sent."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix needs root (its master(8) runs as root)")
    root = Path(tempfile.mkdtemp(prefix="pillarbox-postfix-mx-"))

    async def scenario() -> Any:
        final = await CorePeer().start()
        port = free_port()
        postfix = _postfix_mx(root, port, final.port, tls_files,
                              smtpd_discard_ehlo_keywords="8bitmime, smtputf8")
        await asyncio.to_thread(postfix.start)
        try:
            rd = remote(Resolver({"remote.test": one_mx("remote.test")}), port,
                        default_tls=TLSPolicy.ENCRYPT)
            d = await rd.deliver("remote.test", msg("b@remote.test", "c@remote.test",
                                                    data=EIGHT_BIT, body="8BITMIME"))
            utf8 = await rd.deliver("remote.test", msg(
                "b@remote.test", data=b"Subject: x\r\n\r\nx\r\n", smtputf8=True,
                reverse_path="jörg@example.org"))
            await rd.close()
            deadline = time.monotonic() + 30
            while not final.messages and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return d, utf8, list(final.messages), postfix.log()
        finally:
            await asyncio.to_thread(postfix.stop)
            await final.stop()

    try:
        d, utf8, arrived, log = run(scenario())
    finally:
        if (root / "postfix.log").exists():
            shutil.copy(root / "postfix.log", tmp_path / "postfix.log")
        shutil.rmtree(root, ignore_errors=True)
    assert [o.result for o in d.outcomes] == ["delivered", "delivered"], (d, log)
    # Postfix offers CHUNKING: "250 2.0.0 Ok: <n> bytes queued as <id>" answers BDAT LAST.
    assert re.fullmatch(r"250 2\.0\.0 Ok: \d+ bytes queued as [0-9A-F]+", d.outcomes[0].reply)
    assert d.tls is not None and d.tls.startswith("TLS")
    assert "TLS connection established from" in log
    assert utf8.outcomes[0].result == "failed" and utf8.outcomes[0].status == "5.6.7"
    assert len(arrived) == 1, log
    assert sorted(arrived[0].rcpts) == ["b@remote.test", "c@remote.test"]
    content = arrived[0].data
    assert all(b < 128 for b in content)
    assert _decoded_parts(content) == _decoded_parts(EIGHT_BIT)
