"""POP3 over real sockets: poplib, raw sockets, curl, fetchmail and getmail6.

The server runs in-process: an asyncio loop in a background thread with a
real ``SQLiteStore`` in a temporary data directory and a real
``Authenticator``, listening on free loopback ports:

* ``port``: STLS offered, plaintext allowed from loopback (the development default);
* ``strict_port``: STLS offered, plaintext only after STLS;
* ``tls_port``: implicit TLS (RFC 8314);
* ``limited_port``: one connection per client address;
* ``idle_port``: an idle time-out of half a second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import poplib
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pillarbox.access.pop3 import POP3Context, POP3Settings, uidl_of
from pillarbox.auth.passwords import make_secrets
from pillarbox.auth.service import Authenticator
from pillarbox.net.limits import ConnectionLimiter
from pillarbox.net.pop3 import POP3ListenerConfig, POP3Protocol
from pillarbox.net.tls import ensure_self_signed, server_context
from pillarbox.store.base import NewMessage
from pillarbox.store.sqlite.store import SQLiteStore
from tests.conftest import add_account, need_tool

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret"
T = TypeVar("T")


def message(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: carol@example.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n{body}").encode()


class POP3Server:
    """The POP3 listeners of one data directory, in a thread of their own."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cert, self.key = ensure_self_signed(data_dir / "tls", "localhost")
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.protocols: list[POP3Protocol] = []
        self.store: SQLiteStore | None = None
        self.port = self.strict_port = self.tls_port = self.limited_port = self.idle_port = 0

    def start(self) -> POP3Server:
        self.thread.start()
        assert self.ready.wait(20), "POP3 server did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.run_forever()

    async def _serve(self) -> None:
        store = self.store = SQLiteStore(self.data_dir).open()
        tls = server_context(self.cert, self.key)
        settings = POP3Settings(lock_dir=self.data_dir / "run" / "pop3")

        def context(loopback_plaintext: bool) -> POP3Context:
            auth = Authenticator(store.credentials, failure_delay=0,
                                 allow_plaintext_on_loopback=loopback_plaintext)
            return POP3Context(store, auth, "pop.test", settings)

        def factory(ctx: POP3Context, cfg: POP3ListenerConfig):  # type: ignore[no-untyped-def]
            def make() -> POP3Protocol:
                proto = POP3Protocol(ctx, cfg)
                self.protocols.append(proto)
                return proto
            return make

        easy, strict = context(True), context(False)
        plain = POP3ListenerConfig(tls, implicit_tls=False, idle_timeout=600, limiter=None)
        implicit = POP3ListenerConfig(tls, implicit_tls=True, idle_timeout=600, limiter=None)
        limited = POP3ListenerConfig(tls, implicit_tls=False, idle_timeout=600,
                                     limiter=ConnectionLimiter(100, 1))
        idle = POP3ListenerConfig(tls, implicit_tls=False, idle_timeout=0.5, limiter=None)
        servers = [
            await self.loop.create_server(factory(easy, plain), "127.0.0.1", 0),
            await self.loop.create_server(factory(strict, plain), "127.0.0.1", 0),
            await self.loop.create_server(factory(strict, implicit), "127.0.0.1", 0, ssl=tls),
            await self.loop.create_server(factory(easy, limited), "127.0.0.1", 0),
            await self.loop.create_server(factory(easy, idle), "127.0.0.1", 0),
        ]
        self.servers = servers
        self.port, self.strict_port, self.tls_port, self.limited_port, self.idle_port = (
            s.sockets[0].getsockname()[1] for s in servers
        )
        self.ready.set()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the server's thread (the store's reader is per thread)."""
        async def wrapper() -> Any:
            return fn(*args)
        return self.call(wrapper())

    def stop(self) -> None:
        async def shutdown() -> None:
            for server in self.servers:
                server.close()
            for proto in self.protocols:
                if proto.transport is not None:
                    proto.transport.abort()
            await asyncio.sleep(0.05)
            assert self.store is not None
            self.store.close()
        self.call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # ------------------------------------------------------ the maildrop

    def inbox(self, address: str = ALICE) -> int:
        assert self.store is not None
        store = self.store

        def find() -> int:
            account = store.account_id(address)
            assert account is not None
            mailbox = store.mailbox(account, "INBOX")
            assert mailbox is not None
            return mailbox.id
        return int(self.run(find))

    def deliver(self, *messages: bytes, address: str = ALICE) -> list[int]:
        assert self.store is not None
        _, uids = self.call(self.store.append(self.inbox(address),
                                              [NewMessage(m) for m in messages]))
        return uids

    def stored(self, address: str = ALICE) -> list[bytes]:
        assert self.store is not None
        store, box = self.store, self.inbox(address)
        return self.run(lambda: [store.message_bytes(box, m.uid) for m in store.messages(box)])

    def uids(self, address: str = ALICE) -> list[int]:
        assert self.store is not None
        store, box = self.store, self.inbox(address)
        return self.run(lambda: [m.uid for m in store.messages(box)])

    def uidvalidity(self, address: str = ALICE) -> int:
        assert self.store is not None
        store, box = self.store, self.inbox(address)
        return self.run(lambda: store.mailbox_by_id(box).uidvalidity)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the two accounts (argon2 hashing is slow: done once)."""
    data_dir = tmp_path_factory.mktemp("pop3-template") / "data"
    data_dir.mkdir()
    add_account(data_dir, ALICE, PASSWORD)
    add_account(data_dir, BOB, PASSWORD)
    ensure_self_signed(data_dir / "tls", "localhost")
    return data_dir


