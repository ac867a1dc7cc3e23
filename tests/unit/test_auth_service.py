"""The login service: bounded hashing, cache, failure limits, SASL, logging."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.auth.passwords import hash_password, make_secrets, verify_password
from pillarbox.auth.sasl import Challenge
from pillarbox.auth.service import (
    AuthResult,
    Authenticator,
    Outcome,
    UnknownMechanism,
    normalize_username,
    plaintext_allowed,
)
from pillarbox.auth.throttle import client_key, is_loopback
from pillarbox.config import AuthConfig
from pillarbox.store.base import Credentials

try:
    import scramp
except ImportError:       # in the test extra; only the interop tests need it
    scramp = None
needs_scramp = pytest.mark.skipif(scramp is None, reason="scramp (test extra) not installed")

# Real argon2id hashes, at a cost that keeps the tests quick (production uses
# argon2-cffi's defaults; verification reads the cost from the hash).
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Accounts:
    """A fake credentials lookup over a dict, counting lookups."""

    def __init__(self) -> None:
        self.rows: dict[str, Credentials] = {}
        self.broken = False

    def add(self, address: str, password: str, *, scram: bool = True) -> None:
        password_hash, secrets = make_secrets(password, hasher=CHEAP, scram_iterations=4096)
        self.rows[address] = Credentials(len(self.rows) + 1, address, password_hash,
                                         secrets if scram else None)

    def __call__(self, address: str) -> Credentials | None:
        if self.broken:
            raise OSError("disk on fire")
        return self.rows.get(address)


class Counting:
    """verify_password, instrumented: calls, and how many ran at once at most."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, stored: str, password: str) -> bool:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.fail:
                raise RuntimeError("hasher broke")
            time.sleep(0.002)    # let overlaps show even on a busy machine
            return verify_password(stored, password)
        finally:
            with self._lock:
                self.running -= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def accounts() -> Accounts:
    a = Accounts()
    a.add("alice@example.test", "wonderland")
    a.add("j\u00f6rg@xn--bcher-kva.example", "p\u00e4ss")
    a.add("old@example.test", "legacy", scram=False)
    return a


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """The ``login`` events logged, as their fields."""
    seen: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append({"event": record.getMessage(), **getattr(record, "pbx_fields", {})})

    logger = logging.getLogger("pillarbox.auth")
    handler = Collect()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def make(accounts: Accounts, **kw: Any) -> tuple[Authenticator, Counting]:
    verify = kw.pop("verify", None) or Counting()
    kw.setdefault("failure_delay", 0)
    auth = Authenticator(accounts, verify=verify, hasher=CHEAP, **kw)
    return auth, verify


def login(auth: Authenticator, user: str, password: str, ip: str = "192.0.2.1") -> AuthResult:
    return asyncio.run(auth.login(user, password, client_ip=ip, protocol="imap",
                                  mechanism="LOGIN"))


# --------------------------------------------------------------- passwords


def test_login_ok_and_codes(accounts: Accounts, events: list[dict[str, Any]]) -> None:
    auth, verify = make(accounts)
    result = login(auth, "Alice@EXAMPLE.test", "wonderland")
    assert result.ok and result.credentials == accounts.rows["alice@example.test"]
    assert (result.imap_code, result.pop3_code, result.smtp_reply) == (None, None,
                                                                        (235, "2.7.0"))
    assert events == [{"event": "login", "client": "192.0.2.1", "account": "alice@example.test",
                       "protocol": "imap", "mechanism": "LOGIN", "result": "ok"}]


