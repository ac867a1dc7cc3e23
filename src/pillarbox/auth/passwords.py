"""Password hashing: argon2id (RFC 9106), stored as PHC strings, and SCRAM secrets.

The parameters are argon2-cffi's defaults (RFC 9106's second recommended
option: 64 MiB of memory, 3 passes), which cost tens of milliseconds: checks
run in a bounded thread pool (``pillarbox.auth.service``) so that one login
never stalls other sessions and a burst of logins cannot allocate 64 MiB
each at once.

Setting a password stores two things (:func:`make_secrets`): the argon2id
hash, against which PLAIN, LOGIN and the protocols' own LOGIN/USER+PASS are
checked, and the SCRAM-SHA-256 secrets (``pillarbox.auth.scram``).  Both are
made from the password prepared with SASLprep (:func:`prepare_password`),
so that the mechanisms agree on what the password is.  A hash made before
preparation was applied still verifies: :func:`verify_password` also tries
the password as given when preparation changes it.

``hasher`` parameters exist for tests, which make cheap hashes; verification
reads the cost from the hash itself, so production code never passes one.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from pillarbox.auth.saslprep import prepare_password
from pillarbox.auth.scram import DEFAULT_ITERATIONS, ScramSecrets

__all__ = ["hash_password", "make_secrets", "needs_rehash", "prepare_password",
           "verify_password"]

_hasher = PasswordHasher()


def hash_password(password: str, *, hasher: PasswordHasher | None = None) -> str:
    if not password:
        raise ValueError("empty password")
    return (hasher or _hasher).hash(prepare_password(password))


def make_secrets(password: str, *, hasher: PasswordHasher | None = None,
                 scram_iterations: int = DEFAULT_ITERATIONS) -> tuple[str, str]:
    """(argon2id hash, SCRAM-SHA-256 secrets) for a new password: what the store keeps."""
    if not password:
        raise ValueError("empty password")
    scram = ScramSecrets.derive(password, iterations=scram_iterations)
    return hash_password(password, hasher=hasher), scram.format()


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches the argon2id hash ``stored`` (slow: call in a thread)."""
    prepared = prepare_password(password)
    if _verify(stored, prepared):
        return True
    return prepared != password and _verify(stored, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True