@pytest.fixture
def pop3(tmp_path: Path, template: Path) -> Iterator[POP3Server]:
    data_dir = tmp_path / "data"
    shutil.copytree(template, data_dir)
    server = POP3Server(data_dir).start()
    yield server
    server.stop()


def client_tls(server: POP3Server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.cert))
    ctx.check_hostname = False   # the certificate names localhost and 127.0.0.1
    return ctx


def login(server: POP3Server, *, port: int | None = None, user: str = ALICE) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", port or server.port, timeout=10)
    client.stls(client_tls(server))
    client.user(user)
    client.pass_(PASSWORD)
    return client


def retr(client: poplib.POP3, n: int) -> bytes:
    _, lines, _ = client.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


# ------------------------------------------------------------------- poplib


def test_greeting_and_capabilities(pop3: POP3Server) -> None:
    client = poplib.POP3("127.0.0.1", pop3.port, timeout=10)
    assert client.getwelcome() == b"+OK pop.test Pillarbox POP3 ready"
    caps = client.capa()
    for cap in ("TOP", "UIDL", "USER", "STLS", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"):
        assert cap in caps
    assert caps["SASL"] == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
    client.stls(client_tls(pop3))
    assert "STLS" not in client.capa()
    client.quit()


def test_user_pass_stat_list_retr_uidl(pop3: POP3Server) -> None:
    first, second = message("one"), message("two", "Line\r\n.starts with a dot\r\n..two\r\n")
    uids = pop3.deliver(first, second)
    client = login(pop3)
    count, size = client.stat()
    stored = pop3.stored()
    assert count == 2 and size == sum(map(len, stored))
    _, listing, _ = client.list()
    assert listing == [f"{i} {len(m)}".encode() for i, m in enumerate(stored, 1)]
    # RETR sends exactly the stored octets, whose count LIST announced.
    assert retr(client, 1) == stored[0]
    assert retr(client, 2) == stored[1]
    assert stored[1].endswith(second)
    assert client.list(2) == f"+OK 2 {len(stored[1])}".encode()
    validity = pop3.uidvalidity()
    _, uidls, _ = client.uidl()
    assert uidls == [f"{i} {uidl_of(validity, uid)}".encode() for i, uid in enumerate(uids, 1)]
    assert client.uidl(1) == f"+OK 1 {uidl_of(validity, uids[0])}".encode()
    assert client.quit().startswith(b"+OK")
    assert len(pop3.stored()) == 2     # nothing deleted


def test_uidl_is_stable_across_sessions_and_flags(pop3: POP3Server) -> None:
    pop3.deliver(message("a"), message("b"))
    client = login(pop3)
    _, before, _ = client.uidl()
    client.quit()
    # IMAP reads the message (\Seen) meanwhile: the UIDL must not change.
    assert pop3.store is not None
    pop3.call(pop3.store.store_flags(pop3.inbox(), pop3.uids()[:1], "+", frozenset({"\\Seen"})))
    client = login(pop3)
    _, after, _ = client.uidl()
    client.quit()
    assert before == after and len(after) == 2


def test_top(pop3: POP3Server) -> None:
    pop3.deliver(message("top", "l1\r\nl2\r\n.l3\r\n"))
    client = login(pop3)
    _, lines, _ = client.top(1, 0)
    assert lines[-1] == b"" and lines[-2].startswith(b"Message-ID:")
    _, lines, _ = client.top(1, 1)
    assert lines[-2:] == [b"", b"l1"]
    _, lines, _ = client.top(1, 100)
    assert lines[-3:] == [b"l1", b"l2", b".l3"]
    client.quit()


def test_dele_then_rset_keeps_everything(pop3: POP3Server) -> None:
    pop3.deliver(message("a"), message("b"))
    client = login(pop3)
    client.dele(1)
    assert client.stat()[0] == 1
    with pytest.raises(poplib.error_proto, match="already deleted"):
        client.retr(1)
    client.rset()
    assert client.stat()[0] == 2
    client.quit()
    assert len(pop3.stored()) == 2


def test_dele_then_quit_removes(pop3: POP3Server) -> None:
    pop3.deliver(message("a"), message("b"), message("c"))
    keep = pop3.stored()[1]
    client = login(pop3)
    client.dele(1)
    client.dele(3)
    assert client.quit() == b"+OK pop.test Pillarbox POP3 signing off (1 messages left)"
    # +OK to QUIT comes after the commit: the deletion is already visible.
    assert pop3.stored() == [keep]
    client = login(pop3)
    assert client.stat() == (1, len(keep))
    assert retr(client, 1) == keep
    client.quit()


def test_dropped_connection_deletes_nothing_and_unlocks(pop3: POP3Server) -> None:
    pop3.deliver(message("a"), message("b"))
    client = login(pop3)
    client.dele(1)
    client.dele(2)
    client.file.close()     # no QUIT
    client.sock.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            client = login(pop3)
            break
        except poplib.error_proto as exc:   # the server has not seen the close yet
            assert b"[IN-USE]" in exc.args[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert client.stat()[0] == 2
    client.quit()
    assert len(pop3.stored()) == 2


def test_second_session_gets_in_use(pop3: POP3Server) -> None:
    pop3.deliver(message("a"))
    first = login(pop3)
    second = poplib.POP3("127.0.0.1", pop3.port, timeout=10)
    second.stls(client_tls(pop3))
    second.user(ALICE)
    with pytest.raises(poplib.error_proto) as info:
        second.pass_(PASSWORD)
    assert info.value.args[0] == b"-ERR [IN-USE] Maildrop is in use by another POP3 session"
    # Another account is not locked by it.
    other = login(pop3, user=BOB)
    other.quit()
    first.quit()
    second.user(ALICE)
    second.pass_(PASSWORD)
    assert second.stat()[0] == 1
    second.quit()


def test_lock_is_a_file_lock(pop3: POP3Server) -> None:
    """The lock holds across processes: a child process taking it sees it taken."""
    client = login(pop3)
    lock_dir = pop3.data_dir / "run" / "pop3"
    files = list(lock_dir.iterdir())
    assert len(files) == 1
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n"
             "except BlockingIOError:\n    print('locked')\n")
    import sys
    out = subprocess.run([sys.executable, "-c", probe, str(files[0])], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    assert out == "locked"
    client.quit()
    out = subprocess.run([sys.executable, "-c", probe, str(files[0])], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    assert out == "free"


def test_new_mail_waits_for_the_next_session(pop3: POP3Server) -> None:
    pop3.deliver(message("a"))
    client = login(pop3)
    pop3.deliver(message("b"))
    assert client.stat()[0] == 1
    with pytest.raises(poplib.error_proto, match="No such message: 2"):
        client.retr(2)
    client.quit()
    client = login(pop3)
    assert client.stat()[0] == 2
    client.quit()


def test_message_expunged_by_imap_during_the_session(pop3: POP3Server) -> None:
    pop3.deliver(message("a"), message("b"))
    client = login(pop3)
    assert pop3.store is not None
    pop3.call(pop3.store.expunge(pop3.inbox(), pop3.uids()[:1]))
    with pytest.raises(poplib.error_proto) as info:
        client.retr(1)
    assert info.value.args[0] == b"-ERR Message 1 was removed by another session"
    assert retr(client, 2).endswith(message("b"))
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    assert len(pop3.stored()) == 1


def test_wrong_password_and_unknown_user(pop3: POP3Server) -> None:
    client = poplib.POP3("127.0.0.1", pop3.port, timeout=10)
    client.user(ALICE)
    with pytest.raises(poplib.error_proto) as info:
        client.pass_("wrong")
    assert info.value.args[0] == b"-ERR [AUTH] Authentication failed"
    client.user("nobody@example.test")
    with pytest.raises(poplib.error_proto) as info:
        client.pass_("wrong")
    assert info.value.args[0] == b"-ERR [AUTH] Authentication failed"
    client.quit()


def test_plaintext_needs_tls_on_the_strict_listener(pop3: POP3Server) -> None:
    client = poplib.POP3("127.0.0.1", pop3.strict_port, timeout=10)
    assert "USER" not in client.capa()
    assert client.capa()["SASL"] == ["SCRAM-SHA-256"]
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext"):
        client.user(ALICE)
    client.stls(client_tls(pop3))
    assert "USER" in client.capa()
    client.user(ALICE)
    client.pass_(PASSWORD)
    client.quit()


def test_implicit_tls(pop3: POP3Server) -> None:
    pop3.deliver(message("a"))
    client = poplib.POP3_SSL("127.0.0.1", pop3.tls_port, timeout=10, context=client_tls(pop3))
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps
    client.user(ALICE)
    client.pass_(PASSWORD)
    assert retr(client, 1) == pop3.stored()[0]
    client.quit()


def test_large_message_in_pieces(pop3: POP3Server) -> None:
    line = b"." + b"x" * 98 + b"\r\n"
    body = line * 60000      # 6 MB: read on a thread, written in 64 KiB pieces
    pop3.deliver(b"Subject: big\r\n\r\n" + body)
    stored = pop3.stored()[0]
    client = login(pop3)
    assert client.list(1) == f"+OK 1 {len(stored)}".encode()
    assert retr(client, 1) == stored
    client.quit()


def test_connection_limit(pop3: POP3Server) -> None:
    first = poplib.POP3("127.0.0.1", pop3.limited_port, timeout=10)
    with socket.create_connection(("127.0.0.1", pop3.limited_port), timeout=10) as second:
        assert second.makefile("rb").read() == (
            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        )
    first.quit()
    again = poplib.POP3("127.0.0.1", pop3.limited_port, timeout=10)   # the count went down
    again.quit()


def test_idle_timeout_closes_and_keeps_the_maildrop(pop3: POP3Server) -> None:
    pop3.deliver(message("a"))
    client = login(pop3, port=pop3.idle_port)
    client.dele(1)
    time.sleep(1.2)
    assert client.file.readline() == b"-ERR Idle for too long, closing connection (RFC 1939 3)\r\n"
    assert client.file.readline() == b""
    assert len(pop3.stored()) == 1


def test_shutdown_says_so(pop3: POP3Server) -> None:
    client = login(pop3)
    proto = next(p for p in pop3.protocols if p.transport is not None and p.session
                 and p.session.address == ALICE)
    pop3.run(proto.shutdown)
    assert client.file.readline() == b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n"
    assert client.file.readline() == b""


def test_a_slow_reader_is_not_buffered_whole(pop3: POP3Server) -> None:
    """Back-pressure: while the client does not read, the server writes no more."""
    body = (b"y" * 998 + b"\r\n") * 8000     # 8 MB
    pop3.deliver(b"Subject: slow\r\n\r\n" + body)
    stored = pop3.stored()[0]
    raw = Raw(pop3)
    raw.send(b"USER " + ALICE.encode(), b"PASS " + PASSWORD.encode())
    assert raw.line() == b"+OK Send PASS"
    assert raw.line().startswith(b"+OK Logged in")
    raw.send(b"RETR 1")
    time.sleep(1.0)
    proto = next(p for p in pop3.protocols if p.transport is not None and p.session
                 and p.session.address == ALICE)
    assert proto.transport is not None
    buffered = pop3.run(proto.transport.get_write_buffer_size)
    assert buffered < 1 << 20, buffered
    assert proto.core is not None and proto.core.sending
    assert raw.line() == b"+OK %d octets" % len(stored)
    got = []
    while (line := raw.line()) != b".":
        got.append(line + b"\r\n")
    assert b"".join(got) == stored
    raw.close()


# ------------------------------------------------------------- raw sockets


class Raw:
    """A line-level client over TLS, for what poplib cannot do (AUTH, pipelining)."""

    def __init__(self, server: POP3Server, port: int | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port or server.port), timeout=10)
        self.file = sock.makefile("rwb")
        assert self.line().startswith(b"+OK")
        self.send(b"STLS")
        assert self.line() == b"+OK Begin TLS negotiation"
        self.file.close()
        self.sock = client_tls(server).wrap_socket(sock)
        self.file = self.sock.makefile("rwb")

    def send(self, *lines: bytes) -> None:
        self.file.write(b"".join(line + b"\r\n" for line in lines))
        self.file.flush()

    def line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_plain_and_login(pop3: POP3Server) -> None:
    raw = Raw(pop3)
    raw.send(b"AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}".encode()), b"QUIT")
    assert raw.line() == b"+OK Logged in, 0 messages (0 octets)"
    assert raw.line().startswith(b"+OK")
    raw.close()
    raw = Raw(pop3)
    raw.send(b"AUTH LOGIN")
    assert raw.line() == b"+ " + b64(b"Username:")
    raw.send(b64(ALICE.encode()))
    assert raw.line() == b"+ " + b64(b"Password:")
    raw.send(b64(b"wrong"))
    assert raw.line() == b"-ERR [AUTH] Authentication failed"
    raw.send(b"AUTH PLAIN", b"*")
    assert raw.line() == b"+ "
    assert raw.line() == b"-ERR Authentication cancelled (RFC 5034 4)"
    raw.send(b"AUTH CRAM-MD5")
    assert raw.line() == b"-ERR Unrecognized authentication type CRAM-MD5"
    raw.close()


def scram_client(raw: Raw, user: str, password: str, *, tamper: bool = False) -> bytes:
    """An RFC 5802 client over AUTH SCRAM-SHA-256; returns the server's last line."""
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n={user},r={nonce}"
    raw.send(b"AUTH SCRAM-SHA-256 " + b64(f"n,,{first_bare}".encode()))
    line = raw.line()
    assert line.startswith(b"+ "), line
    server_first = base64.b64decode(line[2:]).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    assert fields["r"].startswith(nonce)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    if tamper:
        proof = bytes([proof[0] ^ 1]) + proof[1:]
    raw.send(b64(f"{final_bare},p={base64.b64encode(proof).decode()}".encode()))
    line = raw.line()
    if not line.startswith(b"+ "):
        return line
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest())
    assert base64.b64decode(line[2:]) == b"v=" + expected
    raw.send(b"")    # RFC 5034 4: the empty answer to the server's final message
    return raw.line()


