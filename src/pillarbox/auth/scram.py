"""SCRAM-SHA-256 (RFC 5802, RFC 7677): stored secrets and the server's exchange.

The server never keeps the password, only what RFC 5802 §3 calls the
authentication information::

    SaltedPassword = Hi(Normalize(password), salt, i)      PBKDF2-HMAC-SHA-256
    StoredKey      = H(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

stored as one text value, ``SCRAM-SHA-256$<i>$<salt>$<StoredKey>$<ServerKey>``
(standard base64).  StoredKey checks a client's proof; ServerKey proves to the
client that the server knew the secrets (``v=``).  Neither lets a thief of the
database log in as the user with SCRAM; they do allow guessing the password
offline at the cost of ``i`` PBKDF2 rounds a guess.

Iterations: :data:`DEFAULT_ITERATIONS` is 16384, four times the RFC 7677 §4
minimum.  The *client* computes PBKDF2 at every login (the server only
HMACs), so the count is what a phone pays each time: about 10 ms here in C,
some tens of milliseconds in a slow client.  An offline attacker pays the
same per guess; more rounds than this buy little against a GPU (PBKDF2 is
not memory-hard) while every user pays them, and the argon2id hash beside
these secrets is the stronger one.

:class:`ScramServer` is the server side of the exchange, sans-IO: it takes
the client's messages as bytes and returns the server's, raising
:class:`ScramError` with the RFC 5802 §7 ``server-error-value`` for anything
it refuses.  No channel binding is offered (we advertise no ``-PLUS``
variant), so the GS2 header is ``n,,`` or ``y,,`` (RFC 5802 §6), with an
optional ``a=`` authorisation identity.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from pillarbox.auth.saslprep import SASLprepError, prepare_password, saslprep

__all__ = [
    "DEFAULT_ITERATIONS",
    "MAX_ITERATIONS",
    "MIN_ITERATIONS",
    "MECHANISM",
    "ClientFirst",
    "ScramError",
    "ScramSecrets",
    "ScramSecretsError",
    "ScramServer",
    "decoy_secrets",
]

MECHANISM = "SCRAM-SHA-256"
MIN_ITERATIONS = 4096            # RFC 7677 §4
DEFAULT_ITERATIONS = 16384       # see the module docstring
MAX_ITERATIONS = 10_000_000      # a sanity bound on a stored value
SALT_BYTES = 16
NONCE_BYTES = 18                 # 144 bits of server nonce, 24 base64 characters
MAX_MESSAGE = 4096               # octets; a client-first of a long address is < 1 KiB


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict standard base64; raises ValueError."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(str(e)) from None


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


# ------------------------------------------------------------- stored secrets


class ScramSecretsError(ValueError):
    """A stored SCRAM value does not parse: the store's (or an import's) fault, not the client's."""


@dataclass(frozen=True, slots=True)
class ScramSecrets:
    """RFC 5802 §3's authentication information for one account."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, password: str, *, salt: bytes | None = None,
               iterations: int = DEFAULT_ITERATIONS) -> ScramSecrets:
        """The secrets for ``password`` (prepared by SASLprep, RFC 5802 §2.2)."""
        if not password:
            raise ValueError("empty password")
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise ValueError(
                f"SCRAM iteration count {iterations} outside {MIN_ITERATIONS}..{MAX_ITERATIONS}"
            )
        salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
        if not salt:
            raise ValueError("empty SCRAM salt")
        salted = hashlib.pbkdf2_hmac(
            "sha256", prepare_password(password).encode("utf-8"), salt, iterations
        )
        client_key = _hmac(salted, b"Client Key")
        return cls(iterations, salt, hashlib.sha256(client_key).digest(),
                   _hmac(salted, b"Server Key"))

    @classmethod
    def parse(cls, text: str) -> ScramSecrets:
        """Read ``SCRAM-SHA-256$<i>$<salt>$<StoredKey>$<ServerKey>``; ScramSecretsError if bad."""
        parts = text.split("$")
        if len(parts) != 5:
            raise ScramSecretsError(
                f"stored SCRAM secrets have {len(parts)} '$'-separated fields, "
                f"expected 5: {MECHANISM}$<iterations>$<salt>$<StoredKey>$<ServerKey>"
            )
        scheme, iterations, salt, stored_key, server_key = parts
        if scheme != MECHANISM:
            raise ScramSecretsError(f"stored SCRAM secrets are for {scheme!r}, not {MECHANISM}")
        if not iterations.isascii() or not iterations.isdigit():
            raise ScramSecretsError(f"stored SCRAM iteration count {iterations!r} is not a number")
        count = int(iterations)
        if not MIN_ITERATIONS <= count <= MAX_ITERATIONS:
            raise ScramSecretsError(
                f"stored SCRAM iteration count {count} outside {MIN_ITERATIONS}..{MAX_ITERATIONS}"
            )
        values = []
        for name, field, size in (("salt", salt, None), ("StoredKey", stored_key, 32),
                                  ("ServerKey", server_key, 32)):
            try:
                value = _unb64(field)
            except ValueError:
                raise ScramSecretsError(f"stored SCRAM {name} is not base64: {field!r}") from None
            if not value or (size is not None and len(value) != size):
                raise ScramSecretsError(
                    f"stored SCRAM {name} has {len(value)} octets, expected {size or 'some'}"
                )
            values.append(value)
        return cls(count, values[0], values[1], values[2])

    def format(self) -> str:
        return "$".join((MECHANISM, str(self.iterations), _b64(self.salt),
                         _b64(self.stored_key), _b64(self.server_key)))

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:   # keys are password equivalents for offline guessing
        return f"ScramSecrets(iterations={self.iterations}, salt={_b64(self.salt)!r}, ...)"


def decoy_secrets(username: str, key: bytes) -> ScramSecrets:
    """Secrets for a user who does not exist, so the exchange looks the same.

    RFC 5802 §9 (and RFC 7677 §4) suggest not revealing whether a user
    exists: the salt is derived from the name with a per-process key, so
    asking twice gives the same salt, as for a real account; the keys are
    random, so no proof can match.
    """
    salt = _hmac(key, b"scram-decoy-salt\0" + username.encode("utf-8"))[:SALT_BYTES]
    return ScramSecrets(DEFAULT_ITERATIONS, salt, secrets.token_bytes(32), secrets.token_bytes(32))


# ------------------------------------------------------------------- exchange


class ScramError(Exception):
    """The client's message is refused; ``error`` is RFC 5802 §7's server-error-value."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message

    @property
    def server_error(self) -> bytes:
        """The ``e=`` server-final-message (RFC 5802 §7), for protocols that can carry it."""
        return f"e={self.error}".encode("ascii")


