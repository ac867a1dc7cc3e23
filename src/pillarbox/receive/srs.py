"""Sender Rewriting Scheme: the envelope sender of a copy we forward.

When an alias of ours forwards a message to another domain, the next hop
checks SPF (RFC 7208) against the envelope sender; left as it came, the
author's domain would not list our servers and the copy would fail.  So, as
postsrsd does for Postfix, the forwarded copy's reverse path is rewritten
into an address of the alias's domain that carries the original one, signed
and dated, and a bounce sent back to it is reversed to the original sender.

There is no RFC; the format is the de-facto one of Shevek's paper
("Sender Rewriting Scheme", 2004) as libsrs2 and Mail::SRS write it::

    SRS0=HHHH=TT=orig-domain=orig-local@forwarder-domain
    SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@forwarder-domain

- ``TT``: the day the address was made, ``(time // 86400) % 1024`` as two
  base-32 characters (``A``–``Z``, ``2``–``7``); an address older than
  ``max_age`` days (21, libsrs2's default) is refused, so harvested bounce
  addresses stop working.
- ``HHHH``: the first four characters of the base-64 HMAC-SHA1, under our
  secret, of the fields that follow it, lower-cased (so a relay that folds
  the local part's case breaks nothing; the hash itself is compared without
  case too, as libsrs2 does).
- ``SRS1``: a sender that is already an ``SRS0`` address of another
  forwarder is not wrapped again (the local part would grow at each hop):
  the next forwarder keeps the first forwarder's part and signs it, and a
  bounce goes back to the first forwarder, which reverses its own part.

The null reverse path is never rewritten (RFC 5321 4.5.5: a bounce must not
be bounced), nor a sender in one of our own domains (SPF passes for it
already; postsrsd's ``SRS_EXCLUDE_DOMAINS``).

The secret lives in the data directory (``srs.secret``), made once with
mode 0600.  Each of its lines is a secret; the first signs and all verify,
so a new secret can be put first while addresses made with the old one
still reverse until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_AGE_DAYS", "SECRET_FILE", "SRS", "SRSError", "is_srs"]

SECRET_FILE = "srs.secret"
MAX_AGE_DAYS = 21
HASH_LENGTH = 4
_DAY = 86400
_SLOTS = 1024                      # two base-32 characters of days
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_SEPARATORS = "=+-"                # after SRS0/SRS1 (Mail::SRS accepts all three)


class SRSError(ValueError):
    """An address that claims to be one of our SRS addresses and is not valid
    (bad hash, expired, malformed): the sender's fault, refused 550 5.1.1."""


def is_srs(local_part: str) -> bool:
    """Whether ``local_part`` has the shape of an SRS address (``SRS0=``/``SRS1=``)."""
    return (len(local_part) > 5 and local_part[:4].upper() in ("SRS0", "SRS1")
            and local_part[4] in _SEPARATORS)


