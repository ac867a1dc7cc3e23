"""Administration as service functions: what the CLI (and later the HTTP API) do.

Each function takes an open store and names as an administrator typed them,
normalises and checks them (``pillarbox.admin.names``), and acts through the
store.  They never print: they return values or raise

    AdminError      the request makes no sense as given (bad name, refused alias)
    InvalidName     a domain name or address does not parse (a ValueError)
    StoreError      the store refused (NotFound, AlreadyExists, …)

and the caller words the outcome for its audience.  Passwords arrive here
in clear only to be hashed (argon2id and SCRAM-SHA-256 secrets,
``pillarbox.auth.passwords.make_secrets``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pillarbox.admin.names import (
    InvalidName,
    normalize_address,
    normalize_alias_source,
    normalize_domain,
    unicode_domain,
)
from pillarbox.auth.passwords import make_secrets
from pillarbox.store.base import (
    Account,
    AlreadyExists,
    MailboxInfo,
    NotFound,
    QueueEntry,
    Quota,
)
from pillarbox.store.sqlite.store import SQLiteStore

__all__ = [
    "AdminError",
    "DomainInfo",
    "InvalidName",
    "UserInfo",
    "add_alias",
    "add_domain",
    "add_user",
    "check_new_user",
    "dangling_aliases",
    "format_size",
    "get_quota",
    "list_aliases",
    "list_domains",
    "list_mailboxes",
    "list_users",
    "message_head",
    "parse_count",
    "parse_size",
    "queue_delete",
    "queue_list",
    "queue_show",
    "remove_alias",
    "remove_domain",
    "remove_user",
    "require_user",
    "set_password",
    "set_quota",
]

# How much of a queued message ``queue show`` reads: the header section, bounded.
HEAD_MAX_BYTES = 16384
HEAD_MAX_LINES = 60


class AdminError(Exception):
    """A request refused before it reached the store, with the reason to show."""


# --------------------------------------------------------------------- domains


@dataclass(frozen=True, slots=True)
class DomainInfo:
    name: str            # A-label form, as stored
    unicode: str         # U-label form; equal to name for an ASCII domain
    accounts: int
    aliases: int


def add_domain(store: SQLiteStore, name: str) -> str:
    """Add a local domain; return its stored (A-label) form."""
    domain = normalize_domain(name)
    store.add_domain(domain)
    return domain


def list_domains(store: SQLiteStore) -> list[DomainInfo]:
    return [DomainInfo(n, unicode_domain(n), a, s) for n, a, s in store.list_domains()]


def remove_domain(store: SQLiteStore, name: str, *, force: bool = False) -> str:
    """Remove a domain; with ``force``, its accounts (and their mail) and aliases too.

    Without ``force`` a domain that still has accounts or aliases is kept, so
    that a typo cannot delete mailboxes or silently reroute mail.
    """
    domain = normalize_domain(name)
    if not force:
        aliases = len(store.list_aliases(domain))
        if aliases and not store.list_accounts(domain):
            raise AdminError(
                f"domain {domain} still has {aliases} alias(es); remove them first or use --force"
            )
    store.remove_domain(domain, force=force)
    return domain


def _require_domain(store: SQLiteStore, domain: str) -> None:
    if not store.directory().is_local_domain(domain):
        raise NotFound(f"{domain} is not a local domain; add it with 'pillarbox domain add'")


# ----------------------------------------------------------------------- users


@dataclass(frozen=True, slots=True)
class UserInfo:
    address: str
    messages: int        # in all mailboxes
    inbox: int           # of which in INBOX
    size: int            # bytes in all mailboxes
    storage_limit: int | None = None     # quota, octets
    messages_limit: int | None = None    # quota, messages


def check_new_user(store: SQLiteStore, address: str) -> str:
    """Normalise ``address`` and check that it can become an account.

    Called before asking for a password, so a typo is reported at once.  An
    address that is already an alias is refused: aliases are resolved before
    accounts, so the account would never receive mail.
    """
    addr = normalize_address(address)
    _require_domain(store, addr.rpartition("@")[2])
    directory = store.directory()
    if directory.find_account(addr) is not None:
        raise AlreadyExists(f"account {addr} already exists")
    if directory.alias_targets(addr):
        raise AdminError(f"{addr} is an alias; remove the alias before adding an account")
    return addr


def add_user(store: SQLiteStore, address: str, password: str) -> Account:
    """Create an account with its default mailboxes (INBOX and the RFC 6154 ones)."""
    addr = check_new_user(store, address)
    return store.add_account(addr, *make_secrets(password))


def set_password(store: SQLiteStore, address: str, password: str) -> str:
    addr = normalize_address(address)
    store.set_password(addr, *make_secrets(password))
    return addr


def require_user(store: SQLiteStore, address: str) -> str:
    """Normalise ``address`` and check that the account exists (before a password prompt)."""
    addr = normalize_address(address)
    if store.directory().find_account(addr) is None:
        raise NotFound(f"no account {addr}")
    return addr


def remove_user(store: SQLiteStore, address: str) -> str:
    """Remove an account, its mailboxes and their messages."""
    addr = normalize_address(address)
    store.remove_account(addr)
    return addr


def list_users(store: SQLiteStore, domain: str | None = None) -> list[UserInfo]:
    name = None
    if domain is not None:
        name = normalize_domain(domain)
        _require_domain(store, name)
    out = []
    for account in store.list_accounts(name):
        boxes = store.list_mailboxes(account.address)
        inbox = sum(b.messages for b in boxes if b.name == "INBOX")
        quota = store.quota_if_limited(account.id)
        out.append(UserInfo(
            account.address,
            sum(b.messages for b in boxes),
            inbox,
            sum(b.size for b in boxes),
            quota.storage_limit if quota else None,
            quota.messages_limit if quota else None,
        ))
    return out


# ----------------------------------------------------------------------- quota
#
# Limits per account (RFC 9208 STORAGE and MESSAGE): enforced on IMAP APPEND
# and COPY (NO [OVERQUOTA]), at RCPT (452 4.2.2) and at local delivery.

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE | re.ASCII)
NO_LIMIT = ("0", "none")
_MAX_LIMIT = 1 << 60


def parse_size(text: str) -> int | None:
    """A storage limit as typed: ``1G``, ``500M``, ``1.5GiB``, ``2048`` (octets);
    binary units, as Dovecot reads them.  ``0`` or ``none``: no limit (None)."""
    value = text.strip()
    if value.lower() in NO_LIMIT:
        return None
    m = _SIZE.fullmatch(value)
    if m is None:
        raise AdminError(
            f"bad size {text!r}: expected a number of octets with an optional unit "
            "K, M, G or T (1024-based), such as 500M or 1G, or 0/none for no limit"
        )
    number = float(m.group(1))
    if number == 0:
        return None
    octets = int(number * _UNITS[m.group(2).upper()])
    if not 1 <= octets <= _MAX_LIMIT:
        raise AdminError(f"bad size {text!r}: out of range (1 octet to 1 EiB)")
    return octets


def parse_count(text: str) -> int | None:
    """A message limit as typed: a whole number; ``0`` or ``none``: no limit (None)."""
    value = text.strip()
    if value.lower() in NO_LIMIT:
        return None
    if not value.isascii() or not value.isdigit():
        raise AdminError(f"bad message count {text!r}: expected a whole number, or 0/none "
                         "for no limit")
    count = int(value)
    if count > _MAX_LIMIT:
        raise AdminError(f"bad message count {text!r}: out of range")
    return count or None


def format_size(octets: int) -> str:
    """``1 GiB``, ``1.5 MiB``, ``812 B``: what a person reads in a listing."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if octets >= unit:
            value = octets / unit
            return f"{value:.0f} {name}" if octets % unit == 0 else f"{value:.1f} {name}"
    return f"{octets} B"


