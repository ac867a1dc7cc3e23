"""MTA-STS (RFC 8461): TXT record and policy parsing, MX patterns, the HTTPS fetch
and its limits, and the cache rules, against a local HTTPS server on 127.0.0.1
with a test CA made here."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pillarbox.deliver import mta_sts
from pillarbox.deliver.mta_sts import (
    MAX_AGE_LIMIT,
    MTASTS,
    CachedPolicy,
    FetchError,
    Mode,
    Policy,
    PolicyCache,
    PolicyError,
    client_context,
    fetch_policy,
    mx_matches,
    mx_refused,
    parse_policy,
    parse_response,
    parse_txt_record,
    select_txt_id,
    tls_refused,
)
from pillarbox.policy.dns import StaticResolver

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


# ------------------------------------------------------------- a test CA


@dataclass
class LabCA:
    """A certificate authority made for the test, and certificates it issues."""

    directory: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(
        ec.SECP256R1()))
    name: str = "Pillarbox Test CA"

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str, stem: str | None = None) -> tuple[Path, Path]:
        """A certificate for ``names`` (DNS names or IP addresses): (cert, key) files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        stem = stem or names[0].replace("*", "_")
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path

    def server_context(self, *names: str) -> ssl.SSLContext:
        cert, key = self.issue(*names)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return ctx


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA(tmp_path_factory.mktemp("ca"))


# ------------------------------------------------------ a local HTTPS server


RFC_POLICY = ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
              "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n")


def http(body: bytes | str, status: str = "200 OK", ctype: str = "text/plain",
         extra: str = "") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + data


class PolicyHost:
    """An HTTPS server on 127.0.0.1 answering every request with ``response``
    (or with nothing for ``stall`` seconds); ``requests`` holds what it was asked."""

    def __init__(self, context: ssl.SSLContext, response: bytes = http(RFC_POLICY)) -> None:
        self.context = context
        self.response = response
        self.stall = 0.0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PolicyHost:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0,
                                                  ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.stall:
                await asyncio.sleep(self.stall)
            writer.write(self.response)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


def zone(txt: tuple[str, ...] = ("v=STSv1; id=20160831085700Z;",),
         domain: str = "example.com") -> StaticResolver:
    records: dict[tuple[str, str], tuple[str, ...]] = {
        (f"mta-sts.{domain}", "A"): ("127.0.0.1",)}
    if txt:
        records[(f"_mta-sts.{domain}", "TXT")] = txt
    return StaticResolver(records)


# ------------------------------------------------------------- the TXT record


def test_txt_record_of_the_rfc() -> None:
    assert parse_txt_record("v=STSv1; id=20160831085700Z;") == "20160831085700Z"
    assert parse_txt_record("v=STSv1;id=abc") == "abc"
    assert parse_txt_record("v=STSv1 ;\tid=abc ; ext.a-b_c=value") == "abc"
    assert parse_txt_record("v=STSv1; id=first; id=second") == "first"


