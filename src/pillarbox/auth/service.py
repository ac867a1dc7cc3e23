"""Logging in: the asyncio-facing service shared by IMAP, POP3 and submission.

One :class:`Authenticator` per process.  The protocol layers call

* ``await auth.login(user, password, client_ip=…, protocol=…, mechanism=…)``
  for IMAP LOGIN and POP3 USER/PASS, and
* ``exchange = auth.start(mechanism, client_ip=…, protocol=…)`` then
  ``await exchange.step(data)`` (``None`` first for no initial response)
  for IMAP AUTHENTICATE, POP3 AUTH and SMTP AUTH,

and get an :class:`AuthResult`, which names its IMAP (RFC 5530), POP3
(RFC 3206) and SMTP (RFC 4954) codes.  What it does, and why:

* **User names** are full addresses, SASLprep'd (RFC 4013) and normalised as
  the store keys accounts (``admin.names.normalize_address``: local part
  case-insensitive, IDN domains as A-labels).  A bare name is refused with a
  reason, before any hashing: guessing which domain was meant would make a
  login's meaning depend on the set of domains.
* **Bounded hashing**: argon2id takes 64 MiB a check; at most
  ``hash_workers`` checks run at once (a semaphore in front of a thread pool
  of that size), the rest wait in asyncio, cancellable.  A burst of logins
  costs time, not memory.  An unknown user is checked against a decoy hash,
  so it costs what a real account costs and timing does not tell them apart.
* **Cache**: a successful check is remembered as
  HMAC-SHA-256(per-process key, address NUL password NUL stored hash) for
  ``cache_ttl``; the same password against the *same* stored hash skips
  argon2; a new password means a new hash and so a different digest.  Only
  successes are cached; the key never leaves the process.
* **Failures** wait ``failure_delay`` (asyncio.sleep) and are counted in a
  sliding window per client address (``throttle.client_key``) and per
  account.  Past ``max_failures_per_ip``, an address is refused at once
  (LIMIT) without a check.  The per-account limit stops a slow distributed
  guesser, but it would let anyone lock a user out; so it does not apply to
  loopback clients, nor to an address the account logged in from with its
  password in the last week (``KNOWN_CLIENT_TTL``): the owner's own devices
  keep working while strangers are refused.  Refusals are not counted, so a
  lock-out ends ``failure_window`` after the last real failure.  Limits are
  checked again when an attempt's turn to hash comes (and before a SCRAM
  proof is checked), so parallel guesses cannot all slip in before the
  first failures are counted.
* **Log**: every login, success or failure, is one ``login`` event with the
  client address, account, protocol, mechanism and result.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pillarbox.admin.names import normalize_address
from pillarbox.auth.passwords import hash_password, verify_password
from pillarbox.auth.sasl import (
    MECHANISMS,
    Challenge,
    Done,
    Failed,
    Mechanism,
    NeedPassword,
    NeedScramSecrets,
    ScramSha256,
    Step,
    prepare_username,
)
from pillarbox.auth.scram import ScramSecrets, ScramSecretsError
from pillarbox.auth.throttle import FailureWindow, client_key, is_loopback
from pillarbox.log import log_event
from pillarbox.store.base import Credentials

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from pillarbox.config import AuthConfig

__all__ = [
    "KNOWN_CLIENT_TTL",
    "AuthResult",
    "Authenticator",
    "Exchange",
    "Outcome",
    "UnknownMechanism",
    "normalize_username",
    "plaintext_allowed",
]

log = logging.getLogger("pillarbox.auth")

KNOWN_CLIENT_TTL = 7 * 86400     # an address an account logged in from stays trusted
MAX_CACHE = 100_000              # cached successes kept at most
CredentialLookup = Callable[[str], Credentials | None]


class UnknownMechanism(ValueError):
    """The client asked for a SASL mechanism Pillarbox does not offer (IMAP NO, SMTP 504 5.5.4)."""


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"              # the credentials are wrong, or the exchange was
    LIMIT = "limit"                # too many failures: refused without a check
    UNAVAILABLE = "unavailable"    # our fault (store, hashing): try again later


# IMAP response code (RFC 5530), POP3 extended code (RFC 3206), SMTP reply (RFC 4954 §6).
_CODES: dict[Outcome, tuple[str | None, str | None, tuple[int, str]]] = {
    Outcome.OK: (None, None, (235, "2.7.0")),
    Outcome.FAILED: ("AUTHENTICATIONFAILED", "AUTH", (535, "5.7.8")),
    Outcome.LIMIT: ("LIMIT", "SYS/TEMP", (454, "4.7.0")),
    Outcome.UNAVAILABLE: ("UNAVAILABLE", "SYS/TEMP", (454, "4.7.0")),
}


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The end of a login: ``credentials`` when it succeeded, else what to answer.

    ``text`` is for the client and never tells an unknown user from a wrong
    password; ``reason`` is for the log.  ``server_final`` is SCRAM's ``v=``
    message (send it as a last challenge, or with success where the protocol
    allows); ``server_error`` SCRAM's ``e=`` for protocols that carry
    additional data with failure (IMAP, POP3 and SMTP do not).
    """

    outcome: Outcome
    text: str
    reason: str = ""
    credentials: Credentials | None = None
    server_final: bytes | None = None
    server_error: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def imap_code(self) -> str | None:
        """``NO [AUTHENTICATIONFAILED]``, ``NO [LIMIT]``, ``NO [UNAVAILABLE]`` (RFC 5530)."""
        return _CODES[self.outcome][0]

    @property
    def pop3_code(self) -> str | None:
        """``-ERR [AUTH]`` or ``-ERR [SYS/TEMP]`` (RFC 3206)."""
        return _CODES[self.outcome][1]

    @property
    def smtp_reply(self) -> tuple[int, str]:
        """(code, enhanced status code): 235 2.7.0, 535 5.7.8 or 454 4.7.0 (RFC 4954 §6)."""
        return _CODES[self.outcome][2]


