"""Serving our own MTA-STS policy (RFC 8461 §3.2, §3.3) over HTTPS.

Senders fetch ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` for each
of our domains.  This is the smallest HTTP/1.1 server (RFC 9112) that
answers it, and it is strict on purpose:

- ``GET`` only (anything else: ``405``, with ``Allow: GET``);
- the ``Host`` header decides the domain: ``mta-sts.`` and one of our
  domains, else ``404``; the only resource is ``/.well-known/mta-sts.txt``
  (anything else: ``404``); no ``Host``, two of them, a request with a body,
  or bad syntax: ``400``;
- the request head is bounded (``max_request`` octets, else ``431``) and so
  is the time to send it (``timeout``, then the connection is closed, as is
  a TLS handshake that takes longer);
- one request per connection (``Connection: close``).

The answer is the policy as ``text/plain`` (§3.2), the same for every one
of our domains: its ``mx`` patterns name our MX hosts, not the domain.
:func:`policy_id` is the id to publish in each domain's ``_mta-sts`` TXT
record (§3.1); it is derived from the policy text, so it changes exactly
when the policy does.

``serve`` wires it: :func:`start_policy_server` on the bound sockets of
``mta_sts.listen``, with the server's TLS context (whose certificate must
also be valid for ``mta-sts.DOMAIN``) and :func:`our_policy`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pillarbox.deliver.mta_sts import MAX_AGE_LIMIT, WELL_KNOWN, Mode, Policy
from pillarbox.log import log_event

if TYPE_CHECKING:
    from pillarbox.config import MTASTSConfig

__all__ = ["BadRequest", "PolicyServer", "Request", "our_policy", "parse_request",
           "policy_id", "start_policy_server", "txt_record"]

log = logging.getLogger("pillarbox.mta_sts_server")

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 10.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def our_policy(config: MTASTSConfig, hostname: str) -> Policy:
    """The policy of ``[mta_sts]``: its mode and max_age, and its ``mx`` patterns,
    or ``hostname`` (``server.hostname``) alone."""
    return Policy(Mode(config.mode), int(min(config.max_age, MAX_AGE_LIMIT)),
                  tuple(config.mx) or (hostname.lower(),))


def policy_id(policy: Policy) -> str:
    """The ``id=`` for the TXT record (§3.1: 1 to 32 letters and digits)."""
    return hashlib.sha256(str(policy).encode()).hexdigest()[:20]


def txt_record(domain: str, policy: Policy) -> str:
    """The TXT record to publish for ``domain``, as a zone-file line."""
    return f'_mta-sts.{domain.rstrip(".")}. IN TXT "v=STSv1; id={policy_id(policy)}"'


class BadRequest(Exception):
    """The client's request is not one we answer with the policy (the client's fault);
    ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    host: str            # lower case, without port and trailing dot


def parse_request(data: bytes, max_request: int = MAX_REQUEST) -> Request | None:
    """The request head in ``data`` (RFC 9112 §2-§3); None while incomplete;
    :class:`BadRequest` for anything we refuse."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > max_request:
            raise BadRequest(431, f"request head over {max_request} octets")
        return None
    if end + 4 > max_request:
        raise BadRequest(431, f"request head over {max_request} octets")
    try:
        lines = data[:end].decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        raise BadRequest(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if not re.fullmatch(r"HTTP/[0-9]\.[0-9]", version):
        raise BadRequest(400, f"malformed request line {lines[0][:80]!r}")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505, f"{version} is not HTTP/1.x")
    hosts = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):   # also obs-fold (RFC 9112 §5.2)
            raise BadRequest(400, f"malformed header field {line[:80]!r}")
        name, value = name.lower(), value.strip(" \t")
        if name == "host":
            hosts.append(value)
        elif (name == "content-length" and value != "0") or name == "transfer-encoding":
            raise BadRequest(400, "a request with a body")
    if len(hosts) != 1:
        raise BadRequest(400, "no Host header" if not hosts else "more than one Host header")
    host = hosts[0].lower()
    m = re.fullmatch(r"([a-z0-9.-]+?)\.?(?::[0-9]{1,5})?", host)
    if m is None:
        raise BadRequest(404, f"no policy for host {hosts[0][:80]!r}")
    if method != "GET":
        raise BadRequest(405, f"method {method} (only GET)")
    return Request(method, target, m[1])


def respond(request: Request, policy: Policy, is_ours: Callable[[str], bool]) -> bytes:
    """The response to a well-formed request: the policy, or 404."""
    domain = request.host[len("mta-sts."):] if request.host.startswith("mta-sts.") else ""
    if request.target != WELL_KNOWN or not domain or not is_ours(domain):
        return _response(404, f"No MTA-STS policy at https://{request.host}{request.target}\n")
    return _response(200, str(policy))


def _response(status: int, body: str, extra: str = "") -> bytes:
    data = body.encode("utf-8")
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8"
            f"\r\nContent-Length: {len(data)}\r\nCache-Control: no-cache\r\n{extra}"
            "Connection: close\r\n\r\n").encode("ascii") + data


class PolicyServer:
    """Answers the requests of one connection after another (see the module docstring).

    ``policy``: the policy served; ``is_ours(domain)``: whether ``domain`` (lower
    case, A-labels) is one of our domains (called in the event loop: keep it quick).
    """

    def __init__(self, policy: Policy, is_ours: Callable[[str], bool], *,
                 timeout: float = REQUEST_TIMEOUT, max_request: int = MAX_REQUEST) -> None:
        self.policy = policy
        self.is_ours = is_ours
        self.timeout = timeout
        self.max_request = max_request

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else str(peer)
        status, host = 0, None
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    request = await self._read(reader)
                host = request.host
                answer = respond(request, self.policy, self.is_ours)
                status = int(answer[9:12])
            except BadRequest as exc:
                status = exc.status
                extra = "Allow: GET\r\n" if exc.status == 405 else ""
                answer = _response(exc.status, f"{exc.why}\n", extra)
            writer.write(answer)
            await writer.drain()
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            pass   # a slow or vanished client: nothing to answer
        finally:
            log_event(log, "sts request", client=client, host=host,
                      status=status or "closed", level=logging.INFO)
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError, ConnectionError):
                pass

    async def _read(self, reader: asyncio.StreamReader) -> Request:
        data = b""
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                raise ConnectionError("closed before the end of the request")
            data += chunk
            request = parse_request(data, self.max_request)
            if request is not None:
                return request


async def start_policy_server(socks: Sequence[socket.socket], context: ssl.SSLContext,
                              policy: Policy, is_ours: Callable[[str], bool], *,
                              timeout: float = REQUEST_TIMEOUT) -> list[asyncio.Server]:
    """Serve the policy over TLS on the bound, listening ``socks``; close the
    servers to stop."""
    handler = PolicyServer(policy, is_ours, timeout=timeout)
    return [await asyncio.start_server(handler.handle, sock=sock, ssl=context,
                                       ssl_handshake_timeout=timeout)
            for sock in socks]