@pytest.mark.parametrize("text, why", [
    ("v=STSv1;", "has no id"),
    ("v=STSv1; foo=bar", "has no id"),
    ("id=abc; v=STSv1", "does not start with v=STSv1"),
    ("v=STSv2; id=abc", "does not start with v=STSv1"),
    ("v=STSv1; id=" + "a" * 33, "1 to 32 letters and digits"),
    ("v=STSv1; id=ab-c", "1 to 32 letters and digits"),
    ("v=STSv1; id", "not a name=value field"),
    ("v=STSv1; id=", "not a name=value field"),
])
def test_invalid_txt_records_say_why(text: str, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        parse_txt_record(text)


def test_only_records_starting_v_stsv1_count_and_only_one_of_them() -> None:
    assert select_txt_id(["v=spf1 -all", "v=STSv1; id=abc", "v=STSv10; id=x"]) == "abc"
    with pytest.raises(PolicyError, match="no v=STSv1 TXT record"):
        select_txt_id(["v=spf1 -all"])
    with pytest.raises(PolicyError, match="2 v=STSv1 TXT records, not one"):
        select_txt_id(["v=STSv1; id=a", "v=STSv1; id=b"])
    with pytest.raises(PolicyError, match="has no id"):
        select_txt_id(["v=STSv1; other=1"])


# ------------------------------------------------------------- the policy


def test_the_policy_of_the_rfc() -> None:
    policy = parse_policy(RFC_POLICY)
    assert policy == Policy(Mode.ENFORCE, 604800,
                            ("mail.example.com", "*.example.net", "backupmx.example.com"))
    assert parse_policy(str(policy)) == policy
    assert str(policy) == RFC_POLICY


def test_policy_with_lf_blanks_extensions_and_repeats() -> None:
    text = ("version: STSv1\nmode:testing\n\nmx:   MX.Example.COM  \nfoo_bar: anything: at all\n"
            "max_age: 86400\nmode: enforce\nmx: mx.example.com\n")
    assert parse_policy(text) == Policy(Mode.TESTING, 86400, ("mx.example.com",))


def test_max_age_is_bounded_and_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999").max_age == \
        MAX_AGE_LIMIT
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0") == Policy(Mode.NONE, 0, ())


@pytest.mark.parametrize("text, why", [
    ("mode: enforce\nmx: a.example\nmax_age: 1", "no version field"),
    ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1", "version is not STSv1"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1", "'strict' is not enforce"),
    ("version: STSv1\nmx: a.example\nmax_age: 1", "mode '' is not"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1", "max_age '-1'"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example", "max_age ''"),
    ("version: STSv1\nmode: enforce\nmax_age: 60", "mode enforce has no mx"),
    ("version: STSv1\nmode: testing\nmax_age: 60", "mode testing has no mx"),
    ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 60", "not an MX pattern"),
    ("version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 60", "not an MX pattern"),
    ("version: STSv1\nmode: enforce\nmx: *example.com\nmax_age: 60", "not an MX pattern"),
    ("version: STSv1\nmode: enforce\nmx: a b\nmax_age: 60", "not an MX pattern"),
    ("<html>\n<body>Not found</body>", "line 1 is not 'key: value'"),
])
def test_invalid_policies_say_why(text: str, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        parse_policy(text)


@pytest.mark.parametrize("pattern, host, matches", [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.Example.COM.", True),
    ("mail.example.com", "mail2.example.com", False),
    ("*.example.net", "mx1.example.net", True),
    ("*.example.net", "MX1.EXAMPLE.NET.", True),
    ("*.example.net", "example.net", False),            # §4.1: not the bare domain
    ("*.example.net", "a.b.example.net", False),        # §4.1: only the leftmost label
    ("*.example.net", "mx1.example.net.evil", False),
    ("*.example.net", "mx1example.net", False),
    ("*.xn--bcher-kva.example", "mx.bücher.example", True),
    ("*.example.net", "mx_1.example.net", True),         # not LDH: compared as it is
    ("mx_1.example.net", "MX_1.example.net", True),
])
def test_mx_patterns(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


# ------------------------------------------------------------- HTTP responses


def test_responses_by_length_chunked_and_close() -> None:
    assert parse_response(http("abc")[:-1], eof=False) is None
    r = parse_response(http("abc"), eof=False)
    assert r is not None and (r.status, r.body, r.header("content-type")) == \
        (200, b"abc", "text/plain")
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\nvers\r\n6;ext=1\r\nion: S\r\n0\r\n\r\n")
    assert parse_response(chunked[:-5], eof=False) is None
    r = parse_response(chunked, eof=False)
    assert r is not None and r.body == b"version: S"
    closed = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    assert parse_response(closed, eof=False) is None
    r = parse_response(closed, eof=True)
    assert r is not None and r.body == b"all of it"


@pytest.mark.parametrize("data, why", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n", "over the limit of 65536"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n", "over the limit"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 65537, "over the limit of 65536 octets"),
    (b"SMTP/1.1 200 OK\r\n\r\n", "not an HTTP response"),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed response header"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n12",
     "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 4000, "response header over"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 100000,
     "response over 98304 octets"),
])
def test_bad_responses(data: bytes, why: str) -> None:
    with pytest.raises(FetchError, match=why):
        parse_response(data, eof=False)


def test_truncated_responses_at_the_end_of_the_connection() -> None:
    with pytest.raises(FetchError, match="before the end of the policy"):
        parse_response(http("abcdef")[:-2], eof=True)
    with pytest.raises(FetchError, match="before the end of the response header"):
        parse_response(b"HTTP/1.1 200 OK\r\n", eof=True)


# ------------------------------------------------------------- fetching


