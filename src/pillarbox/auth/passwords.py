"""Password hashing: argon2id (RFC 9106), stored as PHC strings.

The parameters are argon2-cffi's defaults (RFC 9106's second recommended
option: 64 MiB of memory, 3 passes), which cost tens of milliseconds: checks
run in a thread so that one login never stalls other sessions.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("empty password")
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True
