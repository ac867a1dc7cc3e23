"""The first command under TLS, sent in the same packet as the handshake's end.

After STARTTLS (IMAP) or STLS (POP3) the server drops whatever plaintext the
client pipelined behind the command (command injection, CVE-2011-0411).
What the new TLS transport decrypts is another matter: a client may send its
first command right behind its Finished message, and the TLS layer hands it
over before the server's STARTTLS coroutine has resumed.  That command must
be answered, not dropped (it was, under load, until the adapters held it).

The client here builds its TLS records in memory (``ssl.MemoryBIO``), so the
Finished message and the command leave in one ``sendall``: the race is
forced, not hoped for.
"""

from __future__ import annotations

import socket
import ssl

import pytest


def _tls_with_command(port: int, greeting_end: bytes, upgrade: bytes, upgrade_ok: bytes,
                      command: bytes, answer: bytes) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        buf = b""
        while greeting_end not in buf:
            buf += sock.recv(4096)
        sock.sendall(upgrade)
        buf = b""
        while upgrade_ok not in buf:
            buf += sock.recv(4096)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=False)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(command)
        sock.sendall(outgoing.read())   # the Finished message and the command, together
        got = b""
        while answer not in got:
            try:
                got += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
        return got
    finally:
        sock.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.conftest import Server, add_account

    data_dir = tmp_path_factory.mktemp("race") / "data"
    data_dir.mkdir()
    add_account(data_dir, "alice@example.test")
    server = Server(data_dir).start()
    yield server
    server.stop()


@pytest.mark.parametrize("attempt", range(3))
def test_imap_command_behind_the_handshake_is_answered(srv, attempt: int) -> None:
    got = _tls_with_command(srv.imap_port, b"\r\n", b"a STARTTLS\r\n", b"a OK",
                            b"b NOOP\r\n", b"b OK")
    assert b"b OK" in got


@pytest.mark.parametrize("attempt", range(3))
def test_pop3_command_behind_the_handshake_is_answered(srv, attempt: int) -> None:
    got = _tls_with_command(srv.pop3_port, b"\r\n", b"STLS\r\n", b"+OK",
                            b"CAPA\r\n", b"\r\n.\r\n")
    assert got.startswith(b"+OK")


@pytest.mark.parametrize("attempt", range(3))
def test_pop3_on_asyncio_loop_command_behind_the_handshake(tmp_path, attempt: int) -> None:
    """The same on asyncio's own event loop (uvloop is optional), whose TLS layer
    delivers decrypted data before ``start_tls()`` returns."""
    from tests.conftest import add_account
    from tests.integration.test_pop3 import POP3Server

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    add_account(data_dir, "alice@example.test")
    server = POP3Server(data_dir).start()
    try:
        got = _tls_with_command(server.port, b"\r\n", b"STLS\r\n", b"+OK",
                                b"CAPA\r\n", b"\r\n.\r\n")
    finally:
        server.stop()
    assert got.startswith(b"+OK")
