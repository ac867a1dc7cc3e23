"""Copies for aliases that forward to other domains, made at reception.

An alias of ours may name addresses of other post offices
(``pillarbox.deliver.recipients``: ``Resolution.forwards``).  The receiving
session accepts such an address at RCPT (it is ours, so this is no relay)
and, once the message is on the spool and judged, queues one *forwarded
copy* per alias domain, beside the entry for the local recipients, as
Postfix's cleanup expands virtual aliases before the queue.  Each copy
differs from the message as received in two ways, which is why it is an
entry (and a blob) of its own:

- its envelope sender is rewritten with SRS into the alias's domain
  (``receive/srs.py``), so SPF at the next hop checks our domain, and a
  bounce comes back to us to be reversed (:meth:`Forwarding.reverse`);
- it carries our ARC Set (RFC 8617 §5.1, ``receive/arc_seal.py``), sealed
  with the alias domain's RSA DKIM key (or the host name's domain's), over
  the message with our ``Received:`` and ``Authentication-Results:`` on top,
  so the next hop can trust what we saw when SPF or DKIM no longer pass
  there.  Nothing else is added: the author's DKIM signatures go on as they
  came, and we do not DKIM-sign mail that is not ours.

Without an RSA key the copy goes unsealed (sealing is optional, §5.1.4),
which is logged once per domain, not for every message.  A message too large
to seal in memory (``max_seal_size``) is copied unsealed, also logged.

A forwarded copy's NOTIFY and ORCPT are those of the alias recipient, the
ORCPT defaulting to the alias address (RFC 3461 §5.2.1: what the sender
wrote), so a DSN names the address the sender knows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from pillarbox.log import log_event
from pillarbox.policy.dkim.sign import Signer
from pillarbox.protocols.smtp.params import xtext_encode
from pillarbox.receive.arc_seal import choose_signer, seal_forwarded
from pillarbox.receive.srs import SRS, SRSError, is_srs
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.blobs import BlobWriter, new_id

__all__ = ["Forward", "Forwarding", "SRSError", "is_srs"]

log = logging.getLogger("pillarbox.forward")

MAX_SEAL_SIZE = 16 * 1024 * 1024   # octets read whole to seal; larger copies go unsealed
_COPY = 1 << 16
# Copies larger than this are sealed in a thread (hashing releases the GIL), as
# DKIM signing does (receive/signing.py, THREAD_OVER).
_THREAD_OVER = 1 << 19


@dataclass(frozen=True, slots=True)
class Forward:
    """One accepted recipient that is (also) forwarded: the alias's domain, the
    recipient as the sender gave it, and the remote targets it reaches."""

    domain: str
    recipient: EnvelopeRecipient
    targets: tuple[str, ...]


class Forwarding:
    """SRS and ARC sealing for forwarded copies; one per worker, wired by ``serve``.

    ``keys(domains)`` gives the active DKIM signers of ``domains``
    (``DKIMSigning.signers``); None: no keys, nothing is sealed.
    """

    def __init__(self, srs: SRS, hostname: str,
                 keys: Callable[[Iterable[str]], list[Signer]] | None = None, *,
                 max_seal_size: int = MAX_SEAL_SIZE) -> None:
        self.srs = srs
        self.hostname = hostname
        self.keys = keys
        self.max_seal_size = max_seal_size
        self._unkeyed: set[str] = set()      # domains already logged as having no RSA key

    # ------------------------------------------------------------- SRS

    def reverse(self, local_part: str) -> str:
        """The address a bounce to our SRS address ``local_part@…`` goes back to;
        :class:`SRSError` (550 5.1.1) when the address is not valid."""
        return self.srs.reverse(local_part)

    def reverse_path(self, sender: str, domain: str,
                     is_local_domain: Callable[[str], bool]) -> str:
        """The forwarded copy's envelope sender: ``sender`` in SRS form in
        ``domain``; the null sender and senders of our own domains stay as they are."""
        if not sender:
            return ""
        sender_domain = sender.rpartition("@")[2].lower()
        if sender_domain and is_local_domain(sender_domain):
            return sender
        return self.srs.forward(sender, domain)

    # ------------------------------------------------------------- ARC

    def signer(self, domain: str) -> Signer | None:
        """The RSA key that seals for ``domain`` (``choose_signer``), logging once
        per domain when there is none."""
        signer = None
        if self.keys is not None:
            labels = self.hostname.lower().rstrip(".").split(".")
            candidates = [domain] + [".".join(labels[i:]) for i in range(len(labels) - 1)]
            keys = {d: self.keys([d]) for d in candidates}
            signer = choose_signer(keys, domain, self.hostname)
        if signer is None and domain not in self._unkeyed:
            self._unkeyed.add(domain)
            log_event(log, "arc not sealed", domain=domain,
                      reason="no RSA DKIM key for the forwarding domain or the host name's "
                      "(pillarbox dkim keygen DOMAIN --activate); logged once",
                      level=logging.WARNING)
        return signer

    # ------------------------------------------------------------ copies

    async def enqueue_copies(
        self, forwards: list[Forward], source: BlobWriter, template: Envelope, *,
        authserv_id: str | None, is_local_domain: Callable[[str], bool],
        new_blob: Callable[[str], BlobWriter],
        enqueue: Callable[[str, BlobWriter, Envelope], Awaitable[None]],
    ) -> list[tuple[str, Envelope]]:
        """Queue the forwarded copies of the spooled message ``source`` (one per
        alias domain); their queue ids and envelopes.  ``template`` is the
        envelope of the message as received.  Raises what ``enqueue`` raises
        (the copies before the failing one are queued: at least once)."""
        queued: list[tuple[str, Envelope]] = []
        for domain, recipients in group(forwards).items():
            envelope = dataclasses.replace(
                template,
                reverse_path=self.reverse_path(template.reverse_path, domain, is_local_domain),
                recipients=recipients,
                quarantine=False,       # Junk is a mailbox of ours; the next hop judges
            )
            queue_id = new_id()
            writer = new_blob(queue_id)
            try:
                sealed = await self._copy(source, writer, domain, authserv_id)
            except BaseException:
                writer.discard()
                raise
            await enqueue(queue_id, writer, envelope)
            queued.append((queue_id, envelope))
            log_event(log, "forwarded", queue_id=queue_id, domain=domain,
                      from_=f"<{envelope.reverse_path}>",
                      to=",".join(r.address for r in recipients),
                      arc=sealed or None)
        return queued

    async def _copy(self, source: BlobWriter, writer: BlobWriter, domain: str,
                    authserv_id: str | None) -> str:
        """Write the copy, sealed if it can be; the sealing key's ``selector@domain``
        or ``""``."""
        signer = self.signer(domain) if authserv_id is not None else None
        message = source.content(0, self.max_seal_size) if signer is not None else None
        if signer is None or message is None or authserv_id is None:
            if signer is not None:
                log_event(log, "arc not sealed", domain=domain, size=source.size,
                          reason=f"larger than {self.max_seal_size} octets")
            _stream(source, writer)
            return ""
        if len(message) > _THREAD_OVER:
            sealed = await asyncio.to_thread(seal_forwarded, message, authserv_id, signer)
        else:
            sealed = seal_forwarded(message, authserv_id, signer)
        writer.write(sealed)
        return f"{signer.selector}@{signer.domain}" if len(sealed) != len(message) else ""


def group(forwards: Iterable[Forward]) -> dict[str, tuple[EnvelopeRecipient, ...]]:
    """The copies' recipients by alias domain, each target once per domain."""
    out: dict[str, dict[str, EnvelopeRecipient]] = {}
    for fwd in forwards:
        seen = out.setdefault(fwd.domain, {})
        orcpt = fwd.recipient.orcpt or f"rfc822;{xtext_encode(fwd.recipient.address)}"
        for target in fwd.targets:
            seen.setdefault(target.lower(), EnvelopeRecipient(target, fwd.recipient.notify,
                                                              orcpt))
    return {d: tuple(r.values()) for d, r in out.items()}


def _stream(source: BlobWriter, writer: BlobWriter) -> None:
    """Copy what ``source`` holds into ``writer`` without holding it whole."""
    whole = source.content(0, _COPY * 16)
    if whole is not None:
        writer.write(whole)
        return
    source.flush()
    with open(source.path, "rb") as f:
        while chunk := f.read(_COPY):
            writer.write(chunk)

