"""DKIM signing of our own users' mail (RFC 6376 §5, RFC 8463), for the receiving session.

Mail submitted by an authenticated user, or relayed for a client of
``smtp.trusted_networks``, is signed with every active key of its author
domain: the domain of the RFC 5322 ``From:`` address, the one DMARC aligns
with (RFC 7489 §3.1).  The usual pair is RSA-2048 and Ed25519, so every
message gets two ``DKIM-Signature:`` fields, and verifiers that know only
RSA still find one they can check (RFC 8463 §1).

What is signed is the message as it will be queued: after the ``Date:`` and
``Message-ID:`` that submission adds (RFC 6409 §8), since verifiers see those.
Our ``Received:`` line (and, for a trusted client, ``Authentication-Results:``)
is in the spool but never signed (§5.4.1: trace fields change in transit),
so whether the signer sees it changes nothing in the signature.

:class:`DKIMSigning` keeps the active keys of every domain in memory and
asks the store whether they changed (``dkim_version``) at most every
``CHECK_EVERY`` seconds, so ``pillarbox dkim activate`` takes effect in
running workers within that time, without a restart.

A key that cannot be read (file missing, unreadable, not the algorithm
listed) is logged as an error when the keys are loaded and left out; a
message whose domain then has no key goes unsigned rather than refused,
because the fault is the operator's, not the sender's, and refusing would
stop all mail of the domain until the file is mended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pillarbox.log import log_event
from pillarbox.policy.dkim.keyring import load_signer
from pillarbox.policy.dkim.sign import Signer, signature_fields
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.store.blobs import BlobWriter
from pillarbox.store.dkim_keys import ACTIVE, DKIMKeyStore

__all__ = ["CHECK_EVERY", "DKIMSigning", "author_domains"]

log = logging.getLogger("pillarbox.dkim")

CHECK_EVERY = 2.0            # seconds between looks at the store's key version
_READ = 1 << 16              # chunks of a large message read for hashing
_WHOLE = 1 << 20             # messages up to this size are read in one piece
# Messages larger than this are signed in a thread: hashing a large body
# (hashlib releases the GIL) would otherwise hold up every session of the
# worker, while for a small one the hand-over costs more than it saves.
# Measured (RSA-2048 + Ed25519, 2 shared cores): 4 KB inline 1.6 ms CPU and
# loop lag p99 3.9 ms, in a thread 1.9 ms and 5.2 ms; 2 MB inline lag p99
# 17.8 ms, in a thread 11.1 ms; about even at 300 KB.  Measured again under
# the outbound bench's load (2 KB, 20 sessions, CPU-bound): every message in
# a thread cost the workers 0.15 ms more per message, for no gain in rate
# (docs/architecture.md, "What DKIM signing costs").
THREAD_OVER = 1 << 19


def author_domains(senders: Iterable[Mailbox | str]) -> list[str]:
    """The ASCII domains of the ``From:`` mailboxes (HeaderGate.senders), in order,
    once each; unparsable ones (``str``) are skipped."""
    out: list[str] = []
    for sender in senders:
        if isinstance(sender, str):
            continue
        try:
            domain = sender.ascii_domain.lower().rstrip(".")
        except Exception:  # noqa: BLE001 - a domain IDNA refuses has no keys of ours
            continue
        if domain and domain not in out:
            out.append(domain)
    return out


class DKIMSigning:
    """The signing keys of one worker and the sign call, wired by ``serve``."""

    def __init__(self, keys: DKIMKeyStore, data_dir: Path, *, sign_trusted: bool = True,
                 check_every: float = CHECK_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.data_dir = data_dir
        self.sign_trusted = sign_trusted
        self.check_every = check_every
        self._clock = clock
        self._checked = -float("inf")
        self._version: int | None = None
        self._signers: dict[str, tuple[Signer, ...]] = {}

    def signers(self, domains: Iterable[str]) -> list[Signer]:
        """The active signers of ``domains``, from keys at most ``check_every`` old."""
        self._refresh()
        out: list[Signer] = []
        for domain in domains:
            out.extend(self._signers.get(domain, ()))
        return out

    def has_keys(self) -> bool:
        self._refresh()
        return bool(self._signers)

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self.check_every:
            return
        self._checked = now
        try:
            version = self.keys.dkim_version()
            if version == self._version:
                return
            rows = [k for k in self.keys.dkim_keys() if k.state == ACTIVE]
        except Exception as exc:  # noqa: BLE001 - keep signing with the keys we have
            log_event(log, "dkim keys not read", error=repr(exc), level=logging.ERROR)
            return
        signers: dict[str, list[Signer]] = {}
        for row in rows:
            try:
                signer = load_signer(self.data_dir, row.domain, row.selector, row.algorithm)
            except (ValueError, OSError) as exc:
                log_event(log, "dkim key unusable", domain=row.domain, selector=row.selector,
                          error=str(exc), level=logging.ERROR)
                continue
            signers.setdefault(row.domain, []).append(signer)
        self._signers = {d: tuple(s) for d, s in signers.items()}
        self._version = version
        log_event(log, "dkim keys loaded", version=version,
                  keys=",".join(f"{s.selector}@{s.domain}"
                                for group in self._signers.values() for s in group) or "none")

    async def sign(self, writer: BlobWriter, signers: list[Signer]) -> bytes:
        """The DKIM-Signature fields for the spooled message of ``writer``, one per
        signer (empty without signers).  OSError: the spool could not be read."""
        if not signers:
            return b""
        if writer.size > THREAD_OVER:
            return await asyncio.to_thread(_sign_spooled, writer, signers)
        return _sign_spooled(writer, signers)


def _sign_spooled(writer: BlobWriter, signers: list[Signer]) -> bytes:
    whole = writer.content(0, _WHOLE)
    if whole is not None:
        return b"".join(signature_fields(whole, signers))
    writer.flush()    # everything in the file, then read it back in chunks
    with open(writer.path, "rb") as f:
        head = _head(f)
        return b"".join(signature_fields(head, signers, body_chunks=_chunks(f)))


def _head(f) -> bytes:  # type: ignore[no-untyped-def]
    """The start of the file up to and including the header block's empty line
    (or all of it, for a header without one)."""
    head = b""
    while True:
        chunk = f.read(_READ)
        head += chunk
        if not chunk or head.startswith(b"\r\n") or b"\r\n\r\n" in head[-len(chunk) - 3:]:
            return head


def _chunks(f) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    while chunk := f.read(_READ):
        yield chunk