def test_wrong_password_and_unknown_user_look_alike(accounts: Accounts,
                                                    events: list[dict[str, Any]]) -> None:
    auth, verify = make(accounts)
    wrong = login(auth, "alice@example.test", "looking-glass")
    unknown = login(auth, "bob@example.test", "looking-glass")
    for r in (wrong, unknown):
        assert r.outcome is Outcome.FAILED and r.credentials is None
        assert (r.imap_code, r.pop3_code, r.smtp_reply) == ("AUTHENTICATIONFAILED", "AUTH",
                                                           (535, "5.7.8"))
    assert wrong.text == unknown.text == "authentication failed"
    assert (wrong.reason, unknown.reason) == ("wrong password", "unknown user")
    assert verify.calls == 2           # the unknown user costs a (decoy) check too
    assert [e["result"] for e in events] == ["failed", "failed"]
    assert events[1]["reason"] == "unknown user" and events[1]["account"] == "bob@example.test"


def test_usernames(accounts: Accounts) -> None:
    auth, verify = make(accounts)
    assert login(auth, "J\u00f6rg@B\u00fccher.example", "p\u00e4ss").ok     # IDN, case
    bare = login(auth, "alice", "wonderland")
    assert bare.outcome is Outcome.FAILED and "full address" in bare.text
    assert verify.calls == 1           # a bare name is refused before hashing
    assert normalize_username("I\u00adX@Example.TEST") == "ix@example.test"
    with pytest.raises(ValueError):
        normalize_username("a@[192.0.2.1]")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_normalize_username_refuses_with_value_error(name: str) -> None:
    """Invariant: any user name is an account key or a ValueError with a reason."""
    try:
        key = normalize_username(name)
    except ValueError as e:
        assert str(e)
    else:
        assert "@" in key and normalize_username(key) == key


def test_empty_password_refused_without_hashing(accounts: Accounts) -> None:
    auth, verify = make(accounts)
    assert login(auth, "alice@example.test", "").outcome is Outcome.FAILED
    assert verify.calls == 0


def test_saslprep_passwords(accounts: Accounts) -> None:
    auth, _ = make(accounts, cache_ttl=0)
    accounts.add("nine@example.test", "\u2168")
    assert login(auth, "nine@example.test", "IX").ok           # same prepared password
    # A hash made before preparation (of the raw password) still verifies.
    accounts.rows["nine@example.test"] = Credentials(9, "nine@example.test",
                                                     CHEAP.hash("\u2168"), None)
    assert login(auth, "nine@example.test", "\u2168").ok


# --------------------------------------------------------- bounded hashing


def test_hashing_is_bounded(accounts: Accounts) -> None:
    auth, verify = make(accounts, hash_workers=2, max_failures_per_ip=100,
                        max_failures_per_account=100)

    async def burst() -> list[AuthResult]:
        return await asyncio.gather(*(
            auth.login("alice@example.test", f"wrong{i}", client_ip=f"192.0.2.{i + 1}",
                       protocol="imap", mechanism="LOGIN")
            for i in range(50)))

    results = asyncio.run(burst())
    assert all(r.outcome is Outcome.FAILED for r in results)
    assert verify.calls == 50
    assert verify.max_running == 2     # never more than hash_workers, and both used
    auth.close()


def test_failure_delay_does_not_block(accounts: Accounts) -> None:
    auth, _ = make(accounts, failure_delay=0.5)

    async def both() -> tuple[float, float]:
        t0 = time.monotonic()

        async def timed(user: str, password: str, ip: str) -> float:
            r = await auth.login(user, password, client_ip=ip, protocol="pop3",
                                 mechanism="USER")
            assert r.ok == (password == "wonderland")
            return time.monotonic() - t0

        bad, good = await asyncio.gather(timed("alice@example.test", "x", "192.0.2.9"),
                                         timed("alice@example.test", "wonderland", "192.0.2.8"))
        return bad, good

    bad, good = asyncio.run(both())
    assert bad >= 0.5 and good < 0.5


# -------------------------------------------------------------------- cache


