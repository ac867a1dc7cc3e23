"""SASL mechanisms, server side (RFC 4422), as sans-IO objects.

Each mechanism turns the client's responses into one of five steps::

    Challenge(data)              send data to the client, feed its answer to step()
    NeedPassword(user, pw)       PLAIN, LOGIN: the caller checks the password
    NeedScramSecrets(user)       SCRAM: the caller looks up the stored secrets
                                 and hands them to feed_secrets()
    Done(server_final)           the mechanism is satisfied; server_final is the
                                 SCRAM "v=" message, to send as additional data
                                 with success, or as a last challenge whose
                                 (empty) answer the protocol reads itself
    Failed(reason)               refused; reason says why, for the log

Only bytes pass: IMAP AUTHENTICATE, POP3 AUTH and SMTP AUTH do base64, line
framing and cancellation ("*") themselves.  ``start(None)`` is an exchange
without an initial response (RFC 4422 §3.3); ``start(b"")`` one with an
empty one.

User names are mapped to account keys by the ``normalize`` callable a
mechanism is made with (the service passes SASLprep plus Pillarbox's address
normalisation); it raises ValueError with a reason for a name that cannot be
an account.  An authorisation identity (PLAIN's authzid, SCRAM's ``a=``) is
accepted only when it is empty or names the same account: Pillarbox has no
proxy authorisation.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from pillarbox.auth.saslprep import SASLprepError, saslprep
from pillarbox.auth.scram import (
    ClientFirst,
    ScramError,
    ScramSecrets,
    ScramServer,
    decoy_secrets,
)

__all__ = [
    "MAX_RESPONSE",
    "MECHANISMS",
    "Challenge",
    "Done",
    "Failed",
    "Login",
    "Mechanism",
    "NeedPassword",
    "NeedScramSecrets",
    "Plain",
    "ScramSha256",
    "Step",
    "new_mechanism",
    "prepare_username",
]

MAX_RESPONSE = 4096   # octets of one decoded client response; RFC 4616 needs 255 a field


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class NeedPassword:
    username: str        # normalised
    password: str        # as sent; the verifier prepares it
    authzid: str = ""    # normalised; "" or == username

    def __repr__(self) -> str:
        return f"NeedPassword(username={self.username!r}, password=..., authzid={self.authzid!r})"


@dataclass(frozen=True, slots=True)
class NeedScramSecrets:
    username: str
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Done:
    server_final: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    server_error: bytes | None = None    # SCRAM "e=…", for protocols that carry it


Step = Challenge | NeedPassword | NeedScramSecrets | Done | Failed


def prepare_username(name: str) -> str:
    """SASLprep as a query (RFC 4013); the default ``normalize``."""
    prepared = saslprep(name, allow_unassigned=True)
    if not prepared:
        raise SASLprepError("empty user name")
    return prepared


class Mechanism:
    """The one interface of every mechanism; see the module docstring."""

    name = ""
    plaintext = False    # the password crosses the connection: only over TLS

    def __init__(self, normalize: Callable[[str], str] = prepare_username) -> None:
        self._normalize = normalize
        self._finished = False

    def start(self, initial: bytes | None) -> Step:
        raise NotImplementedError

    def step(self, data: bytes) -> Step:
        raise NotImplementedError

    def feed_secrets(self, stored: ScramSecrets | None) -> Step:
        """After NeedScramSecrets: the account's secrets, or None if it does not exist."""
        raise RuntimeError(f"{self.name} does not use SCRAM secrets")

    def _end(self, step: Step) -> Step:
        self._finished = True
        return step

    def _check_running(self) -> None:
        if self._finished:
            raise RuntimeError(f"{self.name} exchange already finished")

    def _identity(self, authcid: str, authzid: str) -> tuple[str, str] | Failed:
        """(username, authzid) normalised, or Failed with the reason."""
        try:
            username = self._normalize(authcid)
        except ValueError as e:
            return Failed(f"bad user name: {e}")
        if not authzid:
            return username, ""
        try:
            authz = self._normalize(authzid)
        except ValueError as e:
            return Failed(f"bad authorization identity: {e}")
        if authz != username:
            return Failed(f"{username} may not act as {authz}: no proxy authorization")
        return username, authz


def _utf8(data: bytes, what: str) -> str | Failed:
    if len(data) > MAX_RESPONSE:
        return Failed(f"{what} longer than {MAX_RESPONSE} octets")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Failed(f"{what} is not UTF-8")


