"""DKIM signing keys as the store keeps them: one row per key, its state, no key material.

The private keys themselves are PEM files under the data directory, written
and read by the policy layer (``pillarbox.policy.dkim.keyring``); the store
keeps what every process must agree on: which keys a domain has, and which
of them sign.  A key's life (RFC 6376 §3.6.1 leaves rotation to the signer;
this is the usual practice of publishing before signing and keeping the old
record during an overlap):

``pending``   made and to be published in DNS; does not sign yet
``active``    signs every message of its domain
``retired``   no longer signs; its record stays published for the overlap,
              so that mail signed before the switch still verifies

Keys made together (``pillarbox dkim keygen`` or ``rotate``: usually an
RSA-2048 and an Ed25519 key) form a *batch* and change state together.
Every change raises a counter (:meth:`DKIMKeyStore.dkim_version`), which
running workers compare to decide whether to read the rows again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ACTIVE", "PENDING", "RETIRED", "STATES", "DKIMKey", "DKIMKeyStore"]

PENDING = "pending"
ACTIVE = "active"
RETIRED = "retired"
STATES = (PENDING, ACTIVE, RETIRED)


@dataclass(frozen=True, slots=True)
class DKIMKey:
    """One signing key of one domain (``d=``), named by its selector (``s=``)."""

    domain: str          # ASCII, lower case (A-labels)
    selector: str        # lower case
    algorithm: str       # "rsa" or "ed25519" (the key record's k=)
    created: float
    batch: int           # the keys made together
    state: str           # pending / active / retired
    changed: float       # when it entered its state (for retired: the overlap's start)

    def __str__(self) -> str:
        return f"{self.selector}._domainkey.{self.domain} ({self.algorithm}, {self.state})"


class DKIMKeyStore(Protocol):
    """What the DKIM administration and the signing service ask of the store."""

    def dkim_version(self) -> int:
        """A number that changes whenever any key row does."""
        ...

    def dkim_keys(self, domain: str | None = None) -> list[DKIMKey]:
        """The keys of ``domain`` (every domain: None), by domain, batch, selector."""
        ...

    def add_dkim_batch(self, domain: str, keys: list[tuple[str, str]], state: str, now: float
                       ) -> list[DKIMKey]:
        """Add the keys made together, ``(selector, algorithm)`` each, as one new
        batch in ``state`` (pending, or active, which retires the keys that
        were); AlreadyExists names a selector in use."""
        ...

    def activate_dkim_batch(self, domain: str, selector: str, now: float
                            ) -> tuple[list[DKIMKey], list[DKIMKey]]:
        """Make the batch of ``selector`` active and retire the keys that were:
        (now active, now retired).  NotFound without such a key; a retired
        batch becomes active again (rolling back a rotation)."""
        ...

    def remove_dkim_key(self, domain: str, selector: str) -> DKIMKey:
        """Forget a key that does not sign (pending or retired) and return it;
        NotFound, or StoreError for an active key."""
        ...