_TEXT_FAILED = "authentication failed"
_TEXT_LIMIT = "too many failed logins; try again later"
_TEXT_UNAVAILABLE = "authentication is unavailable at the moment; try again later"


def normalize_username(name: str) -> str:
    """A login name as the store keys accounts; ValueError (with the reason) if it cannot be one."""
    prepared = prepare_username(name)
    if "@" not in prepared:
        raise ValueError(
            f"{prepared[:64]!r} is not an address: log in with the full address, "
            "local-part@domain"
        )
    return normalize_address(prepared)


def plaintext_allowed(tls: bool, client_ip: str, allow_on_loopback: bool) -> bool:
    """Whether a password may be sent in clear text (DESIGN.md: only over TLS, or loopback)."""
    return tls or (allow_on_loopback and is_loopback(client_ip))


class Authenticator:
    """Checks logins for one process; see the module docstring."""

    def __init__(
        self,
        credentials: CredentialLookup,
        *,
        hash_workers: int = 2,
        cache_ttl: float = 300,
        max_failures_per_ip: int = 10,
        max_failures_per_account: int = 20,
        failure_window: float = 600,
        failure_delay: float = 2,
        allow_plaintext_on_loopback: bool = False,
        verify: Callable[[str, str], bool] = verify_password,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``verify`` and ``hasher`` (the cost of the decoy hash) are for tests."""
        if hash_workers < 1:
            raise ValueError("hash_workers must be at least 1")
        self._credentials = credentials
        self.hash_workers = hash_workers
        self.cache_ttl = cache_ttl
        self.failure_delay = failure_delay
        self.allow_plaintext_on_loopback = allow_plaintext_on_loopback
        self._verify = verify
        self._hasher = hasher
        self._clock = clock
        self._key = secrets.token_bytes(32)   # cache digests and SCRAM decoy salts
        self._cache: dict[bytes, float] = {}
        self._known: dict[tuple[str, str], float] = {}
        self._per_ip = FailureWindow(max_failures_per_ip, failure_window, clock=clock)
        self._per_account = FailureWindow(max_failures_per_account, failure_window, clock=clock)
        self._executor: ThreadPoolExecutor | None = None
        self._hash_slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self._decoy_hash: str | None = None
        self._inflight: dict[bytes, asyncio.Future[bool | None]] = {}

    @classmethod
    def from_config(cls, config: AuthConfig, credentials: CredentialLookup) -> Authenticator:
        return cls(
            credentials,
            hash_workers=config.hash_workers,
            cache_ttl=config.cache_ttl,
            max_failures_per_ip=config.max_failures_per_ip,
            max_failures_per_account=config.max_failures_per_account,
            failure_window=config.failure_window,
            failure_delay=config.failure_delay,
            allow_plaintext_on_loopback=config.allow_plaintext_on_loopback,
        )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ------------------------------------------------------------ policy

    def plaintext_allowed(self, tls: bool, client_ip: str) -> bool:
        return plaintext_allowed(tls, client_ip, self.allow_plaintext_on_loopback)

    def mechanisms(self, tls: bool, client_ip: str) -> list[str]:
        """The SASL mechanisms to advertise: PLAIN and LOGIN only where plaintext is allowed."""
        names = [ScramSha256.name]
        if self.plaintext_allowed(tls, client_ip):
            names += [name for name, cls in MECHANISMS.items() if cls.plaintext]
        return names

    # ------------------------------------------------------------- login

    async def login(self, username: str, password: str, *, client_ip: str, protocol: str,
                    mechanism: str) -> AuthResult:
        """Check a user name and password (IMAP LOGIN, POP3 USER/PASS)."""
        attempt = _Attempt(self, client_ip, protocol, mechanism)
        if (refused := attempt.blocked()) is not None:
            return refused
        try:
            address = normalize_username(username)
        except ValueError as e:
            return await attempt.fail(username, f"{_TEXT_FAILED}: bad user name: {e}",
                                      f"bad user name: {e}")
        if not password:
            return await attempt.fail(address, _TEXT_FAILED, "empty password")
        return await attempt.password(address, password)

    def start(self, mechanism: str, *, client_ip: str, protocol: str) -> Exchange:
        """A SASL exchange; UnknownMechanism for a name not in MECHANISMS."""
        name = mechanism.upper()
        cls = MECHANISMS.get(name)
        if cls is None:
            raise UnknownMechanism(
                f"no SASL mechanism {mechanism[:40]!r}; offered: {', '.join(MECHANISMS)}"
            )
        mech: Mechanism
        if cls is ScramSha256:
            mech = ScramSha256(normalize_username, decoy_key=self._key)
        else:
            mech = cls(normalize_username)
        return Exchange(_Attempt(self, client_ip, protocol, name), mech)

    # --------------------------------------------------------- internals

    def _lookup(self, address: str) -> Credentials | None:
        return self._credentials(address)

    def _digest(self, address: str, password: str, stored: str) -> bytes:
        msg = "\0".join((address, password, stored)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def _cached(self, digest: bytes) -> bool:
        expires = self._cache.get(digest)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._cache[digest]
            return False
        return True

    def _remember(self, digest: bytes) -> None:
        if self.cache_ttl <= 0:
            return
        now = self._clock()
        while len(self._cache) >= MAX_CACHE:
            oldest = next(iter(self._cache))
            del self._cache[oldest]
        self._cache.pop(digest, None)
        self._cache[digest] = now + self.cache_ttl

    def _known_client(self, address: str, ip_key: str) -> bool:
        expires = self._known.get((address, ip_key))
        return expires is not None and expires > self._clock()

    def _remember_client(self, address: str, ip_key: str) -> None:
        while len(self._known) >= MAX_CACHE:
            del self._known[next(iter(self._known))]
        self._known.pop((address, ip_key), None)
        self._known[(address, ip_key)] = self._clock() + KNOWN_CLIENT_TTL

    async def _check_once(self, stored: str | None, address: str, password: str,
                          gate: Callable[[], bool]) -> bool | None:
        """``_check``, shared by identical attempts that run at the same time.

        A client that opens many sessions at once (an IMAP client's parallel
        connections, a burst of logins after a restart) asks the same question
        many times before the first answer is cached: one argon2id run answers
        them all.  Only a real hash is shared, never the decoy of an unknown user.
        """
        if stored is None:
            return await self._check(None, password, gate)
        key = self._digest(address, password, stored)
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._check(stored, password, gate)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()   # retrieved: no warning when nobody else waited
            raise
        else:
            future.set_result(result)
        finally:
            del self._inflight[key]
        return result

    async def _check(self, stored: str | None, password: str,
                     gate: Callable[[], bool]) -> bool | None:
        """argon2id in the bounded pool; ``stored`` None checks the decoy hash (and fails).

        ``gate`` is asked again once a slot is free: attempts that queued up
        behind others may have been outlawed by their failures meanwhile
        (None).  So parallel guesses from one address get at most
        ``hash_workers - 1`` checks past the limit, while parallel *good*
        logins from one address (a webmail, a NAT) are never refused.
        """
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.hash_workers, thread_name_prefix="auth-hash")
        if self._hash_slots is None or self._slots_loop is not loop:
            # one per event loop: asyncio primitives belong to the loop they wait in
            self._hash_slots, self._slots_loop = asyncio.Semaphore(self.hash_workers), loop
        async with self._hash_slots:
            if not gate():
                return None
            if stored is None:
                if self._decoy_hash is None:
                    self._decoy_hash = await loop.run_in_executor(
                        self._executor, lambda: hash_password(secrets.token_urlsafe(16),
                                                              hasher=self._hasher))
                await loop.run_in_executor(self._executor, self._verify, self._decoy_hash,
                                           password)
                return False
            return await loop.run_in_executor(self._executor, self._verify, stored, password)


class _Attempt:
    """One login's bookkeeping: limits, failure counts, delay and the log line."""

    def __init__(self, auth: Authenticator, client_ip: str, protocol: str, mechanism: str) -> None:
        self.auth = auth
        self.client_ip = client_ip
        self.ip_key = client_key(client_ip)
        self.loopback = is_loopback(client_ip)
        self.protocol = protocol
        self.mechanism = mechanism

    def blocked(self, address: str | None = None) -> AuthResult | None:
        """A LIMIT result if this address (or the account, if given) is over its limit."""
        if self.auth._per_ip.blocked(self.ip_key):
            return self.result(Outcome.LIMIT, address, _TEXT_LIMIT,
                               "too many failed logins from this client address")
        if address is not None and not self._exempt(address) \
                and self.auth._per_account.blocked(address):
            return self.result(Outcome.LIMIT, address, _TEXT_LIMIT,
                               "too many failed logins to this account")
        return None

    def _exempt(self, address: str) -> bool:
        """Loopback and known clients are spared the per-account lock-out."""
        return self.loopback or self.auth._known_client(address, self.ip_key)

    def _allowed(self, address: str) -> bool:
        auth = self.auth
        if auth._per_ip.blocked(self.ip_key):
            return False
        return self._exempt(address) or not auth._per_account.blocked(address)

    def lookup(self, address: str) -> Credentials | None | AuthResult:
        try:
            return self.auth._lookup(address)
        except Exception as e:  # noqa: BLE001 - the store's failure is ours, not the client's
            log.exception("credential lookup for %s failed", address)
            return self.result(Outcome.UNAVAILABLE, address, _TEXT_UNAVAILABLE,
                               f"credential lookup failed: {type(e).__name__}: {e}")

    async def password(self, address: str, password: str) -> AuthResult:
        """Check ``password`` for ``address`` (already normalised)."""
        if (refused := self.blocked(address)) is not None:
            return refused
        creds = self.lookup(address)
        if isinstance(creds, AuthResult):
            return creds
        auth = self.auth
        if creds is not None and auth.cache_ttl > 0:
            digest = auth._digest(address, password, creds.password_hash)
            if auth._cached(digest):
                return self.succeed(creds, cached=True)
        try:
            ok = await auth._check_once(creds.password_hash if creds else None, address,
                                        password, lambda: self._allowed(address))
        except Exception as e:  # noqa: BLE001 - a broken hasher must not kill the session
            log.exception("password check for %s failed", address)
            return self.result(Outcome.UNAVAILABLE, address, _TEXT_UNAVAILABLE,
                               f"password check failed: {type(e).__name__}: {e}")
        if ok is None:
            refused = self.blocked(address)
            assert refused is not None
            return refused
        if creds is None:
            return await self.fail(address, _TEXT_FAILED, "unknown user", account=True)
        if not ok:
            return await self.fail(address, _TEXT_FAILED, "wrong password", account=True)
        auth._remember(auth._digest(address, password, creds.password_hash))
        return self.succeed(creds)

    def succeed(self, creds: Credentials, *, cached: bool = False,
                server_final: bytes | None = None) -> AuthResult:
        self.auth._remember_client(creds.address, self.ip_key)
        return self.result(Outcome.OK, creds.address, "authenticated", "cached" if cached else "",
                           credentials=creds, server_final=server_final)

    async def fail(self, address: str | None, text: str, reason: str, *, count: bool = True,
                   account: bool = False, server_error: bytes | None = None) -> AuthResult:
        """A failure: counted for the client address (and the account, for a wrong
        password), delayed, logged.  ``count=False`` for what is no guess."""
        auth = self.auth
        if count:
            auth._per_ip.add(self.ip_key)
            if account and address is not None and not self.loopback:
                auth._per_account.add(address)
        if auth.failure_delay > 0:
            await asyncio.sleep(auth.failure_delay)
        return self.result(Outcome.FAILED, address, text, reason, server_error=server_error)

    def result(self, outcome: Outcome, account: str | None, text: str, reason: str = "", *,
               credentials: Credentials | None = None, server_final: bytes | None = None,
               server_error: bytes | None = None) -> AuthResult:
        log_event(log, "login", client=self.client_ip, account=(account or "")[:320] or None,
                  protocol=self.protocol, mechanism=self.mechanism, result=outcome.value,
                  reason=reason or None)
        return AuthResult(outcome, text, reason, credentials, server_final, server_error)


class Exchange:
    """One SASL exchange: ``await step(data)`` until it returns an AuthResult.

    The first ``step`` takes the initial response (``None`` if the client sent
    none); each later one the client's answer to the last Challenge.
    ``cancel()`` when the client aborts (``*``).
    """

    def __init__(self, attempt: _Attempt, mechanism: Mechanism) -> None:
        self._attempt = attempt
        self._mech = mechanism
        self._started = False
        self._result: AuthResult | None = None
        self._account: str | None = None          # known once SCRAM asked for secrets
        self._credentials: Credentials | None = None

    @property
    def mechanism(self) -> str:
        return self._mech.name

    @property
    def result(self) -> AuthResult | None:
        """The outcome, once there is one."""
        return self._result

    async def step(self, data: bytes | None) -> Challenge | AuthResult:
        if self._result is not None:
            raise RuntimeError("the SASL exchange is finished")
        if not self._started:
            self._started = True
            if (refused := self._attempt.blocked()) is not None:
                return self._finish(refused)
            step = self._mech.start(data)
        elif data is None:
            raise ValueError("only the first step may lack data")
        else:
            if self._account is not None:
                # The SCRAM proof: parallel exchanges may have failed meanwhile.
                if (refused := self._attempt.blocked(self._account)) is not None:
                    return self._finish(refused)
            step = self._mech.step(data)
        return await self._handle(step)

    def cancel(self) -> AuthResult:
        """The client cancelled the exchange (RFC 4422 §3.5): not counted as a failure."""
        if self._result is None:
            self._result = self._attempt.result(
                Outcome.FAILED, self._account, "authentication cancelled",
                "cancelled by the client")
        return self._result

    def _finish(self, result: AuthResult) -> AuthResult:
        self._result = result
        return result

    async def _handle(self, step: Step) -> Challenge | AuthResult:
        attempt = self._attempt
        if isinstance(step, Challenge):
            return step
        if isinstance(step, NeedPassword):
            return self._finish(await attempt.password(step.username, step.password))
        if isinstance(step, NeedScramSecrets):
            return await self._scram_secrets(step.username)
        if isinstance(step, Done):
            assert self._credentials is not None
            return self._finish(attempt.succeed(self._credentials, server_final=step.server_final))
        # A mechanism's reasons are about the syntax of what the client sent, and
        # help its author; only a failed proof is about the credentials.
        proof = step.server_error == b"e=invalid-proof"
        text = _TEXT_FAILED if proof else f"{_TEXT_FAILED}: {step.reason}"
        return self._finish(await attempt.fail(self._account, text, step.reason, account=proof,
                                               server_error=step.server_error))

    async def _scram_secrets(self, address: str) -> Challenge | AuthResult:
        attempt = self._attempt
        self._account = address
        if (refused := attempt.blocked(address)) is not None:
            return self._finish(refused)
        creds = attempt.lookup(address)
        if isinstance(creds, AuthResult):
            return self._finish(creds)
        stored: ScramSecrets | None = None
        if creds is not None:
            if creds.scram is None:
                text = "no SCRAM secrets: set the password again (or use PLAIN over TLS)"
                return self._finish(await attempt.fail(
                    address, text, "no SCRAM secrets: set the password again", count=False))
            try:
                stored = ScramSecrets.parse(creds.scram)
            except ScramSecretsError as e:
                log.error("account %s: %s", address, e)
                return self._finish(attempt.result(
                    Outcome.UNAVAILABLE, address, _TEXT_UNAVAILABLE, str(e)))
            self._credentials = creds
        step = self._mech.feed_secrets(stored)
        return await self._handle(step)