def fetch(ca: LabCA, host: PolicyHost, *, timeout: float = 5.0,
          resolver: StaticResolver | None = None, ca_file: bool = True) -> str:
    async def go() -> str:
        async with host:
            return await fetch_policy("example.com", resolver or zone(),
                                      client_context(ca.ca_file if ca_file else None),
                                      port=host.port, timeout=timeout)
    return run(go())


def test_fetch_over_https(ca: LabCA) -> None:
    host = PolicyHost(ca.server_context("mta-sts.example.com"),
                      http(RFC_POLICY, ctype="text/plain; charset=utf-8"))
    assert fetch(ca, host) == RFC_POLICY
    [request] = host.requests
    assert request.startswith(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
    assert b"\r\nHost: mta-sts.example.com\r\n" in request


def test_a_redirect_is_not_followed(ca: LabCA) -> None:
    host = PolicyHost(ca.server_context("mta-sts.example.com"),
                      http("", "301 Moved Permanently",
                           extra="Location: https://elsewhere.example/policy\r\n"))
    with pytest.raises(FetchError, match=r"answered 301 \(redirect to "
                       r"'https://elsewhere.example/policy'\).*not followed"):
        fetch(ca, host)
    assert len(host.requests) == 1


@pytest.mark.parametrize("response, why", [
    (http("no", "404 Not Found"), "answered 404 Not Found"),
    (http(RFC_POLICY, ctype="text/html"), "media type 'text/html', not text/plain"),
    (http(b"x" * 70000), "70000 octets is over the limit of 65536"),
    (http(b"version: STSv1\xff"), "not UTF-8"),
])
def test_fetch_failures(ca: LabCA, response: bytes, why: str) -> None:
    host = PolicyHost(ca.server_context("mta-sts.example.com"), response)
    with pytest.raises(FetchError, match=why):
        fetch(ca, host)


def test_a_body_larger_than_64k_without_length_is_cut_off(ca: LabCA) -> None:
    host = PolicyHost(ca.server_context("mta-sts.example.com"),
                      b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 200000)
    with pytest.raises(FetchError, match="over the limit of 65536 octets"):
        fetch(ca, host)


def test_a_silent_server_times_out(ca: LabCA) -> None:
    host = PolicyHost(ca.server_context("mta-sts.example.com"))
    host.stall = 30
    with pytest.raises(FetchError, match=r"took over 0.5 s"):
        fetch(ca, host, timeout=0.5)


def test_the_certificate_must_be_valid_for_the_policy_host(ca: LabCA) -> None:
    host = PolicyHost(ca.server_context("www.example.com"))
    with pytest.raises(FetchError, match="certificate verify failed.*(Hostname mismatch|"
                       "doesn't match)"):
        fetch(ca, host)
    trusted_elsewhere = PolicyHost(ca.server_context("mta-sts.example.com"))
    with pytest.raises(FetchError, match="certificate verify failed"):
        fetch(ca, trusted_elsewhere, ca_file=False)      # the system's CAs only


def test_a_policy_host_without_address(ca: LabCA) -> None:
    host = PolicyHost(ca.server_context("mta-sts.example.com"))
    with pytest.raises(FetchError, match="mta-sts.example.com has no address"):
        fetch(ca, host, resolver=StaticResolver({("other.example", "A"): ("127.0.0.1",)}))
    failing = StaticResolver(failing={"mta-sts.example.com"})
    with pytest.raises(FetchError, match="has no address.*timed out"):
        fetch(ca, host, resolver=failing)


# ------------------------------------------------------------- the cache rules


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    host: PolicyHost
    resolver: StaticResolver
    clock: Clock
    sts: MTASTS


@pytest.fixture
def world(ca: LabCA, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Runs ``scenario(world)`` with a policy host up, in one event loop."""
    made: list[MTASTS] = []

    def go(scenario: Callable[[World], Coroutine[Any, Any, T]],
           cache: Path | None = None) -> T:
        async def main() -> T:
            host = PolicyHost(ca.server_context("mta-sts.example.com"))
            async with host:
                resolver, clock = zone(), Clock()
                sts = MTASTS(resolver, PolicyCache(cache or tmp_path / "mta-sts.sqlite"),
                             ca_file=ca.ca_file, timeout=5, port=host.port, clock=clock)
                made.append(sts)
                return await scenario(World(host, resolver, clock, sts))
        return run(main())

    yield go
    for sts in made:
        sts.close()


def set_txt(resolver: StaticResolver, *records: str) -> None:
    key = ("_mta-sts.example.com", "TXT")
    resolver.records[key] = records
    resolver._names.add(key[0])
    if not records:
        del resolver.records[key]


def test_no_txt_record_no_policy_no_fetch(world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        set_txt(w.resolver)
        assert await w.sts.lookup("example.com") is None
        assert w.host.requests == []
    world(scenario)


def test_fetched_once_then_from_the_cache(world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        first = await w.sts.lookup("Example.COM.")
        assert first is not None and first.id == "20160831085700Z"
        assert first.policy.mode is Mode.ENFORCE and str(first) == \
            "MTA-STS policy of example.com (enforce)"
        w.clock.now += 3600
        again, also = await asyncio.gather(w.sts.lookup("example.com"),
                                           w.sts.lookup("example.com"))
        assert again == first and also == first
        assert len(w.host.requests) == 1
    world(scenario)


def test_concurrent_first_lookups_share_one_fetch(world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        got = await asyncio.gather(*(w.sts.lookup("example.com") for _ in range(5)))
        assert all(g is not None and g == got[0] for g in got)
        assert len(w.host.requests) == 1
    world(scenario)


def test_a_new_txt_id_fetches_again(world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        await w.sts.lookup("example.com")
        w.host.response = http(RFC_POLICY.replace("enforce", "testing"))
        set_txt(w.resolver, "v=STSv1; id=2")
        w.clock.now += 60
        new = await w.sts.lookup("example.com")
        assert new is not None and new.id == "2" and new.policy.mode is Mode.TESTING
        assert len(w.host.requests) == 2
    world(scenario)


def test_an_expired_policy_is_fetched_again_and_a_day_old_one_refreshed(
        world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        w.host.response = http(RFC_POLICY.replace("604800", "600"))
        first = await w.sts.lookup("example.com")
        assert first is not None and first.expires == w.clock.now + 600
        w.clock.now += 601
        await w.sts.lookup("example.com")
        assert len(w.host.requests) == 2
        w.host.response = http(RFC_POLICY)
        w.clock.now += 601
        await w.sts.lookup("example.com")
        w.clock.now += mta_sts.REFRESH + 1          # same id, unexpired, but a day old
        await w.sts.lookup("example.com")
        assert len(w.host.requests) == 4
    world(scenario)


def test_a_failed_refetch_keeps_the_cached_policy(world: Callable[..., Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(w: World) -> None:
        first = await w.sts.lookup("example.com")
        w.host.response = http("oops", "500 Internal Server Error")
        set_txt(w.resolver, "v=STSv1; id=2")
        w.clock.now += 60
        with caplog.at_level(logging.WARNING, "pillarbox.mta_sts"):
            kept = await w.sts.lookup("example.com")
        assert kept == first                        # §5.1: the cached policy stays in force
        [record] = [r for r in caplog.records if r.getMessage() == "sts fetch"]
        fields = record.pbx_fields  # type: ignore[attr-defined]
        assert fields["result"] == "failed" and fields["cached"] == "20160831085700Z"
        assert "answered 500 Internal Server Error" in fields["error"]
        # ... and the failing host is not asked again at once for the same id,
        await w.sts.lookup("example.com")
        assert len(w.host.requests) == 2
        set_txt(w.resolver, "v=STSv1; id=3")       # but at once for a new one
        assert await w.sts.lookup("example.com") == first
        assert len(w.host.requests) == 3
        set_txt(w.resolver, "v=STSv1; id=2")
        # but once RETRY_FETCH has passed.
        w.host.response = http(RFC_POLICY.replace("enforce", "none"))
        w.clock.now += mta_sts.RETRY_FETCH + 1
        new = await w.sts.lookup("example.com")
        assert new is not None and new.id == "2" and new.policy.mode is Mode.NONE
    world(scenario)


def test_an_invalid_new_policy_keeps_the_cached_one(world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        first = await w.sts.lookup("example.com")
        w.host.response = http("version: STSv1\nmode: enforce\nmax_age: 60\n")
        set_txt(w.resolver, "v=STSv1; id=2")
        assert await w.sts.lookup("example.com") == first
    world(scenario)


def test_without_a_live_record_a_cached_policy_stays_until_it_expires(
        world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        first = await w.sts.lookup("example.com")
        assert first is not None
        set_txt(w.resolver)                          # the record is gone (or stripped)
        w.clock.now += 1000
        assert await w.sts.lookup("example.com") == first
        w.resolver.failing.add("_mta-sts.example.com")   # DNS fails
        assert await w.sts.lookup("example.com") == first
        w.clock.now = first.expires + 1
        assert await w.sts.lookup("example.com") is None
        assert len(w.host.requests) == 1
    world(scenario)


def test_no_policy_when_the_first_fetch_fails(world: Callable[..., Any]) -> None:
    async def scenario(w: World) -> None:
        w.host.response = http("", "302 Found", extra="Location: /x\r\n")
        assert await w.sts.lookup("example.com") is None
        assert await w.sts.lookup("bad..example") is None      # not a domain: no policy
        assert w.resolver.queries[-1] != ("_mta-sts.bad..example", "TXT")
    world(scenario)


def test_a_restart_keeps_the_policies(world: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "kept.sqlite"

    async def fetch_it(w: World) -> CachedPolicy | None:
        return await w.sts.lookup("example.com")

    async def after_restart(w: World) -> tuple[CachedPolicy | None, int]:
        w.resolver.failing.add("_mta-sts.example.com")
        w.clock.now += 10
        return await w.sts.lookup("example.com"), len(w.host.requests)

    first = world(fetch_it, cache=path)
    assert first is not None
    kept, fetches = world(after_restart, cache=path)
    assert kept == first and fetches == 0


def test_the_memory_cache_is_bounded_and_backed_by_the_file(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path / "c.sqlite", entries=2)
    policy = Policy(Mode.ENFORCE, 60, ("mx.example.com",))
    for i in range(3):
        cache.put(CachedPolicy(f"d{i}.example", str(i), policy, 1.0))
    assert len(cache._memory) == 2
    assert cache.get("D0.example.") == CachedPolicy("d0.example", "0", policy, 1.0)
    cache.close()
    memory_only = PolicyCache()
    assert memory_only.get("d0.example") is None


def test_the_reasons_for_the_log_and_the_dsn() -> None:
    cached = CachedPolicy("example.com", "1", parse_policy(RFC_POLICY), 0.0)
    assert mx_refused(cached, ["evil.example"]) == (
        "451 4.7.5 MTA-STS policy of example.com (enforce) allows only MX hosts matching "
        "mail.example.com, *.example.net, backupmx.example.com; the domain's MX hosts "
        "(evil.example) match none of them (RFC 8461 4.1)")
    assert tls_refused(cached, "mail.example.com", "451 4.7.5 TLS handshake with "
                       "mail.example.com[192.0.2.1]:25 failed: certificate verify failed") == (
        "451 4.7.5 MTA-STS policy of example.com (enforce) requires TLS with a certificate "
        "valid for mail.example.com (RFC 8461 4.2); TLS handshake with "
        "mail.example.com[192.0.2.1]:25 failed: certificate verify failed")


def test_a_failing_cache_file_leaves_the_memory_working(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    cache = PolicyCache(tmp_path / "c.sqlite")
    assert cache._db is not None
    cache._db.close()                               # as a file gone bad under us
    cached = CachedPolicy("d.example", "1", Policy(Mode.ENFORCE, 60, ("mx.d.example",)), 1.0)
    with caplog.at_level(logging.ERROR, "pillarbox.mta_sts"):
        cache.put(cached)
        assert cache.get("d.example") == cached
        assert cache.get("other.example") is None
    assert "cannot be written" in caplog.text and "cannot be read" in caplog.text


def test_from_config(tmp_path: Path, ca: LabCA) -> None:
    from pillarbox.config import load_config

    off = load_config(None, {"delivery.mta_sts": "off"})
    assert MTASTS.from_config(off.delivery, zone(), tmp_path) is None
    on = load_config(None, {"delivery.mta_sts_ca_file": str(ca.ca_file),
                            "delivery.mta_sts_timeout": "5s"})
    sts = MTASTS.from_config(on.delivery, zone(), tmp_path)
    assert sts is not None and sts.timeout == 5.0
    assert sts.cache.path == tmp_path / "mta-sts.sqlite" and sts.cache.path.exists()
    sts.close()