@dataclass(frozen=True, slots=True)
class SRS:
    """Forward and reverse rewriting under ``secrets`` (the first signs)."""

    secrets: tuple[bytes, ...]
    max_age_days: int = MAX_AGE_DAYS

    def __post_init__(self) -> None:
        if not self.secrets or not all(self.secrets):
            raise ValueError("SRS needs at least one non-empty secret")

    @classmethod
    def in_data_dir(cls, data_dir: Path, *, max_age_days: int = MAX_AGE_DAYS) -> SRS:
        """The secrets of ``data_dir/srs.secret``, making the file on first use."""
        return cls(load_secrets(Path(data_dir) / SECRET_FILE), max_age_days)

    # ------------------------------------------------------------ forward

    def forward(self, sender: str, forwarder_domain: str, *, now: float | None = None) -> str:
        """The reverse path for a copy of mail from ``sender`` forwarded by
        ``forwarder_domain`` (``''`` stays ``''``)."""
        if not sender:
            return ""
        local, _, domain = sender.rpartition("@")
        if not local or not domain:
            return sender            # <Postmaster> alone: nothing to carry
        if is_srs(local):
            kind = local[:4].upper()
            rest = local[5:]
            if kind == "SRS0":
                # SRS1=HHHH=first-forwarder==HHHH=TT=domain=local (the SRS0 part
                # keeps its own separator as the extra "=").
                body = f"{domain}={local[4]}{rest}"
                return f"SRS1={self._hash(body)}={body}@{forwarder_domain}"
            # Already SRS1: keep the first forwarder's part, sign it afresh.
            parts = rest.split("=", 1)
            if len(parts) == 2:
                body = parts[1]
                return f"SRS1={self._hash(body)}={body}@{forwarder_domain}"
        stamp = _timestamp(now)
        body = f"{stamp}={domain}={local}"
        return f"SRS0={self._hash(body)}={body}@{forwarder_domain}"

    # ------------------------------------------------------------ reverse

    def return_path(self, address: str, is_local_domain: Callable[[str], bool]) -> str:
        """Where a report about mail whose reverse path is ``address`` goes: for
        one of our SRS addresses that verifies, the address it stands for (a
        forwarded copy that failed is reported to its original sender); any
        other address unchanged (an invalid one then fails like any unknown
        local address, and the report reaches the postmaster)."""
        local, _, domain = address.rpartition("@")
        if not local or not is_srs(local) or not is_local_domain(domain.lower()):
            return address
        try:
            return self.reverse(local)
        except SRSError:
            return address

    def reverse(self, local_part: str, *, now: float | None = None) -> str:
        """Where a message to ``local_part@<one of our domains>`` goes back to.

        ``SRS0``: the original sender.  ``SRS1``: the first forwarder's
        ``SRS0`` address.  Raises :class:`SRSError` for anything else.
        """
        if not is_srs(local_part):
            raise SRSError(f"{local_part!r} is not an SRS address")
        kind, rest = local_part[:4].upper(), local_part[5:]
        if kind == "SRS1":
            given, sep, body = rest.partition("=")
            host, sep2, srs0 = body.partition("==")
            if not sep or not sep2 or not host or not srs0:
                raise SRSError("malformed SRS1 address")
            self._check_hash(given, body)
            return f"SRS0={srs0}@{host}"
        fields = rest.split("=", 3)
        if len(fields) != 4 or not all(fields):
            raise SRSError("malformed SRS0 address")
        given, stamp, domain, local = fields
        self._check_hash(given, f"{stamp}={domain}={local}")
        self._check_age(stamp, now)
        return f"{local}@{domain}"

    # ------------------------------------------------------------- details

    def _hash(self, body: str, secret: bytes | None = None) -> str:
        key = self.secrets[0] if secret is None else secret
        digest = hmac.new(key, body.lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[:HASH_LENGTH]

    def _check_hash(self, given: str, body: str) -> None:
        if len(given) != HASH_LENGTH:
            raise SRSError("SRS address with a hash of the wrong length")
        for secret in self.secrets:
            expected = self._hash(body, secret)
            if hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
                return
            if hmac.compare_digest(given.lower().encode("utf-8", "replace"),
                                   expected.lower().encode()):
                return
        raise SRSError("SRS address with a hash that is not ours (forged or altered)")

    def _check_age(self, stamp: str, now: float | None) -> None:
        then = _decode_timestamp(stamp)
        today = int((time.time() if now is None else now) // _DAY) % _SLOTS
        # Days since it was made, modulo the 1024-day wheel; one made "in the
        # future" wraps to a great age and is refused as well.
        if (today - then) % _SLOTS > self.max_age_days:
            raise SRSError(f"SRS address older than {self.max_age_days} days (expired)")


def _timestamp(now: float | None) -> str:
    day = int((time.time() if now is None else now) // _DAY) % _SLOTS
    return _BASE32[day >> 5] + _BASE32[day & 31]


def _decode_timestamp(stamp: str) -> int:
    if len(stamp) != 2:
        raise SRSError("SRS0 address with a malformed time stamp")
    high, low = _BASE32.find(stamp[0].upper()), _BASE32.find(stamp[1].upper())
    if high < 0 or low < 0:
        raise SRSError("SRS0 address with a malformed time stamp")
    return (high << 5) | low


def load_secrets(path: Path) -> tuple[bytes, ...]:
    """The secrets in ``path`` (one a line), making the file with a new random
    secret, mode 0600, if there is none.

    Made under a temporary name and linked into place, so that two workers
    starting at once agree on one secret and none reads a half-written file.
    """
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass                      # another worker made it first: use theirs
        finally:
            tmp.unlink()
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    lines = [line.strip() for line in path.read_bytes().splitlines()]
    found = tuple(line for line in lines if line and not line.startswith(b"#"))
    if not found:
        raise ValueError(f"{path}: no SRS secret in the file (one a line; the first signs)")
    return found
