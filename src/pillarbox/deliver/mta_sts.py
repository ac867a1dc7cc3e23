"""MTA-STS (RFC 8461): the TLS that a receiving domain demands of its senders.

A domain publishes a TXT record ``_mta-sts.DOMAIN`` (``v=STSv1; id=...``,
§3.1) and a policy at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``
(§3.2, §3.3): its mode (``enforce``, ``testing``, ``none``), the MX host
patterns allowed to receive its mail, and how long a sender may cache it
(``max_age``).  :class:`MTASTS` finds the policy in force for a domain; the
remote delivery (``pillarbox.deliver.remote``) applies it:

- ``enforce``: only MX hosts that match a pattern are tried (§4.1), and each
  must offer STARTTLS with a certificate valid for its MX host name (§4.2);
  anything else defers the message (never a bounce: the policy may be fixed,
  and §5.1 forbids failing for good before asking DNS again);
- ``testing``: the same checks, but failures are only logged (the domain's
  TLS-RPT reports, RFC 8460, are built from such records);
- ``none``: the domain has withdrawn its policy (§8.3).

Discovery and caching (§3.3, §5.1), in :meth:`MTASTS.lookup`:

1. ask for the TXT record; records not starting ``v=STSv1;`` are ignored;
   anything but exactly one valid one means no live policy;
2. a cached policy whose id is the one in DNS, fetched less than a day ago
   (§5.1's suggested refresh), is used as it is;
3. otherwise the policy is fetched over HTTPS: certificate verified for
   ``mta-sts.DOMAIN`` against the system's CAs (or a configured CA file),
   no redirects (§3.3), at most 64 KiB (§3.3), media type ``text/plain``,
   within a time-out; a fetched policy is cached with the TXT id, for its
   ``max_age`` (at most 31557600 s, §3.2);
4. when no live policy can be found (no TXT record, DNS failure, fetch
   failure), a cached policy that has not expired stays in force (§5.1:
   "the sender MUST apply that cached policy"); with none, the domain is
   treated as one without MTA-STS.

A failed fetch is not tried again for :data:`RETRY_FETCH` seconds (unless
the TXT id changes), so a domain whose web server is down does not cost a
fetch per message.  The
cache lives in memory (bounded, least recently used first out) in front of
a small SQLite file in the data directory (``mta-sts.sqlite``), so that a
restart keeps the policies; several processes may share that file.

Errors carry the text for the log and the DSN; each says whose fault it
is: :class:`PolicyError` (the domain published something invalid) and
:class:`FetchError` (the policy could not be fetched).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import sqlite3
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pillarbox.deliver.mx import ascii_domain
from pillarbox.log import log_event
from pillarbox.policy.dns import DNSTemporaryError, Resolver

if TYPE_CHECKING:
    from pillarbox.config import DeliveryConfig

__all__ = ["MAX_AGE_LIMIT", "MTASTS", "WELL_KNOWN", "CachedPolicy", "FetchError", "Mode",
           "Policy", "PolicyCache", "PolicyError", "client_context", "fetch_policy",
           "mx_matches", "mx_refused", "parse_policy", "parse_response", "parse_txt_record",
           "select_txt_id", "tls_refused"]

log = logging.getLogger("pillarbox.mta_sts")
_OPEN_TRIES = 10   # the cache file at start: about 1 s of waiting in all, at most

MAX_AGE_LIMIT = 31557600         # §3.2: max_age is at most a year
MAX_POLICY_SIZE = 65536          # §3.3: "64 kilobytes" is a reasonable limit
MAX_HEAD_SIZE = 16384            # status line and header fields of the response
MAX_FRAMING = 16384              # chunk sizes and extensions of a chunked policy
REFRESH = 86400.0                # §5.1: refresh cached policies about once a day
RETRY_FETCH = 300.0              # a failed fetch is not repeated sooner than this
MEMORY_ENTRIES = 10000
WELL_KNOWN = "/.well-known/mta-sts.txt"


class PolicyError(ValueError):
    """The domain published an invalid TXT record or policy (the domain's fault)."""


class FetchError(Exception):
    """The policy could not be fetched: no address, no connection, a bad
    certificate, a redirect, a wrong media type, too large, too slow."""


# --- the TXT record (§3.1) -----------------------------------------------------

_TXT_FIELD = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,31})=(?P<value>[^;=\s]*)\Z")
_TXT_START = re.compile(r"v=STSv1[ \t]*;")
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")