def test_cache_skips_argon2_for_the_same_hash_only(accounts: Accounts) -> None:
    clock = Clock()
    auth, verify = make(accounts, cache_ttl=300, clock=clock)
    assert login(auth, "alice@example.test", "wonderland").ok
    assert login(auth, "alice@example.test", "wonderland").ok
    assert verify.calls == 1                                  # second one from the cache
    assert login(auth, "alice@example.test", "Wonderland").outcome is Outcome.FAILED
    assert login(auth, "alice@example.test", "Wonderland").outcome is Outcome.FAILED
    assert verify.calls == 3                                  # failures are never cached
    accounts.add("alice@example.test", "new password")        # a new hash
    assert login(auth, "alice@example.test", "wonderland").outcome is Outcome.FAILED
    assert verify.calls == 4                                  # old password: checked, refused
    assert login(auth, "alice@example.test", "new password").ok
    clock.now += 301
    assert login(auth, "alice@example.test", "new password").ok
    assert verify.calls == 6                                  # expired: checked again


def test_no_cache(accounts: Accounts) -> None:
    auth, verify = make(accounts, cache_ttl=0)
    for _ in range(2):
        assert login(auth, "alice@example.test", "wonderland").ok
    assert verify.calls == 2


# --------------------------------------------------------- failure limits


def test_per_ip_limit(accounts: Accounts, events: list[dict[str, Any]]) -> None:
    clock = Clock()
    auth, verify = make(accounts, max_failures_per_ip=3, failure_window=60, clock=clock)
    for i in range(3):
        assert login(auth, f"u{i}@example.test", "guess").outcome is Outcome.FAILED
    refused = login(auth, "alice@example.test", "wonderland")   # even the right password
    assert refused.outcome is Outcome.LIMIT and "too many failed logins" in refused.text
    assert (refused.imap_code, refused.pop3_code, refused.smtp_reply) == (
        "LIMIT", "SYS/TEMP", (454, "4.7.0"))
    assert verify.calls == 3
    assert events[-1]["result"] == "limit"
    assert login(auth, "alice@example.test", "wonderland", ip="192.0.2.77").ok   # others fine
    clock.now += 61
    assert login(auth, "alice@example.test", "wonderland").ok


def test_parallel_attempts_cannot_pass_the_limit(accounts: Accounts) -> None:
    auth, verify = make(accounts, max_failures_per_ip=3)

    async def burst() -> list[AuthResult]:
        return await asyncio.gather(*(
            auth.login("alice@example.test", f"guess{i}", client_ip="198.51.100.1",
                       protocol="imap", mechanism="LOGIN") for i in range(10)))

    outcomes = [r.outcome for r in asyncio.run(burst())]
    # Checked again when a hash slot frees: at most hash_workers - 1 past the limit.
    assert 3 <= verify.calls <= 3 + auth.hash_workers - 1
    assert outcomes.count(Outcome.FAILED) == verify.calls
    assert outcomes.count(Outcome.LIMIT) == 10 - verify.calls


def test_parallel_good_logins_from_one_address(accounts: Accounts) -> None:
    """A webmail or a NAT logs many users in at once from one address: none is refused."""
    auth, verify = make(accounts, max_failures_per_ip=2, cache_ttl=0)

    async def burst() -> list[AuthResult]:
        return await asyncio.gather(*(
            auth.login("alice@example.test", "wonderland", client_ip="198.51.100.1",
                       protocol="imap", mechanism="LOGIN") for _ in range(12)))

    assert all(r.ok for r in asyncio.run(burst()))
    # Identical attempts in flight at once share one argon2id run.
    assert verify.calls == 1


def test_parallel_different_passwords_are_each_checked(accounts: Accounts) -> None:
    auth, verify = make(accounts, cache_ttl=0)

    async def burst() -> list[AuthResult]:
        return await asyncio.gather(*(
            auth.login("alice@example.test", pw, client_ip="127.0.0.1",
                       protocol="imap", mechanism="LOGIN")
            for pw in ("wonderland", "wrong1", "wonderland", "wrong2")))

    outcomes = [r.ok for r in asyncio.run(burst())]
    assert outcomes == [True, False, True, False]
    assert verify.calls == 3