@dataclass(frozen=True, slots=True)
class ClientFirst:
    """What the client-first-message says (RFC 5802 §7)."""

    username: str         # decoded saslname, SASLprep'd (RFC 5802 §5.1 "n")
    authzid: str          # "" when absent
    gs2_header: str       # "n,," / "y,," / "n,a=…,"
    nonce: str            # the client's part
    bare: str             # client-first-message-bare, for the AuthMessage


class _State(enum.Enum):
    CLIENT_FIRST = "expecting client-first-message"
    SECRETS = "expecting the stored secrets"
    CLIENT_FINAL = "expecting client-final-message"
    DONE = "finished"


# The whole state machine: each operation, the state it needs and the state it leaves.
_TRANSITIONS: dict[str, tuple[_State, _State]] = {
    "receive_client_first": (_State.CLIENT_FIRST, _State.SECRETS),
    "server_first": (_State.SECRETS, _State.CLIENT_FINAL),
    "receive_client_final": (_State.CLIENT_FINAL, _State.DONE),
}


class ScramServer:
    """One SCRAM-SHA-256 exchange, server side (RFC 5802 §5), without I/O.

    ``receive_client_first(data) -> ClientFirst``; look the user's secrets up;
    ``server_first(secrets) -> bytes``; ``receive_client_final(data) -> bytes``,
    the server-final-message ``v=…``.  Any refusal raises :class:`ScramError`
    and ends the exchange.  ``server_nonce`` is for tests (the RFC 7677 §3
    vector); by default it is 18 random octets in base64.
    """

    def __init__(self, *, server_nonce: str | None = None) -> None:
        self._state = _State.CLIENT_FIRST
        self._server_nonce = server_nonce if server_nonce is not None else _b64(
            secrets.token_bytes(NONCE_BYTES))
        if not self._server_nonce or not all(_printable(c) for c in self._server_nonce):
            raise ValueError("a SCRAM nonce is printable ASCII without ','")
        self._first: ClientFirst | None = None
        self._secrets: ScramSecrets | None = None
        self._server_first = ""

    @property
    def finished(self) -> bool:
        return self._state is _State.DONE

    def _enter(self, operation: str) -> None:
        need, after = _TRANSITIONS[operation]
        if self._state is not need:
            raise RuntimeError(f"SCRAM {operation} called while {self._state.value}")
        self._state = after

    def _fail(self, error: str, message: str) -> ScramError:
        self._state = _State.DONE
        return ScramError(error, message)

    def receive_client_first(self, data: bytes) -> ClientFirst:
        self._enter("receive_client_first")
        text = self._decode(data, "client-first-message")
        flag, sep1, rest = text.partition(",")
        authz, sep2, bare = rest.partition(",")
        if not (sep1 and sep2):
            raise self._fail("other-error", "the client-first-message has no GS2 header")
        if flag.startswith("p="):
            raise self._fail(
                "channel-binding-not-supported",
                "channel binding was requested, but this server offers SCRAM-SHA-256 "
                "without it (RFC 5802 §6)",
            )
        if flag not in ("n", "y"):
            raise self._fail("other-error", f"bad GS2 channel binding flag {flag!r}")
        authzid = ""
        if authz:
            if not authz.startswith("a="):
                raise self._fail("other-error", f"bad GS2 authzid {authz!r}")
            authzid = self._saslname(authz[2:], "authzid")
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise self._fail("extensions-not-supported", "mandatory extension 'm=' not supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise self._fail("other-error",
                             "client-first-message-bare must start 'n=<user>,r=<nonce>'")
        self._check_extensions(attrs[2:])
        username = self._saslname(attrs[0][2:], "username")
        nonce = attrs[1][2:]
        if not nonce or not all(_printable(c) for c in nonce):
            raise self._fail("other-error", "the client nonce is empty or not printable ASCII")
        self._first = ClientFirst(username, authzid, text[: len(text) - len(bare)], nonce, bare)
        return self._first

    def server_first(self, stored: ScramSecrets) -> bytes:
        """The server-first-message ``r=…,s=…,i=…`` (RFC 5802 §5.1)."""
        self._enter("server_first")
        assert self._first is not None
        self._secrets = stored
        self._server_first = (f"r={self._first.nonce}{self._server_nonce},"
                              f"s={_b64(stored.salt)},i={stored.iterations}")
        return self._server_first.encode("ascii")

    def receive_client_final(self, data: bytes) -> bytes:
        """Check the client's proof; the server-final-message ``v=…`` if it holds."""
        self._enter("receive_client_final")
        assert self._first is not None and self._secrets is not None
        text = self._decode(data, "client-final-message")
        without_proof, sep, proof_text = text.rpartition(",p=")
        attrs = without_proof.split(",")
        if not sep or len(attrs) < 2 or not attrs[0].startswith("c=") \
                or not attrs[1].startswith("r="):
            raise self._fail("other-error",
                             "client-final-message must be 'c=<cbind>,r=<nonce>,...,p=<proof>'")
        self._check_extensions(attrs[2:])
        try:
            cbind = _unb64(attrs[0][2:])
            proof = _unb64(proof_text)
        except ValueError:
            raise self._fail("invalid-encoding", "bad base64 in client-final-message") from None
        if cbind != self._first.gs2_header.encode("utf-8"):
            raise self._fail(
                "channel-bindings-dont-match",
                f"channel binding {attrs[0]!r} does not repeat the GS2 header "
                f"{self._first.gs2_header!r} (RFC 5802 §7)",
            )
        if attrs[1][2:] != self._first.nonce + self._server_nonce:
            raise self._fail("other-error", "the nonce is not the one of this exchange")
        auth_message = ",".join(
            (self._first.bare, self._server_first, without_proof)
        ).encode("utf-8")
        client_signature = _hmac(self._secrets.stored_key, auth_message)
        if len(proof) != len(client_signature):
            raise self._fail("invalid-proof", "the proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._secrets.stored_key):
            raise self._fail("invalid-proof", "wrong password")
        server_signature = _hmac(self._secrets.server_key, auth_message)
        return b"v=" + _b64(server_signature).encode("ascii")

    # ------------------------------------------------------------- syntax

    def _decode(self, data: bytes, what: str) -> str:
        if len(data) > MAX_MESSAGE:
            raise self._fail("other-error", f"{what} longer than {MAX_MESSAGE} octets")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("invalid-encoding", f"{what} is not UTF-8") from None
        if "\0" in text:
            raise self._fail("invalid-encoding", f"{what} contains NUL")
        return text

    def _saslname(self, value: str, what: str) -> str:
        """Decode RFC 5802 §5.1's saslname ("=2C" is ",", "=3D" is "=") and SASLprep it."""
        out, i = [], 0
        while i < len(value):
            if value[i] == "=":
                code = value[i + 1:i + 3]
                if code not in ("2C", "3D"):
                    raise self._fail("invalid-encoding",
                                     f"bad escape in {what}: only =2C and =3D are allowed")
                out.append("," if code == "2C" else "=")
                i += 3
            else:
                out.append(value[i])
                i += 1
        name = "".join(out)
        try:
            prepared = saslprep(name, allow_unassigned=True)
        except SASLprepError as e:
            raise self._fail("invalid-username-encoding", f"{what}: {e}") from None
        if not prepared:
            raise self._fail("invalid-username-encoding", f"empty {what}")
        return prepared

    def _check_extensions(self, attrs: list[str]) -> None:
        for attr in attrs:
            if len(attr) < 2 or not attr[0].isascii() or not attr[0].isalpha() or attr[1] != "=":
                raise self._fail("other-error", f"bad attribute {attr[:20]!r}")


def _printable(c: str) -> bool:
    """RFC 5802 §7 ``printable``: %x21-2B / %x2D-7E."""
    return "\x21" <= c <= "\x7e" and c != ","
