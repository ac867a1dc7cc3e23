"""ARC where mail enters and where it is forwarded (RFC 8617 §5).

Two calls, one at each end of Pillarbox's path:

- at reception, :func:`validate_incoming` validates the message's chain
  (``policy/arc``) and gives the ``arc=`` entry of our Authentication-Results
  (RFC 8617 §6: with ``smtp.remote-ip`` and ``header.oldest-pass``), next to
  SPF, DKIM and DMARC (``receive/origin.py``);
- where a message we received is passed on to another domain (an alias to a
  remote address; a mailing list later), :func:`seal_forwarded` adds our ARC
  Set, after every other change to the message (§5.1 step 1), carrying the
  Authentication-Results we stamped at reception, which are trusted because
  reception removed any field claiming our authserv-id (RFC 8601 §5).
  :func:`seal` is the same with the payload and status given.

Which key seals: :func:`choose_signer` takes the RSA DKIM key of the
forwarding domain (the alias's domain: the ADMD that takes responsibility
for the forwarded copy), else that of the server host name's domain or a
parent of it; Ed25519 keys cannot seal (RFC 8617 defines rsa-sha256 only).
The keys themselves are the ones ``pillarbox dkim keygen`` makes; the caller
loads them and passes them in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric import rsa

from pillarbox.log import log_event
from pillarbox.policy.arc.chain import ChainStatus
from pillarbox.policy.arc.seal import SealError, arc_set, our_results
from pillarbox.policy.arc.validate import ARCResult, validate
from pillarbox.policy.authres import MethodResult
from pillarbox.policy.dkim.sign import Signer
from pillarbox.policy.dns import Resolver

__all__ = ["choose_signer", "seal", "seal_forwarded", "validate_incoming"]

log = logging.getLogger("pillarbox.receive.arc")


async def validate_incoming(message: bytes | None, resolver: Resolver,
                            remote_ip: str | None = None, *, now: float | None = None,
                            ) -> tuple[ARCResult, MethodResult] | None:
    """The chain's validation and its ``arc=`` resinfo, for a message from
    another server (as received, without our own trace fields).

    None when there is nothing to say: the message was too large to read
    whole (``None``), or the check failed through a bug, which is logged; a
    bug in a check must not refuse mail.
    """
    if message is None:
        return None
    try:
        result = await validate(message, resolver, now=now)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log_event(log, "arc validation failed", error=repr(exc), level=logging.ERROR)
        return None
    return result, result.method_result(remote_ip)


def seal(message_bytes: bytes, authres_text: bytes | str, chain_status: ChainStatus,
         signer: Signer, *, now: float | None = None) -> bytes:
    """``message_bytes`` with a new ARC Set on top, or unchanged when RFC 8617
    says not to seal (the chain already ended in ``cv=fail``, or has 50 sets).

    ``authres_text`` is our Authentication-Results for the message (the field
    or its payload), ``chain_status`` the ``arc=`` result in it.  Raises
    :class:`~pillarbox.policy.arc.seal.SealError` when these cannot be
    sealed (a key that is not RSA, a status that contradicts the chain).
    """
    return arc_set(message_bytes, authres_text, chain_status, signer, now=now) + message_bytes


def seal_forwarded(message: bytes, authserv_id: str, signer: Signer | None, *,
                   now: float | None = None) -> bytes:
    """``message`` sealed for forwarding with our Authentication-Results read from it.

    The message goes on unsealed (sealing is optional, §5.1.4), with the
    reason logged, when there is no RSA key, no Authentication-Results of
    ours (it did not come in from outside), or a chain that was not
    validated at reception (no ``arc=`` of ours).
    """
    if signer is None:
        log_event(log, "arc not sealed", reason="no RSA DKIM key for the forwarding domain")
        return message
    ours = our_results(message, authserv_id)
    if ours is None:
        log_event(log, "arc not sealed", reason=f"no Authentication-Results of {authserv_id}")
        return message
    chain = ours.chain
    if chain is None:
        # ARC was not checked at reception: a message without ARC fields starts
        # a chain; one with them cannot be continued blind.
        chain = ChainStatus.NONE
    try:
        return seal(message, ours.payload, chain, signer, now=now)
    except SealError as exc:
        log_event(log, "arc not sealed", reason=str(exc), level=logging.WARNING)
        return message


def choose_signer(keys: Mapping[str, Iterable[Signer]], forwarding_domain: str,
                  hostname: str) -> Signer | None:
    """The RSA key that seals for ``forwarding_domain`` (``keys``: each domain's
    DKIM signers): that domain's, else the host name's domain's or its nearest
    parent's with a key (``mx.example.org`` → ``example.org``); None if neither
    has one."""
    candidates = [forwarding_domain.lower().rstrip(".")]
    labels = hostname.lower().rstrip(".").split(".")
    candidates += [".".join(labels[i:]) for i in range(len(labels) - 1)]
    for domain in candidates:
        for signer in keys.get(domain, ()):
            if isinstance(signer.key, rsa.RSAPrivateKey):
                return signer
    return None