def test_ipv6_counted_by_64(accounts: Accounts) -> None:
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert is_loopback("::1") and is_loopback("127.3.4.5") and not is_loopback("example")
    auth, _ = make(accounts, max_failures_per_ip=2)
    login(auth, "alice@example.test", "x", ip="2001:db8::1")
    login(auth, "alice@example.test", "x", ip="2001:db8::2")
    assert login(auth, "alice@example.test", "wonderland",
                 ip="2001:db8::3").outcome is Outcome.LIMIT


def test_per_account_limit_spares_loopback_and_known_clients(accounts: Accounts) -> None:
    auth, verify = make(accounts, max_failures_per_account=3, max_failures_per_ip=100)
    assert login(auth, "alice@example.test", "wonderland", ip="203.0.113.5").ok   # her phone
    for i in range(3):                       # a distributed guesser
        login(auth, "alice@example.test", "guess", ip=f"198.51.100.{i}")
    stranger = login(auth, "alice@example.test", "wonderland", ip="198.51.100.99")
    assert stranger.outcome is Outcome.LIMIT and "account" in stranger.reason
    assert login(auth, "alice@example.test", "wonderland", ip="127.0.0.1").ok
    assert login(auth, "alice@example.test", "wonderland", ip="203.0.113.5").ok
    assert login(auth, "other@example.test", "x", ip="198.51.100.99").outcome is Outcome.FAILED


def test_successes_are_not_counted(accounts: Accounts) -> None:
    auth, _ = make(accounts, max_failures_per_ip=2, cache_ttl=0)
    login(auth, "alice@example.test", "typo")
    for _ in range(5):
        assert login(auth, "alice@example.test", "wonderland").ok
    login(auth, "alice@example.test", "typo")
    assert login(auth, "alice@example.test", "wonderland").outcome is Outcome.LIMIT


# ------------------------------------------------------------------- errors


def test_store_failure_is_unavailable(accounts: Accounts, events: list[dict[str, Any]]) -> None:
    auth, _ = make(accounts)
    accounts.broken = True
    r = login(auth, "alice@example.test", "wonderland")
    assert r.outcome is Outcome.UNAVAILABLE and (r.imap_code, r.pop3_code) == (
        "UNAVAILABLE", "SYS/TEMP")
    assert "disk on fire" in r.reason and "disk" not in r.text
    assert events[-1]["result"] == "unavailable"


def test_hasher_failure_is_unavailable(accounts: Accounts) -> None:
    auth, _ = make(accounts, verify=Counting(fail=True))
    assert login(auth, "alice@example.test", "wonderland").outcome is Outcome.UNAVAILABLE


# --------------------------------------------------------------------- SASL


async def _sasl(auth: Authenticator, mechanism: str, responses: list[bytes | None],
                ip: str = "192.0.2.1") -> tuple[list[bytes], AuthResult]:
    exchange = auth.start(mechanism, client_ip=ip, protocol="smtp")
    challenges: list[bytes] = []
    for data in responses:
        step = await exchange.step(data)
        if isinstance(step, AuthResult):
            return challenges, step
        challenges.append(step.data)
    raise AssertionError(f"no result after {challenges}")


def test_sasl_plain_and_login(accounts: Accounts, events: list[dict[str, Any]]) -> None:
    auth, _ = make(accounts)
    ch, r = asyncio.run(_sasl(auth, "plain", [None, b"\0alice@example.test\0wonderland"]))
    assert ch == [b""] and r.ok
    ch, r = asyncio.run(_sasl(auth, "LOGIN", [None, b"alice@example.test", b"nope"]))
    assert ch == [b"Username:", b"Password:"] and r.outcome is Outcome.FAILED
    ch, r = asyncio.run(_sasl(auth, "PLAIN", [b"bob@example.test\0alice@example.test\0x"]))
    assert r.outcome is Outcome.FAILED and "no proxy authorization" in r.text
    assert [(e["mechanism"], e["protocol"], e["result"]) for e in events] == [
        ("PLAIN", "smtp", "ok"), ("LOGIN", "smtp", "failed"), ("PLAIN", "smtp", "failed")]