def parse_txt_record(text: str) -> str:
    """The ``id`` of one ``_mta-sts`` TXT record (§3.1 ABNF); :class:`PolicyError`
    saying what is wrong otherwise.  Unknown fields are extensions and ignored."""
    parts = [p.strip(" \t") for p in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()           # a trailing ";" is allowed
    if not parts or parts[0] != "v=STSv1":
        raise PolicyError(f"TXT record {text!r} does not start with v=STSv1")
    record_id = None
    for part in parts[1:]:
        m = _TXT_FIELD.match(part)
        if m is None or not m["value"]:
            raise PolicyError(f"TXT record {text!r}: {part!r} is not a name=value field")
        if m["name"] == "id":
            if not _ID.match(m["value"]):
                raise PolicyError(f"TXT record {text!r}: id must be 1 to 32 letters and digits")
            if record_id is None:
                record_id = m["value"]
    if record_id is None:
        raise PolicyError(f"TXT record {text!r} has no id")
    return record_id


def select_txt_id(records: Iterable[str]) -> str:
    """The id of the one STSv1 record among ``records`` (§3.1: other records are
    discarded; not exactly one left means no policy): :class:`PolicyError` else."""
    sts = [r for r in records if _TXT_START.match(r)]
    if len(sts) != 1:
        raise PolicyError("no v=STSv1 TXT record" if not sts
                          else f"{len(sts)} v=STSv1 TXT records, not one")
    return parse_txt_record(sts[0])


# --- the policy (§3.2) ---------------------------------------------------------

class Mode(enum.Enum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


_FIELD = re.compile(r"(?P<key>[A-Za-z0-9_.-]{1,32}):[ \t]*(?P<value>[^\r\n]*?)[ \t]*\Z")
_MX_PATTERN = re.compile(r"(\*\.)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                         r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy; ``str()`` is the policy text as served (§3.2)."""

    mode: Mode
    max_age: int
    mx: tuple[str, ...]

    def allows(self, host: str) -> bool:
        """Whether the MX host ``host`` matches one of the ``mx`` patterns (§4.1)."""
        return any(mx_matches(p, host) for p in self.mx)

    def __str__(self) -> str:
        lines = ["version: STSv1", f"mode: {self.mode.value}"]
        lines += [f"mx: {p}" for p in self.mx]
        lines.append(f"max_age: {self.max_age}")
        return "".join(line + "\r\n" for line in lines)


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: an exact, case-insensitive match of the MX host name, or, for a
    pattern ``*.example.com``, a host of exactly one more label on the left
    (``mail.example.com``, but neither ``example.com`` nor ``a.b.example.com``)."""
    pattern = pattern.lower().rstrip(".")
    try:
        host = ascii_domain(host)
    except ValueError:      # not a host name (an MX of "mx_1.example"): compared as it is
        host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def parse_policy(text: str) -> Policy:
    """The policy in ``text`` (§3.2); :class:`PolicyError` saying what is wrong.

    Lines end with CRLF or LF; ``key: value``; unknown keys are extensions and
    ignored; of a repeated ``version``, ``mode`` or ``max_age`` the first counts;
    ``mx`` may repeat and is required unless the mode is ``none``; a
    ``max_age`` above 31557600 is taken as 31557600.
    """
    first: dict[str, str] = {}
    mx: list[str] = []
    for number, line in enumerate(re.split(r"\r?\n", text), start=1):
        if not line.strip():
            continue
        m = _FIELD.match(line)
        if m is None:
            raise PolicyError(f"policy line {number} is not 'key: value': {line[:80]!r}")
        key, value = m["key"], m["value"]
        if key == "mx":
            if not _MX_PATTERN.match(value) or len(value) > 253:
                raise PolicyError(f"policy line {number}: {value[:80]!r} is not an MX pattern "
                                  "(a host name, or *. and a domain)")
            mx.append(value.lower())
        else:
            first.setdefault(key, value)
    if first.get("version") != "STSv1":
        raise PolicyError("policy version is not STSv1" if "version" in first
                          else "policy has no version field")
    try:
        mode = Mode(first.get("mode", ""))
    except ValueError:
        raise PolicyError(f"policy mode {first.get('mode', '')!r} is not enforce, testing "
                          "or none") from None
    age = first.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", age):
        raise PolicyError(f"policy max_age {age!r} is not a number of seconds")
    if not mx and mode is not Mode.NONE:
        raise PolicyError(f"policy in mode {mode.value} has no mx field")
    return Policy(mode, min(int(age), MAX_AGE_LIMIT), tuple(dict.fromkeys(mx)))


# --- fetching over HTTPS (§3.3) --------------------------------------------------

@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]   # names in lower case
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


def parse_response(data: bytes, eof: bool, max_body: int = MAX_POLICY_SIZE) -> Response | None:
    """An HTTP/1.1 response (RFC 9112) from the bytes received so far; None when
    more are needed (and ``eof`` is false); :class:`FetchError` for a response
    that is malformed or has a body over ``max_body`` octets.  Bodies: by
    Content-Length, chunked, or up to the end of the connection."""
    if len(data) > MAX_HEAD_SIZE + max_body + MAX_FRAMING:
        # Chunk sizes and extensions that never end: the whole response is bounded too.
        raise FetchError(f"response over {MAX_HEAD_SIZE + max_body + MAX_FRAMING} octets")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD_SIZE:
            raise FetchError(f"response header over {MAX_HEAD_SIZE} octets")
        if eof:
            raise FetchError("connection closed before the end of the response header")
        return None
    head, rest = data[:end].decode("latin-1"), data[end + 4:]
    lines = head.split("\r\n")
    m = re.fullmatch(r"HTTP/1\.[01] ([0-9]{3})(?: (.*))?", lines[0])
    if m is None:
        raise FetchError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise FetchError(f"malformed response header field {line[:80]!r}")
        headers.append((name.lower(), value.strip(" \t")))
    response = Response(int(m[1]), m[2] or "", tuple(headers), b"")
    if response.status // 100 != 2:
        return response        # the body does not matter
    coding = (response.header("transfer-encoding") or "").lower()
    length = response.header("content-length")
    if coding:
        if coding != "chunked":
            raise FetchError(f"unsupported Transfer-Encoding {coding!r}")
        body = _dechunk(rest, eof, max_body)
    elif length is not None:
        if not length.isdigit() or len({v for k, v in headers if k == "content-length"}) > 1:
            raise FetchError(f"invalid Content-Length {length!r}")
        if int(length) > max_body:
            raise FetchError(f"policy of {length} octets is over the limit of {max_body}")
        if len(rest) < int(length):
            if eof:
                raise FetchError("connection closed before the end of the policy")
            return None
        body = rest[:int(length)]
    else:
        if len(rest) > max_body:
            raise FetchError(f"policy over the limit of {max_body} octets")
        body = rest if eof else None
    if body is None:
        return None
    return Response(response.status, response.reason, response.headers, body)


def _dechunk(data: bytes, eof: bool, max_body: int) -> bytes | None:
    body = bytearray()
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            break
        size_text = data[pos:line_end].split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size_text):
            raise FetchError(f"malformed chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if len(body) + size > max_body:
            raise FetchError(f"policy over the limit of {max_body} octets")
        start = line_end + 2
        if size == 0:
            return bytes(body)     # trailer fields, if any, are not needed
        if len(data) < start + size + 2:
            break
        if data[start + size:start + size + 2] != b"\r\n":
            raise FetchError("chunk not followed by CRLF")
        body += data[start:start + size]
        pos = start + size + 2
    if eof:
        raise FetchError("connection closed inside the chunked policy")
    return None


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """TLS for the policy host: certificate chain and name checked (§3.3)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def fetch_policy(domain: str, resolver: Resolver, context: ssl.SSLContext, *,
                       port: int = 443, timeout: float = 60.0) -> str:
    """The policy text of ``domain``, fetched from ``https://mta-sts.DOMAIN``;
    :class:`FetchError` saying why not.  The host's addresses come from
    ``resolver`` (A and AAAA), each tried in turn, all within ``timeout``."""
    host = f"mta-sts.{ascii_domain(domain).lower().rstrip('.')}"
    try:
        async with asyncio.timeout(timeout):
            addresses: list[str] = []
            why = ""
            for rdtype in ("AAAA", "A"):
                try:
                    addresses += (await resolver.query(host, rdtype)).records
                except DNSTemporaryError as exc:
                    why = f" ({exc})"
            if not addresses:
                raise FetchError(f"{host} has no address{why}")
            errors = []
            for address in addresses:
                try:
                    return await _get(host, address, port, context)
                except (OSError, ssl.SSLError) as exc:
                    errors.append(f"{host}[{address}]:{port}: {exc}")
            raise FetchError("; ".join(errors))
    except TimeoutError:
        raise FetchError(f"fetching https://{host}{WELL_KNOWN} took over {timeout:g} s") from None


async def _get(host: str, address: str, port: int, context: ssl.SSLContext) -> str:
    reader, writer = await asyncio.open_connection(address, port, ssl=context,
                                                   server_hostname=host)
    try:
        request = (f"GET {WELL_KNOWN} HTTP/1.1\r\nHost: {host}\r\n"
                   "User-Agent: Pillarbox MTA-STS\r\nAccept: text/plain\r\n"
                   "Connection: close\r\n\r\n")
        writer.write(request.encode("ascii"))
        await writer.drain()
        data = b""
        while True:
            chunk = await reader.read(16384)
            response = parse_response(data + chunk, eof=not chunk)
            if response is not None:
                break
            data += chunk
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
    where = f"https://{host}{WELL_KNOWN}"
    if 300 <= response.status < 400:
        raise FetchError(f"{where} answered {response.status} (redirect to "
                         f"{response.header('location')!r}), and redirects are not followed "
                         "(RFC 8461 3.3)")
    if response.status != 200:
        raise FetchError(f"{where} answered {response.status} {response.reason}".rstrip())
    media = (response.header("content-type") or "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise FetchError(f"{where} is of media type {media or 'unknown'!r}, not text/plain "
                         "(RFC 8461 3.2)")
    try:
        return response.body.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError(f"{where} is not UTF-8 text") from None


# --- the cache ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CachedPolicy:
    """A domain's policy as fetched: with the TXT id it came with, and when."""

    domain: str
    id: str
    policy: Policy
    fetched: float                  # wall clock (time.time())

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age

    def __str__(self) -> str:
        return f"MTA-STS policy of {self.domain} ({self.policy.mode.value})"


class PolicyCache:
    """Policies by domain: a bounded LRU in memory, over a SQLite file when
    ``path`` is given (None: memory only).  Expired policies are kept (a
    refetch replaces them); :meth:`MTASTS.lookup` never applies one.

    The file is read on a miss in memory and written once per fetched policy,
    in the event loop (small, rare statements).  A file that cannot be read or
    written is logged and the memory goes on alone: a broken cache file must
    not turn an enforced policy off."""

    def __init__(self, path: Path | None = None, *, entries: int = MEMORY_ENTRIES) -> None:
        self.path = path
        self._memory: OrderedDict[str, CachedPolicy] = OrderedDict()
        self._entries = entries
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None)
            # Every delivery agent opens the file as it starts, at the same
            # moment: turning a new file to WAL can answer "database is
            # locked" at once, without waiting for the busy timeout.
            for attempt in range(_OPEN_TRIES):
                try:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.execute("CREATE TABLE IF NOT EXISTS policy (domain TEXT PRIMARY KEY,"
                                     " id TEXT NOT NULL, fetched REAL NOT NULL, text TEXT NOT NULL)")
                    break
                except sqlite3.OperationalError as exc:
                    if attempt == _OPEN_TRIES - 1 or "locked" not in str(exc):
                        log.warning("MTA-STS policy cache %s not usable, memory only: %s",
                                    path, exc)
                        self._db.close()
                        self._db = None
                        break
                    time.sleep(0.02 * (attempt + 1))

    def get(self, domain: str) -> CachedPolicy | None:
        domain = domain.lower().rstrip(".")
        hit = self._memory.get(domain)
        if hit is not None:
            self._memory.move_to_end(domain)
            return hit
        if self._db is None:
            return None
        try:
            row = self._db.execute("SELECT id, fetched, text FROM policy WHERE domain = ?",
                                   (domain,)).fetchone()
        except sqlite3.Error as exc:
            log.error("MTA-STS cache %s cannot be read: %s", self.path, exc)
            return None
        if row is None:
            return None
        try:
            cached = CachedPolicy(domain, row[0], parse_policy(row[2]), float(row[1]))
        except PolicyError:
            return None   # written by an older, laxer version: as if never cached
        self._remember(cached)
        return cached

    def put(self, cached: CachedPolicy) -> None:
        self._remember(cached)
        if self._db is not None:
            try:
                self._db.execute("INSERT OR REPLACE INTO policy (domain, id, fetched, text) "
                                 "VALUES (?, ?, ?, ?)",
                                 (cached.domain, cached.id, cached.fetched, str(cached.policy)))
            except sqlite3.Error as exc:
                log.error("MTA-STS cache %s cannot be written: %s", self.path, exc)

    def _remember(self, cached: CachedPolicy) -> None:
        self._memory[cached.domain] = cached
        self._memory.move_to_end(cached.domain)
        while len(self._memory) > self._entries:
            self._memory.popitem(last=False)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


# --- discovery and the decision (§5.1) -------------------------------------------

class MTASTS:
    """The policy in force for a destination domain (see the module docstring).

    ``resolver``: the TXT and address lookups; ``cache``: where policies are
    kept; ``ca_file``: CAs for the policy hosts' certificates (None: the
    system's); ``timeout``: seconds one fetch may take; ``port`` is for tests;
    ``clock`` (wall clock) too.
    """

    def __init__(self, resolver: Resolver, cache: PolicyCache | None = None, *,
                 ca_file: Path | None = None, timeout: float = 60.0, port: int = 443,
                 clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.cache = cache if cache is not None else PolicyCache()
        self.timeout = timeout
        self.port = port
        self._context = client_context(ca_file)
        self._clock = clock
        self._failed: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> retry after
        self._inflight: dict[str, asyncio.Future[CachedPolicy | None]] = {}

    @classmethod
    def from_config(cls, config: DeliveryConfig, resolver: Resolver,
                    data_dir: Path) -> MTASTS | None:
        """Built from ``[delivery]``; None when ``mta_sts`` is off."""
        if not config.mta_sts:
            return None
        return cls(resolver, PolicyCache(data_dir / "mta-sts.sqlite"),
                   ca_file=config.mta_sts_ca_file, timeout=config.mta_sts_timeout)

    async def lookup(self, domain: str) -> CachedPolicy | None:
        """The policy in force for ``domain``, or None; never raises for what
        the domain or the network does (failures are logged)."""
        try:
            domain = ascii_domain(domain)
        except ValueError:
            return None       # no policy host can be named for it
        future = self._inflight.get(domain)
        if future is None:
            future = asyncio.ensure_future(self._lookup(domain))
            self._inflight[domain] = future
            future.add_done_callback(lambda f: self._inflight.pop(domain, None))
        return await asyncio.shield(future)

    async def _lookup(self, domain: str) -> CachedPolicy | None:
        now = self._clock()
        cached = self.cache.get(domain)
        if cached is not None and cached.expires <= now:
            cached = None
        # §5.1: without a live policy (no record, DNS failing), a cached one stays
        # in force.  Most domains publish no record at all: not worth a log line.
        try:
            answer = await self.resolver.query(f"_mta-sts.{domain}", "TXT")
        except DNSTemporaryError as exc:
            log_event(log, "sts record", domain=domain, error=str(exc),
                      cached=cached.id if cached else None, level=logging.INFO)
            return cached
        try:
            txt_id = select_txt_id(answer.records)
        except PolicyError as exc:
            if cached is not None or any(_TXT_START.match(r) for r in answer.records):
                log_event(log, "sts record", domain=domain, error=str(exc),
                          cached=cached.id if cached else None, level=logging.INFO)
            return cached
        if cached is not None and cached.id == txt_id and now - cached.fetched < REFRESH:
            return cached
        if self._failed.get((domain, txt_id), 0.0) > now:
            return cached     # failed lately; a new id is fetched at once
        try:
            text = await fetch_policy(domain, self.resolver, self._context, port=self.port,
                                      timeout=self.timeout)
            policy = parse_policy(text)
        except (FetchError, PolicyError) as exc:
            self._failed[(domain, txt_id)] = now + RETRY_FETCH
            while len(self._failed) > MEMORY_ENTRIES:
                self._failed.popitem(last=False)
            log_event(log, "sts fetch", domain=domain, id=txt_id, result="failed",
                      error=str(exc), cached=cached.id if cached else None,
                      level=logging.WARNING)
            return cached
        self._failed.pop((domain, txt_id), None)
        fresh = CachedPolicy(domain, txt_id, policy, now)
        self.cache.put(fresh)
        log_event(log, "sts fetch", domain=domain, id=txt_id, result="fetched",
                  mode=policy.mode.value, mx=",".join(policy.mx), max_age=policy.max_age)
        return fresh

    def close(self) -> None:
        self.cache.close()


# --- the words for the log and the DSN -----------------------------------------------

def mx_refused(cached: CachedPolicy, hosts: Iterable[str]) -> str:
    """The reply-shaped reason when no MX host of the domain matches its policy."""
    names = ", ".join(hosts) or "none"
    return (f"451 4.7.5 {cached} allows only MX hosts matching {', '.join(cached.policy.mx)}; "
            f"the domain's MX hosts ({names}) match none of them (RFC 8461 4.1)")


def tls_refused(cached: CachedPolicy, host: str, reply: str) -> str:
    """The reply-shaped reason when ``host`` failed the TLS check; ``reply`` is
    the failure as remote delivery words it ("451 4.7.5 TLS handshake ...")."""
    parts = reply.split(" ", 2)
    detail = parts[2] if len(parts) == 3 and parts[0].isdigit() else reply
    return (f"451 4.7.5 {cached} requires TLS with a certificate valid for {host} "
            f"(RFC 8461 4.2); {detail}")
