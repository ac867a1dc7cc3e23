"""Serving our MTA-STS policy: the strict request parser, the answers, and a real
HTTPS server on 127.0.0.1 fetched by our own MTA-STS client."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pillarbox.config import load_config
from pillarbox.deliver.mta_sts import (
    MAX_AGE_LIMIT,
    FetchError,
    Mode,
    Policy,
    client_context,
    fetch_policy,
    parse_policy,
    parse_txt_record,
)
from pillarbox.net.mta_sts_server import (
    BadRequest,
    Request,
    our_policy,
    parse_request,
    policy_id,
    respond,
    start_policy_server,
    txt_record,
)
from pillarbox.policy.dns import StaticResolver
from tests.unit.test_mta_sts import LabCA

T = TypeVar("T")

POLICY = Policy(Mode.ENFORCE, 86400, ("mx.example.com",))
OURS = {"example.com", "example.org"}


def get(host: str = "mta-sts.example.com", target: str = "/.well-known/mta-sts.txt",
        extra: str = "", method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return f"{method} {target} {version}\r\nHost: {host}\r\n{extra}\r\n".encode()


# ------------------------------------------------------------- requests


def test_a_request() -> None:
    assert parse_request(get()) == Request("GET", "/.well-known/mta-sts.txt",
                                           "mta-sts.example.com")
    assert parse_request(get("MTA-STS.Example.COM.:443", extra="Accept: */*\r\n")) == \
        Request("GET", "/.well-known/mta-sts.txt", "mta-sts.example.com")
    assert parse_request(get()[:-2]) is None
    assert parse_request(get(version="HTTP/1.0")) is not None


@pytest.mark.parametrize("data, status, why", [
    (get(method="POST"), 405, "method POST"),
    (get(method="HEAD"), 405, "only GET"),
    (b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n\r\n", 400, "no Host header"),
    (get(extra="Host: mta-sts.example.org\r\n"), 400, "more than one Host"),
    (get(extra="Content-Length: 5\r\n"), 400, "with a body"),
    (get(extra="Transfer-Encoding: chunked\r\n"), 400, "with a body"),
    (get(version="HTTP/2.0"), 505, "not HTTP/1.x"),
    (get(version="HTTX/1.1"), 400, "malformed request line"),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
    (get(extra=" folded\r\n"), 400, "malformed header field"),
    (get(extra="X-Caf\xc3\xa9: 1\r\n".encode("latin-1").decode("latin-1")), 400, "not ASCII"),
    (get(host="[::1]"), 404, "no policy for host"),
    (get(extra="X-Long: " + "a" * 9000 + "\r\n"), 431, "over 8192 octets"),
    (b"GET / HTTP/1.1\r\n" + b"a" * 9000, 431, "over 8192 octets"),
])
def test_requests_refused(data: bytes, status: int, why: str) -> None:
    with pytest.raises(BadRequest, match=why) as caught:
        parse_request(data)
    assert caught.value.status == status


@pytest.mark.parametrize("host, target, status", [
    ("mta-sts.example.com", "/.well-known/mta-sts.txt", 200),
    ("mta-sts.example.org", "/.well-known/mta-sts.txt", 200),
    ("mta-sts.example.net", "/.well-known/mta-sts.txt", 404),     # not ours
    ("example.com", "/.well-known/mta-sts.txt", 404),
    ("www.example.com", "/.well-known/mta-sts.txt", 404),
    ("mta-sts.example.com", "/", 404),
    ("mta-sts.example.com", "/.well-known/mta-sts.txt?x=1", 404),
])
def test_answers(host: str, target: str, status: int) -> None:
    answer = respond(Request("GET", target, host), POLICY, OURS.__contains__)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in head
    assert f"\r\nContent-Length: {len(body)}\r\n".encode() in head
    if status == 200:
        assert parse_policy(body.decode()) == POLICY


# ------------------------------------------------------------- the policy


def test_our_policy_from_the_configuration(tmp_path: Path) -> None:
    config = load_config(None, {"mta_sts.mode": "enforce"})
    policy = our_policy(config.mta_sts, "MX.Example.com")
    assert policy == Policy(Mode.ENFORCE, 604800, ("mx.example.com",))
    config = load_config(None, {"mta_sts.mx": "mx1.example.com,*.example.net",
                                "mta_sts.max_age": "1000d"})
    policy = our_policy(config.mta_sts, "mx.example.com")
    assert policy == Policy(Mode.TESTING, MAX_AGE_LIMIT, ("mx1.example.com", "*.example.net"))


def test_the_id_follows_the_policy() -> None:
    assert policy_id(POLICY) == policy_id(Policy(Mode.ENFORCE, 86400, ("mx.example.com",)))
    assert policy_id(POLICY) != policy_id(Policy(Mode.TESTING, 86400, ("mx.example.com",)))
    record = txt_record("example.com.", POLICY)
    name, _, rest = record.partition(" IN TXT ")
    assert name == "_mta-sts.example.com."
    assert parse_txt_record(rest.strip('"')) == policy_id(POLICY)


def test_bad_mx_patterns_in_the_configuration_are_refused() -> None:
    from pillarbox.config import ConfigError

    with pytest.raises(ConfigError, match=r"mta_sts\.mx.*\*\.\*\.example"):
        load_config(None, {"mta_sts.mx": "*.*.example"})


# ------------------------------------------------------------- over HTTPS


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA(tmp_path_factory.mktemp("ca"))


def serving(ca: LabCA, scenario: Callable[[int], Coroutine[Any, Any, T]],
            timeout: float = 5.0) -> T:
    cert, key = ca.issue("mta-sts.example.com", "mta-sts.example.org", stem="server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]

    async def main() -> T:
        servers = await start_policy_server([sock], context, POLICY, OURS.__contains__,
                                            timeout=timeout)
        try:
            return await scenario(port)
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()
    return asyncio.run(main())


def zone(domain: str) -> StaticResolver:
    return StaticResolver({(f"mta-sts.{domain}", "A"): ("127.0.0.1",)})


def test_our_client_fetches_our_policy(ca: LabCA) -> None:
    async def scenario(port: int) -> str:
        return await fetch_policy("example.org", zone("example.org"),
                                  client_context(ca.ca_file), port=port, timeout=5)
    assert parse_policy(serving(ca, scenario)) == POLICY


def test_a_domain_not_ours_gets_404(ca: LabCA) -> None:
    async def scenario(port: int) -> None:
        with pytest.raises(FetchError, match="answered 404 Not Found"):
            await fetch_policy("example.net", zone("example.net"), _lenient(), port=port)
    serving(ca, scenario)


def _lenient() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _exchange(port: int, data: bytes, *, tls: bool = True,
                    host: str = "mta-sts.example.net") -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_lenient() if tls else None,
        server_hostname=host if tls else None)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def test_the_answers_over_the_wire(ca: LabCA) -> None:
    async def scenario(port: int) -> list[bytes]:
        return [await _exchange(port, get("mta-sts.example.net")),
                await _exchange(port, get(method="DELETE")),
                await _exchange(port, b"GET / HTTP/1.1\r\n" + b"x" * 10000)]
    not_ours, delete, huge = serving(ca, scenario)
    assert not_ours.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert delete.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"\r\nAllow: GET\r\n" in delete
    assert huge.startswith(b"HTTP/1.1 431 ")


def test_a_silent_client_is_closed_after_the_timeout(ca: LabCA) -> None:
    async def scenario(port: int) -> tuple[bytes, float, bytes, float]:
        started = time.monotonic()
        answer = await _exchange(port, b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
        after_tls = time.monotonic() - started
        started = time.monotonic()
        raw = await _exchange(port, b"", tls=False)     # no TLS handshake at all
        return answer, after_tls, raw, time.monotonic() - started
    answer, after_tls, raw, without_tls = serving(ca, scenario, timeout=0.5)
    assert answer == b"" and 0.4 < after_tls < 4
    assert raw == b"" and 0.4 < without_tls < 4