class Plain(Mechanism):
    """PLAIN (RFC 4616 §2): ``[authzid] NUL authcid NUL passwd``, UTF-8."""

    name = "PLAIN"
    plaintext = True

    def start(self, initial: bytes | None) -> Step:
        self._check_running()
        if initial is None:
            return Challenge(b"")    # RFC 4616 §2: an empty challenge
        return self.step(initial)

    def step(self, data: bytes) -> Step:
        self._check_running()
        text = _utf8(data, "PLAIN message")
        if isinstance(text, Failed):
            return self._end(text)
        fields = text.split("\0")
        if len(fields) != 3:
            return self._end(Failed(
                f"PLAIN message has {len(fields) - 1} NUL separators, expected 2 "
                "(authzid NUL authcid NUL password)"
            ))
        authzid, authcid, password = fields
        if not authcid:
            return self._end(Failed("PLAIN message with an empty user name"))
        if not password:
            return self._end(Failed("PLAIN message with an empty password"))
        identity = self._identity(authcid, authzid)
        if isinstance(identity, Failed):
            return self._end(identity)
        return self._end(NeedPassword(identity[0], password, identity[1]))


class Login(Mechanism):
    """LOGIN (draft-murchison-sasl-login): "Username:", then "Password:".

    Not a standard, but what many clients still use for SMTP AUTH.  An
    initial response is taken as the user name, as clients send it.
    """

    name = "LOGIN"
    plaintext = True

    def __init__(self, normalize: Callable[[str], str] = prepare_username) -> None:
        super().__init__(normalize)
        self._username: str | None = None

    def start(self, initial: bytes | None) -> Step:
        self._check_running()
        if not initial:
            return Challenge(b"Username:")
        return self.step(initial)

    def step(self, data: bytes) -> Step:
        self._check_running()
        if self._username is None:
            text = _utf8(data, "LOGIN user name")
            if isinstance(text, Failed):
                return self._end(text)
            if not text or "\0" in text:
                return self._end(Failed("LOGIN user name is empty or contains NUL"))
            identity = self._identity(text, "")
            if isinstance(identity, Failed):
                return self._end(identity)
            self._username = identity[0]
            return Challenge(b"Password:")
        password = _utf8(data, "LOGIN password")
        if isinstance(password, Failed):
            return self._end(password)
        if not password or "\0" in password:
            return self._end(Failed("LOGIN password is empty or contains NUL"))
        return self._end(NeedPassword(self._username, password))


class ScramSha256(Mechanism):
    """SCRAM-SHA-256 (RFC 7677) over :class:`pillarbox.auth.scram.ScramServer`.

    For a user without an account the exchange goes on with decoy secrets
    and fails at the proof, as for a wrong password (RFC 5802 §9).
    ``decoy_key`` keeps the decoy salt of a name stable; ``server_nonce``
    is for test vectors.
    """

    name = "SCRAM-SHA-256"

    def __init__(self, normalize: Callable[[str], str] = prepare_username, *,
                 decoy_key: bytes | None = None, server_nonce: str | None = None) -> None:
        super().__init__(normalize)
        self._scram = ScramServer(server_nonce=server_nonce)
        self._decoy_key = decoy_key if decoy_key is not None else secrets.token_bytes(32)
        self._first: ClientFirst | None = None
        self._username = ""
        self._decoy = False
        self._waiting_secrets = False

    def start(self, initial: bytes | None) -> Step:
        self._check_running()
        if initial is None:
            return Challenge(b"")    # SCRAM is client-first (RFC 5802 §5)
        return self.step(initial)

    def step(self, data: bytes) -> Step:
        self._check_running()
        if self._waiting_secrets:
            raise RuntimeError("SCRAM-SHA-256 is waiting for feed_secrets()")
        try:
            if self._first is None:
                self._first = self._scram.receive_client_first(data)
                identity = self._identity(self._first.username, self._first.authzid)
                if isinstance(identity, Failed):
                    return self._end(Failed(identity.reason, b"e=other-error"))
                self._username = identity[0]
                self._waiting_secrets = True
                return NeedScramSecrets(identity[0], identity[1])
            server_final = self._scram.receive_client_final(data)
        except ScramError as e:
            reason = "unknown user" if self._decoy and e.error == "invalid-proof" else e.message
            return self._end(Failed(reason, e.server_error))
        if self._decoy:   # cannot happen: decoy keys match no proof
            return self._end(Failed("unknown user", b"e=invalid-proof"))
        return self._end(Done(server_final))

    def feed_secrets(self, stored: ScramSecrets | None) -> Step:
        self._check_running()
        if not self._waiting_secrets:
            raise RuntimeError("SCRAM-SHA-256 did not ask for secrets")
        self._waiting_secrets = False
        if stored is None:
            self._decoy = True
            stored = decoy_secrets(self._username, self._decoy_key)
        return Challenge(self._scram.server_first(stored))


MECHANISMS: dict[str, type[Mechanism]] = {
    Plain.name: Plain,
    Login.name: Login,
    ScramSha256.name: ScramSha256,
}


def new_mechanism(name: str, normalize: Callable[[str], str] = prepare_username,
                  *, decoy_key: bytes | None = None) -> Mechanism:
    """A fresh exchange of mechanism ``name`` (case-insensitive); KeyError if unknown."""
    cls = MECHANISMS[name.upper()]
    if cls is ScramSha256:
        return ScramSha256(normalize, decoy_key=decoy_key)
    return cls(normalize)