def _scram_exchange(auth: Authenticator, user: str, password: str,
                    ip: str = "192.0.2.1") -> tuple[AuthResult, Any]:
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)

    async def run() -> AuthResult:
        exchange = auth.start("SCRAM-SHA-256", client_ip=ip, protocol="imap")
        step = await exchange.step(client.get_client_first().encode())
        if isinstance(step, AuthResult):
            return step
        client.set_server_first(step.data.decode())
        result = await exchange.step(client.get_client_final().encode())
        assert isinstance(result, AuthResult)
        return result

    return asyncio.run(run()), client


@needs_scramp
def test_scram_with_a_real_client(accounts: Accounts) -> None:
    auth, verify = make(accounts)
    result, client = _scram_exchange(auth, "Alice@Example.test", "wonderland")
    assert result.ok and result.credentials is not None
    assert result.credentials.address == "alice@example.test"
    assert result.server_final is not None
    client.set_server_final(result.server_final.decode())   # the client checks the server
    result, _ = _scram_exchange(auth, "j\u00f6rg@B\u00fccher.example", "p\u00e4ss")
    assert result.ok
    assert verify.calls == 0                                  # SCRAM needs no argon2


@needs_scramp
def test_scram_failures(accounts: Accounts) -> None:
    auth, _ = make(accounts)
    wrong, _ = _scram_exchange(auth, "alice@example.test", "queen")
    unknown, _ = _scram_exchange(auth, "nobody@example.test", "queen")
    for r in (wrong, unknown):
        assert r.outcome is Outcome.FAILED and r.text == "authentication failed"
        assert r.server_error == b"e=invalid-proof"
    assert (wrong.reason, unknown.reason) == ("wrong password", "unknown user")
    bare, _ = _scram_exchange(auth, "alice", "wonderland")
    assert bare.outcome is Outcome.FAILED and "full address" in bare.text


@needs_scramp
def test_scram_without_secrets_but_plain_works(accounts: Accounts) -> None:
    auth, _ = make(accounts)
    r, _ = _scram_exchange(auth, "old@example.test", "legacy")
    assert r.outcome is Outcome.FAILED and "no SCRAM secrets: set the password again" in r.text
    assert login(auth, "old@example.test", "legacy").ok
    _, r = asyncio.run(_sasl(auth, "PLAIN", [b"\0old@example.test\0legacy"]))
    assert r.ok


@needs_scramp
def test_scram_damaged_secrets(accounts: Accounts) -> None:
    auth, _ = make(accounts)
    row = accounts.rows["alice@example.test"]
    accounts.rows[row.address] = Credentials(row.account_id, row.address, row.password_hash,
                                             "SCRAM-SHA-256$4096$bad")
    r, _ = _scram_exchange(auth, "alice@example.test", "wonderland")
    assert r.outcome is Outcome.UNAVAILABLE and "5" in r.reason


@needs_scramp
def test_scram_limits(accounts: Accounts) -> None:
    auth, _ = make(accounts, max_failures_per_ip=2)
    for _ in range(2):
        assert _scram_exchange(auth, "alice@example.test", "x")[0].outcome is Outcome.FAILED
    assert _scram_exchange(auth, "alice@example.test", "wonderland")[0].outcome is Outcome.LIMIT


@needs_scramp
def test_scram_proof_checked_against_the_limit_again(accounts: Accounts) -> None:
    """An exchange opened before others failed is refused at its proof."""
    auth, _ = make(accounts, max_failures_per_ip=2)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice@example.test", "wonderland")

    async def run() -> AuthResult | Challenge:
        exchange = auth.start("SCRAM-SHA-256", client_ip="192.0.2.1", protocol="imap")
        step = await exchange.step(client.get_client_first().encode())
        assert isinstance(step, Challenge)
        client.set_server_first(step.data.decode())
        for _ in range(2):
            r = await auth.login("alice@example.test", "x", client_ip="192.0.2.1",
                                 protocol="imap", mechanism="LOGIN")
            assert r.outcome is Outcome.FAILED
        return await exchange.step(client.get_client_final().encode())

    result = asyncio.run(run())
    assert isinstance(result, AuthResult) and result.outcome is Outcome.LIMIT


