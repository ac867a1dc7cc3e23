"""SCRAM-SHA-256 (RFC 5802, RFC 7677), the client's side: for AUTH to a smarthost.

The exchange, without channel binding (GS2 header ``n,,``, RFC 5802 §6)::

    C: n,,n=<user>,r=<cnonce>                       client-first-message
    S: r=<cnonce><snonce>,s=<salt>,i=<iterations>   server-first-message
    C: c=biws,r=<nonce>,p=<ClientProof>             client-final-message
    S: v=<ServerSignature>                          server-final-message

The client proves it knows the password without sending it, and checks
``v=``: a server that does not know the secrets cannot produce it, so
:meth:`ScramClient.verify_success` refuses a success that came without it.
A hostile server choosing the iteration count could make us spend minutes
in PBKDF2; counts above :data:`MAX_CLIENT_ITERATIONS` are refused.

It has the shape of :class:`pillarbox.protocols.smtp.client.SASLClient`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from pillarbox.auth.saslprep import prepare_password, saslprep

__all__ = ["MAX_CLIENT_ITERATIONS", "ScramClient"]

MIN_ITERATIONS = 4096            # RFC 7677 §4
MAX_CLIENT_ITERATIONS = 1_000_000


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _saslname(name: str) -> str:
    """RFC 5802 §5.1: ``=`` and ``,`` escaped as ``=3D`` and ``=2C``."""
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    """One SCRAM-SHA-256 exchange as the client (RFC 5802 §3, §5)."""

    name = "SCRAM-SHA-256"

    def __init__(self, username: str, password: str, *, nonce: str | None = None) -> None:
        self._user = _saslname(saslprep(username))
        self._password = prepare_password(password).encode("utf-8")
        self._nonce = nonce if nonce is not None else base64.b64encode(
            secrets.token_bytes(18)).decode("ascii")
        self._bare = f"n={self._user},r={self._nonce}"
        self._server_signature: bytes | None = None
        self._step = 0
        self.verified = False

    def initial_response(self) -> bytes | None:
        return f"n,,{self._bare}".encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        self._step += 1
        if self._step == 1:
            return self._client_final(challenge)
        if self._step == 2:
            self._check_server_final(challenge)
            return b""
        raise ValueError("SCRAM challenged after the server-final-message")

    def verify_success(self) -> None:
        if not self.verified:
            raise ValueError("no valid server signature (v=) was received (RFC 5802 §5.1)")

    def _client_final(self, challenge: bytes) -> bytes:
        try:
            text = challenge.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("server-first-message is not ASCII") from None
        attrs = dict(a.split("=", 1) for a in text.split(",") if "=" in a)
        if text.startswith("m=") or text.startswith("e="):
            raise ValueError(f"server-first-message refused the exchange: {text[:80]!r}")
        nonce, salt_text, count_text = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ValueError("server nonce does not extend ours (RFC 5802 §5.1 r=)")
        try:
            salt = base64.b64decode(salt_text, validate=True)
        except binascii.Error:
            raise ValueError("salt is not base64") from None
        if not salt or not count_text.isdigit():
            raise ValueError("server-first-message lacks s= or i=")
        iterations = int(count_text)
        if not MIN_ITERATIONS <= iterations <= MAX_CLIENT_ITERATIONS:
            raise ValueError(f"iteration count {iterations} outside "
                             f"{MIN_ITERATIONS}..{MAX_CLIENT_ITERATIONS}")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._bare},{text},{without_proof}".encode("utf-8")
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def _check_server_final(self, challenge: bytes) -> None:
        text = challenge.decode("ascii", "replace")
        if text.startswith("e="):
            raise ValueError(f"server refused: {text[2:80]}")
        if not text.startswith("v=") or self._server_signature is None:
            raise ValueError("server-final-message lacks v=")
        try:
            signature = base64.b64decode(text[2:], validate=True)
        except binascii.Error:
            raise ValueError("server signature is not base64") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise ValueError("server signature does not match: the server does not know "
                             "the password")
        self.verified = True