def test_auth_scram_sha_256(pop3: POP3Server) -> None:
    assert pop3.store is not None
    password_hash, scram = make_secrets(PASSWORD, scram_iterations=4096)
    pop3.run(pop3.store.set_credentials, ALICE, password_hash, scram)
    pop3.deliver(message("a"))
    raw = Raw(pop3, pop3.strict_port)
    assert scram_client(raw, ALICE, PASSWORD, tamper=True) == b"-ERR [AUTH] Authentication failed"
    assert scram_client(raw, ALICE, PASSWORD) == b"+OK Logged in, 1 messages (%d octets)" % (
        len(pop3.stored()[0]))
    raw.send(b"QUIT")
    assert raw.line().startswith(b"+OK")
    raw.close()


def test_pipelining(pop3: POP3Server) -> None:
    pop3.deliver(message("a"), message("b"))
    stored = pop3.stored()
    raw = Raw(pop3)
    raw.send(b"USER " + ALICE.encode(), b"PASS " + PASSWORD.encode(), b"STAT", b"RETR 1",
             b"DELE 1", b"LIST", b"QUIT")
    assert raw.line() == b"+OK Send PASS"
    assert raw.line().startswith(b"+OK Logged in")
    assert raw.line() == b"+OK 2 %d" % sum(map(len, stored))
    assert raw.line() == b"+OK %d octets" % len(stored[0])
    body = []
    while (line := raw.line()) != b".":
        body.append(line[1:] if line.startswith(b".") else line)
    assert b"".join(x + b"\r\n" for x in body) == stored[0]
    assert raw.line() == b"+OK Message 1 deleted"
    assert raw.line() == b"+OK 1 messages (%d octets)" % len(stored[1])
    assert raw.line() == b"2 %d" % len(stored[1])
    assert raw.line() == b"."
    assert raw.line().startswith(b"+OK pop.test Pillarbox POP3 signing off")
    assert raw.file.read() == b""
    raw.close()
    assert pop3.stored() == stored[1:]