def test_cancel_and_misuse(accounts: Accounts, events: list[dict[str, Any]]) -> None:
    auth, _ = make(accounts, max_failures_per_ip=1)

    async def run() -> None:
        exchange = auth.start("LOGIN", client_ip="192.0.2.1", protocol="pop3")
        assert await exchange.step(None) == Challenge(b"Username:")
        with pytest.raises(ValueError):
            await exchange.step(None)
        assert await exchange.step(b"alice@example.test") == Challenge(b"Password:")
        r = exchange.cancel()
        assert r.outcome is Outcome.FAILED and exchange.result is r
        with pytest.raises(RuntimeError):
            await exchange.step(b"x")

    asyncio.run(run())
    assert events[-1]["reason"] == "cancelled by the client"
    assert login(auth, "alice@example.test", "wonderland").ok   # cancelling is not a failure
    with pytest.raises(UnknownMechanism, match="CRAM-MD5"):
        auth.start("CRAM-MD5", client_ip="192.0.2.1", protocol="imap")


# ------------------------------------------------------------------- policy


def test_plaintext_policy(accounts: Accounts) -> None:
    assert plaintext_allowed(True, "192.0.2.1", False)
    assert not plaintext_allowed(False, "127.0.0.1", False)
    assert plaintext_allowed(False, "127.0.0.1", True)
    assert not plaintext_allowed(False, "192.0.2.1", True)
    auth, _ = make(accounts, allow_plaintext_on_loopback=True)
    assert auth.mechanisms(False, "192.0.2.1") == ["SCRAM-SHA-256"]
    assert auth.mechanisms(True, "192.0.2.1") == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
    assert auth.mechanisms(False, "::1") == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]


def test_from_config(accounts: Accounts) -> None:
    config = AuthConfig()
    auth = Authenticator.from_config(config, accounts)
    assert (auth.hash_workers, auth.cache_ttl, auth.failure_delay) == (
        config.hash_workers, config.cache_ttl, config.failure_delay)


def test_production_hash_uses_argon2_defaults() -> None:
    stored = hash_password("pw")
    default = PasswordHasher()
    assert f"m={default.memory_cost},t={default.time_cost},p={default.parallelism}" in stored


# ------------------------------------------------------- with the real store


@needs_scramp
def test_user_add_and_passwd_store_both_secrets(tmp_path: Any) -> None:
    """`user add` / `user passwd` store argon2 and SCRAM; a new password replaces both."""
    from pillarbox.admin import commands
    from pillarbox.store.sqlite.store import SQLiteStore

    store = SQLiteStore(tmp_path).open()
    try:
        store.add_domain("example.test")
        commands.add_user(store, "Carol@Example.test", "first")
        creds = store.credentials("carol@example.test")
        assert creds is not None and creds.scram is not None
        assert creds.scram.startswith("SCRAM-SHA-256$16384$")
        auth = Authenticator(store.credentials, failure_delay=0)
        assert _scram_exchange(auth, "carol@example.test", "first")[0].ok
        assert login(auth, "carol@example.test", "first").ok
        commands.set_password(store, "carol@example.test", "second")
        assert _scram_exchange(auth, "carol@example.test", "first")[0].outcome is Outcome.FAILED
        assert _scram_exchange(auth, "carol@example.test", "second")[0].ok
        assert login(auth, "carol@example.test", "first").outcome is Outcome.FAILED
        assert login(auth, "carol@example.test", "second").ok
        auth.close()
    finally:
        store.close()
