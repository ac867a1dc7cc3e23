"""DKIM: DomainKeys Identified Mail (RFC 6376), with Ed25519 (RFC 8463).

- :mod:`.canon`: simple and relaxed canonicalization on raw bytes (§3.4), also streamed;
- :mod:`.record`: tag-value lists, DKIM-Signature fields, key records (§3.2, §3.5, §3.6);
- :mod:`.verify`: ``await verify(message, resolver)``, one result per signature (§6);
- :mod:`.sign`: :class:`Signer` and :func:`sign`, dual RSA/Ed25519 signing (§5);
- :mod:`.keys`: key generation, PEM files, the DNS records to publish.
"""

from pillarbox.policy.dkim.canon import Canon
from pillarbox.policy.dkim.sign import Signer, sign
from pillarbox.policy.dkim.verify import DKIMResult, Result, VerifyPolicy, verify

__all__ = ["Canon", "DKIMResult", "Result", "Signer", "VerifyPolicy", "sign", "verify"]
