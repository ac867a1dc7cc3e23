"""DKIM key administration: what ``pillarbox dkim …`` does, as service functions.

A domain's keys go through three states (``pillarbox.store.dkim_keys``):

1. ``keygen`` (or ``rotate``, for a domain that already signs) makes a batch
   of keys, by default RSA-2048 and Ed25519 (RFC 8463 §1: sign with both, so
   verifiers that know only RSA still verify).  They are *pending*: their
   records must be published in DNS first, or every signature would fail.
2. ``activate`` makes a batch sign, and retires the batch that signed before.
3. A *retired* key's record stays published for the overlap
   (``dkim.overlap``, 7 days by default): mail signed just before the switch
   may still be in queues, or verified again by a forwarder, for days.
   After that its record may go, and ``remove`` forgets the key.

Selectors name the kind and month of a key (``r202612``, ``e202612``,
``pillarbox.policy.dkim.keys.make_selector``), so that old and new records
are published side by side.  The functions never print; they return what
was done, or raise AdminError (a request that makes no sense), InvalidName,
or StoreError.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pillarbox.admin.commands import AdminError
from pillarbox.admin.names import normalize_domain
from pillarbox.policy.dkim.keyring import key_path, remove_key_file, save_key
from pillarbox.policy.dkim.keys import generate_key, make_selector, read_private_key, zone_lines
from pillarbox.policy.dkim.record import checked_domain
from pillarbox.policy.dkim.sign import PrivateKey
from pillarbox.store.dkim_keys import ACTIVE, PENDING, RETIRED, DKIMKey, DKIMKeyStore

__all__ = ["ALGORITHMS", "PublishedKey", "activate", "generate", "list_keys", "published",
           "remove", "publish_until"]

#: What ``--algorithm`` accepts, and the kinds of key each makes.
ALGORITHMS = {"both": ("rsa", "ed25519"), "rsa": ("rsa",), "ed25519": ("ed25519",)}


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A key and the zone-file line of its record (None if its file is unreadable)."""

    key: DKIMKey
    record: str | None
    problem: str | None = None


def publish_until(key: DKIMKey, overlap: float) -> float | None:
    """Until when a retired key's record must stay published (None: not retired)."""
    return key.changed + overlap if key.state == RETIRED else None


def _selector(text: str) -> str:
    try:
        return checked_domain("s", text.strip().lower())
    except ValueError as exc:
        raise AdminError(f"{text!r} is not a usable selector: {exc}") from None


def generate(keys: DKIMKeyStore, data_dir: Path, domain: str, *, algorithm: str = "both",
             selector: str | None = None, activate: bool = False, rotate: bool = False,
             now: float | None = None) -> list[PublishedKey]:
    """Make a new batch of keys for ``domain`` and return them with their records.

    ``rotate`` is for a domain that signs already (and has no pending batch);
    without it the domain must have no pending or active keys.  ``selector``
    names the key; with two algorithms it is a prefix (``S-rsa``, ``S-ed25519``).
    """
    name = normalize_domain(domain)
    kinds = ALGORITHMS.get(algorithm)
    if kinds is None:
        raise AdminError(f"unknown algorithm {algorithm!r}: rsa, ed25519 or both")
    when = time.time() if now is None else now
    existing = keys.dkim_keys(name)
    pending = [k.selector for k in existing if k.state == PENDING]
    active = [k.selector for k in existing if k.state == ACTIVE]
    if rotate:
        if not active and not pending:
            raise AdminError(f"{name} has no DKIM keys to rotate: make them with "
                             f"'pillarbox dkim keygen {name}'")
        if pending:
            raise AdminError(f"{name} already has new keys waiting ({', '.join(pending)}): "
                             f"activate them ('pillarbox dkim activate {name} {pending[0]}') "
                             "or remove them first")
    elif pending or active:
        raise AdminError(f"{name} already has DKIM keys ({', '.join(active + pending)}): "
                         f"use 'pillarbox dkim rotate {name}' for new ones")
    taken = {k.selector for k in existing}
    made: list[tuple[str, PrivateKey]] = []
    for kind in kinds:
        key = generate_key(kind)
        if selector is None:
            sel = make_selector(key, when, taken)
        else:
            sel = _selector(selector if len(kinds) == 1 else f"{selector}-{kind}")
            if sel in taken:
                raise AdminError(f"{name} already has a DKIM key with selector {sel}")
        taken.add(sel)
        made.append((sel, key))
    written: list[str] = []
    try:
        for sel, key in made:
            save_key(data_dir, name, sel, key)
            written.append(sel)
        rows = keys.add_dkim_batch(name, [(sel, k) for (sel, _), k in zip(made, kinds)],
                                   ACTIVE if activate else PENDING, when)
    except BaseException:
        for sel in written:      # no row names them: nobody signs with them
            remove_key_file(data_dir, name, sel)
        raise
    return [PublishedKey(row, zone_lines(row.selector, name, key))
            for row, (_, key) in zip(rows, made)]


def activate(keys: DKIMKeyStore, data_dir: Path, domain: str, selector: str,
             now: float | None = None) -> tuple[list[DKIMKey], list[DKIMKey]]:
    """Make the batch of ``selector`` sign and retire the keys that did:
    (now signing, now retired).  Refused if a key file of the batch is unusable,
    since activating it would leave the domain without a signature."""
    name = normalize_domain(domain)
    sel = _selector(selector)
    rows = keys.dkim_keys(name)
    chosen = [k for k in rows if k.selector == sel]
    if not chosen:
        raise AdminError(f"{name} has no DKIM key with selector {sel} "
                         f"(see 'pillarbox dkim list {name}')")
    for k in rows:
        if k.batch == chosen[0].batch:
            try:
                read_private_key(key_path(data_dir, name, k.selector))
            except ValueError as exc:
                raise AdminError(f"not activated: {exc}") from None
    return keys.activate_dkim_batch(name, sel, time.time() if now is None else now)


def list_keys(keys: DKIMKeyStore, domain: str | None = None) -> list[DKIMKey]:
    return keys.dkim_keys(normalize_domain(domain) if domain is not None else None)


def published(keys: DKIMKeyStore, data_dir: Path, domain: str | None = None
              ) -> list[PublishedKey]:
    """Every key with the record it needs in DNS (all states: pending ones are to
    be published, retired ones kept for the overlap)."""
    out = []
    for k in list_keys(keys, domain):
        try:
            key = read_private_key(key_path(data_dir, k.domain, k.selector))
        except ValueError as exc:
            out.append(PublishedKey(k, None, str(exc)))
            continue
        out.append(PublishedKey(k, zone_lines(k.selector, k.domain, key)))
    return out


def remove(keys: DKIMKeyStore, data_dir: Path, domain: str, selector: str) -> DKIMKey:
    """Forget a retired (or never activated) key and delete its file."""
    name = normalize_domain(domain)
    sel = _selector(selector)
    key = keys.remove_dkim_key(name, sel)
    remove_key_file(data_dir, name, sel)
    return key

