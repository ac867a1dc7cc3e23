"""ARC: the Authenticated Received Chain (RFC 8617).

- :mod:`.chain`: the three ARC header fields and the ARC Sets of a message,
  with the structural checks of §5.2 (instances 1..N, one of each field,
  ``cv=``);
- :mod:`.validate`: ``await validate(message, resolver)``, the Chain
  Validation Status of §5.2 with the failing instance and the oldest-pass
  value, and its ``arc=`` entry for Authentication-Results (§6);
- :mod:`.seal`: :func:`arc_set`, a new ARC Set (AAR, AMS, AS) for a message
  we pass on (§5.1), signed with a DKIM :class:`~pillarbox.policy.dkim.Signer`'s
  RSA key; :func:`our_results`, our own Authentication-Results payload and
  ``arc=`` result read back from a message.

The DKIM primitives are shared with :mod:`pillarbox.policy.dkim`:
canonicalization, tag lists, key records.
"""

from pillarbox.policy.arc.chain import ARCSyntaxError, ChainStatus
from pillarbox.policy.arc.seal import OurResults, SealError, arc_set, our_results
from pillarbox.policy.arc.validate import ARCResult, validate

__all__ = ["ARCResult", "ARCSyntaxError", "ChainStatus", "OurResults", "SealError", "arc_set",
           "our_results", "validate"]
