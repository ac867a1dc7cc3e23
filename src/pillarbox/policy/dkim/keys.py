"""DKIM keys: making them, keeping them, publishing them (RFC 6376 §3.6, RFC 8463 §4).

- :func:`generate_key`: RSA-2048 (RFC 8301 §3.2: at least 1024 bits, 2048
  recommended) or Ed25519 (RFC 8463).
- :func:`write_private_key` / :func:`read_private_key`: PKCS#8 PEM files,
  written atomically with mode 0600, since whoever reads one can sign as the
  domain.
- :func:`key_record` and :func:`zone_lines`: the key record to publish at
  ``SELECTOR._domainkey.DOMAIN``, as the TXT value and as zone-file lines in
  which long values are split into quoted strings of at most 255 octets (the
  limit of one DNS character-string, RFC 1035 §3.3; verifiers join them,
  RFC 6376 §3.6.2.2).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Collection
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pillarbox.policy.dkim.record import checked_domain
from pillarbox.policy.dkim.sign import PrivateKey

__all__ = [
    "generate_key",
    "key_algorithm",
    "key_record",
    "make_selector",
    "private_key_pem",
    "read_private_key",
    "record_name",
    "write_private_key",
    "zone_lines",
]

ALGORITHMS = ("rsa", "ed25519")


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> PrivateKey:
    """A new private key: ``"rsa"`` (``bits``, 1024 to 4096) or ``"ed25519"``."""
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "rsa":
        if not 1024 <= bits <= 4096:
            raise ValueError(f"RSA DKIM keys have 1024 to 4096 bits (RFC 8301 §3.2), not {bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise ValueError(f"unknown DKIM key algorithm {algorithm!r} (rsa or ed25519)")


def key_algorithm(key: PrivateKey) -> str:
    """``k=`` for the key: ``"rsa"`` or ``"ed25519"``."""
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"


def make_selector(key: PrivateKey, when: float | None = None, taken: Collection[str] = ()) -> str:
    """A selector naming the key's kind and month (``r202612``, ``e202612``), so
    that a rotated key gets a new selector and old and new can be published
    side by side during the overlap; a letter is added when the name is
    ``taken`` (a second rotation in one month: ``r202612b``)."""
    stamp = time.strftime("%Y%m", time.gmtime(time.time() if when is None else when))
    base = ("e" if key_algorithm(key) == "ed25519" else "r") + stamp
    used = {t.lower() for t in taken}
    for suffix in ("",) + tuple("bcdefghijklmnopqrstuvwxyz"):
        if base + suffix not in used:
            return base + suffix
    raise ValueError(f"DKIM selector: every {base}[b-z] is taken")


def private_key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> None:
    """Write the key to ``path`` (PEM, mode 0600), atomically: a temporary file
    in the same directory, fsync'd, renamed over ``path``, directory fsync'd."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crashed run that had our PID
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_pem(key))
            f.flush()
            os.fchmod(f.fileno(), 0o600)  # whatever the umask said
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read a PEM private key written by :func:`write_private_key` (or OpenSSL):
    RSA or Ed25519, unencrypted.  Errors name the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"DKIM key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"DKIM key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError(f"DKIM key {path}: {type(key).__name__} is neither RSA nor Ed25519")
    return key


def _public_data(key: PrivateKey) -> bytes:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        # RFC 8463 §4.2: the raw 32-octet key, not wrapped in ASN.1.
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def key_record(key: PrivateKey) -> str:
    """The key record's text: ``v=DKIM1; k=rsa; p=...`` (§3.6.1)."""
    p = base64.b64encode(_public_data(key)).decode("ascii")
    return f"v=DKIM1; k={key_algorithm(key)}; p={p}"


def record_name(selector: str, domain: str) -> str:
    """Where the key record lives: ``SELECTOR._domainkey.DOMAIN`` (§3.6.2.1)."""
    return f"{checked_domain('s', selector)}._domainkey.{checked_domain('d', domain)}"


def zone_lines(selector: str, domain: str, key: PrivateKey) -> str:
    """The record as a zone-file line, ``NAME. IN TXT "..." "..."``, each string
    at most 255 octets."""
    text = key_record(key).encode("ascii")
    strings = " ".join(f'"{text[i : i + 255].decode("ascii")}"' for i in range(0, len(text), 255))
    return f"{record_name(selector, domain)}. IN TXT {strings}"