def test_overlong_line_and_garbage(pop3: POP3Server) -> None:
    raw = Raw(pop3)
    raw.send(b"NOOP " + b"x" * 5000, b"\xff\xfe", b"CAPA")
    assert raw.line().startswith(b"-ERR Line too long")
    assert raw.line() == b"-ERR Command is not valid UTF-8"
    assert raw.line() == b"+OK Capability list follows"
    raw.close()


# ------------------------------------------------------------ real clients


def test_curl_lists_and_retrieves(pop3: POP3Server) -> None:
    curl = need_tool("curl")
    pop3.deliver(message("for curl", "Hi curl.\r\n.dot line\r\n"))
    stored = pop3.stored()[0]
    base = [curl, "--silent", "--show-error", "--ssl-reqd", "--cacert", str(pop3.cert),
            "--max-time", "20", "--user", f"{ALICE}:{PASSWORD}"]
    # The strict listener: curl must do STLS, then AUTH PLAIN (SASL) over TLS.
    url = f"pop3://127.0.0.1:{pop3.strict_port}/"
    listing = subprocess.run(base + [url], capture_output=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == f"1 {len(stored)}\r\n".encode()
    got = subprocess.run(base + [url + "1"], capture_output=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == stored
    # Implicit TLS.
    got = subprocess.run(base + [f"pop3s://127.0.0.1:{pop3.tls_port}/1"], capture_output=True,
                         timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == stored


def test_fetchmail_over_stls(pop3: POP3Server, tmp_path: Path) -> None:
    fetchmail = need_tool("fetchmail")
    pop3.deliver(message("fm one", ".dot\r\nbody\r\n"), message("fm two"))
    stored = pop3.stored()
    home = tmp_path / "fm"
    home.mkdir()
    mbox = home / "mbox"
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 service {pop3.strict_port} protocol pop3 uidl\n"
        f"  user '{ALICE}' there with password '{PASSWORD}' is 'me' here\n"
        f"  sslproto 'tls1.2+' sslcertck sslcertfile '{pop3.cert}' sslcommonname localhost\n"
        f"  mda \"/bin/sh -c 'cat >> {mbox}'\"\n"
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    run = subprocess.run([fetchmail, "-f", str(rc), "-N", "--nosyslog", "-v"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "STLS" in run.stdout + run.stderr
    text = mbox.read_bytes()
    assert b"Subject: fm one" in text and b"Subject: fm two" in text
    assert b"\n.dot\n" in text.replace(b"\r\n", b"\n")   # unstuffed
    # fetchmail deletes what it fetched (no "keep"): QUIT removed both.
    assert pop3.stored() == []
    assert stored


def test_getmail_over_implicit_tls(pop3: POP3Server, tmp_path: Path) -> None:
    getmail = need_tool("getmail")   # getmail6 has no STLS: its POP3 TLS is implicit
    pop3.deliver(message("gm one"), message("gm two"))
    stored = pop3.stored()
    gdir = tmp_path / "gm"
    out = gdir / "out"
    out.mkdir(parents=True)
    (gdir / "getmailrc").write_text(
        "[retriever]\n"
        "type = SimplePOP3SSLRetriever\n"
        "server = 127.0.0.1\n"
        f"port = {pop3.tls_port}\n"
        f"username = {ALICE}\n"
        f"password = {PASSWORD}\n"
        f"ca_certs = {pop3.cert}\n"
        "[destination]\n"
        "type = MDA_external\n"      # its Maildir refuses to deliver as root
        "path = /bin/sh\n"
        f"arguments = ('-c', 'cat > $(mktemp -p {out})')\n"
        "allow_root_commands = true\n"
        "[options]\n"
        "read_all = false\n"
        "delete = false\n"
        "verbose = 2\n"
    )
    cmd = [getmail, "--rcfile", "getmailrc", "--getmaildir", str(gdir)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    got = sorted(p.read_bytes() for p in out.iterdir())
    assert len(got) == 2
    for data in stored:
        assert any(data.replace(b"\r\n", b"\n") in g.replace(b"\r\n", b"\n") for g in got)
    # A second run fetches nothing new: getmail remembers the UIDLs, which are stable.
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(list(out.iterdir())) == 2
    assert len(pop3.stored()) == 2


# ------------------------------------------------- mail that came over SMTP


def test_sizes_of_mail_delivered_over_smtp(server) -> None:  # type: ignore[no-untyped-def]
    """LIST's size is exactly what RETR sends, for mail with the delivery prefix
    (Return-Path:, Delivered-To:) that local delivery adds."""
    import smtplib

    body = "Line one\r\n.a dot line\r\nLast\r\n"
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.sendmail("bob@sender.test", [ALICE],
                      f"From: bob@sender.test\r\nTo: {ALICE}\r\nSubject: sizes\r\n\r\n{body}")
    assert server.wait_delivered(1) == 1
    server.stop()
    pop3 = POP3Server(server.data_dir).start()
    try:
        client = login(pop3)
        _, listing, _ = client.list()
        size = int(listing[0].split()[1])
        data = retr(client, 1)
        assert data.startswith(b"Return-Path: <bob@sender.test>\r\n")
        assert data.endswith(body.encode())
        assert size == len(data) == client.stat()[1]
        client.quit()
    finally:
        pop3.stop()


def test_pillarbox_serve_end_to_end(server_factory) -> None:  # type: ignore[no-untyped-def]
    """``pillarbox serve`` with two workers: SMTP in, POP3 out, the lock across processes."""
    import smtplib

    server = server_factory({"server.workers": "2"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        for n in range(2):
            smtp.sendmail("bob@sender.test", [ALICE],
                          f"From: bob@sender.test\r\nSubject: e2e {n}\r\n\r\nBody {n}\r\n")
    assert server.wait_delivered(2) == 2
    ctx = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "selfsigned.crt"))
    ctx.check_hostname = False

    def connect() -> poplib.POP3:
        client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
        client.stls(ctx)
        client.user(ALICE)
        return client

    first = connect()
    first.pass_(PASSWORD)
    assert first.stat()[0] == 2
    # Whichever worker takes them, other sessions find the maildrop locked.
    for _ in range(4):
        other = connect()
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            other.pass_(PASSWORD)
        other.quit()
    wire = retr(first, 1)
    assert wire == server.inbox(ALICE)[0]
    first.dele(1)
    assert first.quit().startswith(b"+OK")
    remaining = server.inbox(ALICE)
    assert len(remaining) == 1 and b"Subject: e2e 1" in remaining[0]
    implicit = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, timeout=10, context=ctx)
    implicit.user(ALICE)
    implicit.pass_(PASSWORD)
    assert implicit.stat()[0] == 1
    implicit.quit()
