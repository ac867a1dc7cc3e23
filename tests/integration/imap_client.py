"""Test helpers for IMAP over real sockets: accounts on a running server, a
logged-in ``imaplib`` client, a raw line client (literals, COMPRESS=DEFLATE,
IDLE) and the client side of SCRAM-SHA-256 (RFC 5802, RFC 7677)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import itertools
import re
import secrets
import socket
import ssl
import time
import zlib

from tests.conftest import Server, add_account

PASSWORD = "secret"
_numbers = itertools.count(1)


def unverified() -> ssl.SSLContext:
    """The server's certificate is self-signed: encryption without verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def new_account(server: Server, prefix: str = "user") -> str:
    """A fresh account on the (running) server, so tests sharing it do not meet."""
    address = f"{prefix}{next(_numbers)}-{secrets.token_hex(3)}@example.test"
    add_account(server.data_dir, address, PASSWORD)
    return address


def login(server: Server, address: str, *, tls: str = "") -> imaplib.IMAP4:
    """An ``imaplib`` client logged in as ``address``: plain, "starttls" or "imaps"."""
    client: imaplib.IMAP4
    if tls == "imaps":
        client = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=unverified(),
                                   timeout=15)
    else:
        client = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=15)
        if tls == "starttls":
            client.starttls(unverified())
    typ, _ = client.login(address, PASSWORD)
    assert typ == "OK"
    return client


def ok(result: tuple[str, list]) -> list:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def message(subject: str, body: str = "Hello.\r\n", *, headers: str = "",
            sender: str = "carol@example.test") -> bytes:
    return (f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{secrets.token_hex(6)}@example.test>\r\n{headers}\r\n{body}").encode()


def append(client: imaplib.IMAP4, data: bytes, mailbox: str = "INBOX", flags: str = "",
           date: str | None = None) -> int:
    """APPEND ``data``; the new message's UID from APPENDUID (RFC 4315)."""
    typ, resp = client.append(mailbox, flags or None, date, data)
    assert typ == "OK", resp
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", resp[0])
    assert m, resp
    return int(m[1])


class Raw:
    """A line-level IMAP client on a raw socket (optionally TLS, optionally deflated)."""

    def __init__(self, port: int, *, tls: bool = False, timeout: float = 10) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            sock = unverified().wrap_socket(sock, server_hostname="localhost")
        self.sock: socket.socket = sock
        self.buf = b""
        self._deflate: zlib._Compress | None = None
        self._inflate: zlib._Decompress | None = None
        self._tags = itertools.count(1)
        self.greeting = self.line()

    # -- bytes
    def send(self, data: bytes) -> None:
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        if self._inflate is not None:
            chunk = self._inflate.decompress(chunk)
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """One line without its CRLF; ``b""`` at end of stream."""
        while b"\r\n" not in self.buf:
            if not self._fill():
                rest, self.buf = self.buf, b""
                return rest
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> bytes:
        """One whole response: a line, with every literal it announces inlined."""
        out = self.line()
        while (m := re.search(rb"\{(\d+)\}\Z", out)) is not None:
            out += b"\r\n" + self.exactly(int(m[1]))
            out += self.line()
        return out

    def closed(self, timeout: float = 5) -> bool:
        """Whether the server closed the connection (after what is buffered)."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    # -- commands
    def tag(self) -> str:
        return f"t{next(self._tags)}"

    def until(self, tag: str) -> list[bytes]:
        """Responses up to and including the tagged one for ``tag``."""
        lines = []
        while True:
            line = self.response()
            if not line and not self.buf:
                raise ConnectionError(f"connection closed; got {lines!r}")
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def command(self, text: str | bytes, tag: str | None = None) -> list[bytes]:
        tag = tag or self.tag()
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.until(tag)

    def login(self, address: str) -> None:
        assert self.command(f'LOGIN "{address}" "{PASSWORD}"')[-1].split()[1] == b"OK"

    def start_compression(self) -> None:
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        if self.buf:   # already received after the OK: compressed
            self.buf, pending = b"", self.buf
            self.buf = self._inflate.decompress(pending)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def tagged(lines: list[bytes]) -> bytes:
    return lines[-1]


def status_of(lines: list[bytes]) -> bytes:
    return lines[-1].split(b" ", 2)[1]


def wait_for(predicate, timeout: float = 10, step: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class ScramClient:
    """The client side of SCRAM-SHA-256 (RFC 5802 §3, §5; RFC 7677), no channel binding.

    Use as an ``imaplib`` authenticator: each call takes the server's
    challenge and returns the client's answer.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username = username.replace("=", "=3D").replace(",", "=2C")
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n={self.username},r={self.nonce}"
        self.step = 0
        self.server_signature = b""
        self.verified = False

    def __call__(self, challenge: bytes) -> bytes:
        self.step += 1
        if self.step == 1:
            return ("n,," + self.first_bare).encode()
        if self.step == 2:
            return self._final(challenge.decode())
        if self.step == 3:
            assert challenge.decode() == "v=" + base64.b64encode(self.server_signature).decode()
            self.verified = True
            return b""
        raise AssertionError(f"unexpected SCRAM step {self.step}: {challenge!r}")

    def _final(self, server_first: str) -> bytes:
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        assert attrs["r"].startswith(self.nonce) and len(attrs["r"]) > len(self.nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def assert_clean_log(server: Server) -> None:
    """No exception escaped a session: a traceback in the server's log is a bug."""
    text = server.log()
    assert "Traceback" not in text and "SERVERBUG" not in text, text[-5000:]