def get_quota(store: SQLiteStore, address: str) -> tuple[str, Quota]:
    """An account's usage over all its mailboxes, and its limits."""
    addr = normalize_address(address)
    account = store.directory().find_account(addr)
    if account is None:
        raise NotFound(f"no account {addr}")
    return addr, store.quota(account.id)


_KEEP: object = object()


def set_quota(
    store: SQLiteStore, address: str, *, storage: int | None | object = _KEEP,
    messages: int | None | object = _KEEP,
) -> tuple[str, Quota]:
    """Set an account's limits (None: no limit); a limit not given stays as it was.

    Lowering a limit below the usage is allowed, as in Dovecot: nothing is
    removed, new mail waits (452 4.2.2) until the account is under it again.
    """
    addr, current = get_quota(store, address)
    new_storage = current.storage_limit if storage is _KEEP else storage
    new_messages = current.messages_limit if messages is _KEEP else messages
    store.set_quota(addr, new_storage, new_messages)  # type: ignore[arg-type]
    return get_quota(store, addr)


def list_mailboxes(store: SQLiteStore, address: str) -> list[MailboxInfo]:
    return store.list_mailboxes(normalize_address(address))


# ------------------------------------------------------------------ send as


def send_as(store: SQLiteStore, account: str, granted: str, *, remove: bool = False
            ) -> tuple[str, str]:
    """Grant (or with ``remove`` revoke) that ``account`` may send as ``granted``
    (an address, or ``@domain`` for every address of a domain) on submission.

    Its own address, sub-addresses and the aliases that lead to it need no
    grant (``pillarbox.receive.senders``).  Returns the normalised names.
    """
    from pillarbox.store.sqlite import sendas

    addr = require_user(store, account)
    target = normalize_alias_source(granted)
    if target == addr:
        raise AdminError(f"{addr} may always send as itself")
    if remove:
        sendas.revoke(store, addr, target)
    else:
        sendas.grant(store, addr, target)
    return addr, target


def list_send_as(store: SQLiteStore, account: str) -> tuple[str, list[str]]:
    from pillarbox.store.sqlite import sendas

    addr = require_user(store, account)
    return addr, [g for _, g in sendas.list_grants(store, addr)]


