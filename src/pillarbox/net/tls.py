"""TLS contexts, and the self-signed certificate of the development defaults."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path


class TLSFileError(Exception):
    """The certificate or its key cannot be used: ``fault`` is the file at fault,
    ``"certificate"`` or ``"private_key"``, and the message names it and says why."""

    def __init__(self, fault: str, message: str) -> None:
        super().__init__(message)
        self.fault = fault


class _Encrypted(Exception):
    pass


def _no_passphrase() -> str:
    # Without a callback OpenSSL would ask for the passphrase on the terminal,
    # and a server started by hand would wait there (once per worker).
    raise _Encrypted


def server_context(certificate: Path, private_key: Path) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, the system's default ciphers.

    Raises :class:`TLSFileError` saying which file is wrong and how.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, certificate, private_key)
    # Mail servers are reached by name through MX records that rarely match
    # client expectations; the client decides what it checks (RFC 7672, 8461).
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def load_chain(ctx: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    """Read the certificate and key into ``ctx``, at start or again after a
    renewal (new handshakes present them, those under way keep the old ones).
    Raises :class:`TLSFileError` saying which file is wrong and how; ``ctx`` then
    keeps presenting what it had (OpenSSL checks the pair before it takes it)."""
    try:
        ctx.load_cert_chain(certificate, private_key, password=_no_passphrase)
    except (OSError, _Encrypted) as exc:   # ssl.SSLError is an OSError
        # OpenSSL says "PEM lib" or "key values mismatch" and names no file.
        raise _what_is_wrong(certificate, private_key, exc) from None


def _what_is_wrong(certificate: Path, private_key: Path, exc: BaseException) -> TLSFileError:
    """Why ``load_cert_chain`` failed, found again file by file."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    pem = []
    for fault, path in (("certificate", certificate), ("private_key", private_key)):
        try:
            pem.append(path.read_bytes())
        except OSError as e:
            what = fault.replace("_", " ")
            return TLSFileError(fault, f"cannot read the TLS {what} {path}: {e.strerror or e}")
    cert_pem, key_pem = pem
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return TLSFileError("certificate", f"the TLS certificate {certificate} holds no "
                            "PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return TLSFileError("private_key", f"the TLS private key {private_key} is encrypted "
                            "with a passphrase; give Pillarbox the key without one "
                            "(openssl pkey -in KEY -out NEW)")
    except (ValueError, UnsupportedAlgorithm):
        return TLSFileError("private_key", f"the TLS private key {private_key} holds no "
                            "PEM private key (-----BEGIN PRIVATE KEY-----)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return TLSFileError("private_key", f"the TLS private key {private_key} is not the "
                            f"key of the certificate {certificate} (the first certificate "
                            "of that file must be the server's own)")
    return TLSFileError("certificate", f"cannot use the TLS certificate {certificate} and "
                        f"key {private_key}: {exc}")


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Create (once) a self-signed certificate for ``hostname`` in ``directory``."""
    cert_path = directory / "selfsigned.crt"
    key_path = directory / "selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        sans.append(x509.DNSName("localhost"))
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    sans.append(x509.IPAddress(ipaddress.ip_address("::1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.replace(tmp_key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