# --------------------------------------------------------------------- aliases


def add_alias(store: SQLiteStore, source: str, targets: list[str]) -> tuple[str, list[str]]:
    """Point ``source`` (an address, or ``@domain`` for the catch-all) at ``targets``.

    A target in one of our domains must be an account or an alias (else the
    alias would accept mail it cannot deliver); a target in any other domain
    is forwarded to (``pillarbox.receive.forwarding``: SRS, ARC).  One alias
    may mix both.  Returns the normalised names.
    """
    src = normalize_alias_source(source)
    _require_domain(store, src.rpartition("@")[2])
    directory = store.directory()
    if directory.find_account(src) is not None:
        raise AdminError(
            f"{src} is an account; an alias of the same name would take all its mail"
        )
    normalized: list[str] = []
    for target in targets:
        if target.strip().startswith("@"):
            raise AdminError(f"target {target!r}: a target is an address, not a catch-all")
        tgt = normalize_address(target)
        if tgt == src:
            raise AdminError(f"{src} cannot be an alias of itself")
        local = directory.is_local_domain(tgt.rpartition("@")[2])
        if local and directory.find_account(tgt) is None and not directory.alias_targets(tgt):
            raise AdminError(f"target {tgt} is neither a local account nor a local alias")
        if tgt not in normalized:
            normalized.append(tgt)
    existing = set(directory.alias_targets(src))
    new = [t for t in normalized if t not in existing]
    if not new:
        raise AlreadyExists(f"alias {src} -> {', '.join(normalized)} already exists")
    for tgt in new:
        store.add_alias(src, tgt)
    return src, new


def list_aliases(store: SQLiteStore, domain: str | None = None) -> list[tuple[str, list[str]]]:
    """(source, targets) for each alias, catch-alls as ``@domain``, by source."""
    name = None
    if domain is not None:
        name = normalize_domain(domain)
        _require_domain(store, name)
    grouped: dict[str, list[str]] = {}
    for source, target in store.list_aliases(name):
        grouped.setdefault(source, []).append(target)
    return list(grouped.items())


def remove_alias(
    store: SQLiteStore, source: str, target: str | None = None
) -> tuple[str, str | None, int]:
    """Remove one target of ``source``, or the whole alias: (source, target, rows removed)."""
    src = normalize_alias_source(source)
    tgt = normalize_address(target) if target is not None else None
    return src, tgt, store.remove_alias(src, tgt)


def dangling_aliases(store: SQLiteStore) -> list[tuple[str, str]]:
    """(source, target) of aliases whose target in a local domain is no longer an
    account or an alias (targets in other domains are forwards, never dangling).

    Such targets are skipped at delivery; an alias left with none of its
    targets makes its address unknown (550 5.1.1).  Shown after removals.
    """
    rows: list[tuple[str, str]] = store.reader.execute(
        "SELECT source, target FROM aliases"
        " WHERE target NOT IN (SELECT address FROM accounts)"
        " AND target NOT IN (SELECT source FROM aliases)"
        " ORDER BY source, target"
    ).fetchall()
    directory = store.directory()
    return [(s, t) for s, t in rows if directory.is_local_domain(t.rpartition("@")[2])]


# ----------------------------------------------------------------------- queue


def queue_list(store: SQLiteStore) -> list[QueueEntry]:
    return store.queue_list()


def _queue_id(text: str) -> str:
    """Queue ids are upper-case hex (``pillarbox.store.blobs.new_id``); accept any case."""
    ident = text.strip()
    if not ident:
        raise AdminError("empty queue id")
    return ident.upper() if all(c in "0123456789abcdefABCDEF" for c in ident) else ident


def queue_show(store: SQLiteStore, queue_id: str) -> QueueEntry:
    ident = _queue_id(queue_id)
    entry = store.queue_get(ident)
    if entry is None:
        raise NotFound(f"no queue entry {ident}")
    return entry


def message_head(store: SQLiteStore, blob_id: str) -> tuple[Path, list[str] | None]:
    """The blob's file and its header section (bounded), or None when the file is gone.

    A small message shares a segment file with others of its group commit:
    the file shown is the segment, and the head is read at the blob's offset.

    Lines are decoded as UTF-8 with replacement: headers may be 8-bit
    (RFC 6532) or broken, and a person reading them wants to see them anyway.
    """
    for attempt in range(2):   # once more if compaction moved it meanwhile
        location = store.blob_location(blob_id)
        path, offset, size = location or (store.blobs.path(blob_id), 0, HEAD_MAX_BYTES)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(min(size, HEAD_MAX_BYTES))
            break
        except FileNotFoundError:
            if attempt:
                return path, None
    lines: list[str] = []
    for raw in data.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if not line or len(lines) >= HEAD_MAX_LINES:
            break
        lines.append(line.decode("utf-8", "replace"))
    return path, lines


def queue_delete(store: SQLiteStore, queue_id: str) -> str:
    """Delete a queue entry without notice to its sender, and release its blob."""
    ident = _queue_id(queue_id)
    store.queue_delete(ident)
    return ident

