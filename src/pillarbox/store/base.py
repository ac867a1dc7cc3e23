"""The store interface: what services may ask of storage, and the values they get.

Nothing above the store knows which backend it talks to (DESIGN.md, layer 4).
The embedded backend is ``pillarbox.store.sqlite``; a PostgreSQL backend will
implement the same methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pillarbox.store.blobs import BlobWriter

if TYPE_CHECKING:
    from pillarbox.store.directory import Directory


class StoreError(Exception):
    """A store operation failed for a reason a person can act on."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class StorageFull(StoreError):
    """The disk or the database is full: answer 452 4.3.1, lose nothing."""


@dataclass(frozen=True, slots=True)
class EnvelopeRecipient:
    address: str                 # forward path, as received
    notify: str | None = None    # RFC 3461 NOTIFY, comma separated
    orcpt: str | None = None     # RFC 3461 ORCPT as 'addr-type;address'


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the receiver commits with the blob (RFC 5321 2.3.1)."""

    reverse_path: str            # '' is the null reverse path
    recipients: tuple[EnvelopeRecipient, ...]
    client_address: str
    helo: str
    body: str | None = None
    smtputf8: bool = False
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    quarantine: bool = False     # a policy check (DMARC) said: into Junk, not INBOX
    requiretls: bool = False     # MAIL FROM ... REQUIRETLS (RFC 8689 4.1)
    tls_required_no: bool = False   # "TLS-Required: No" and no REQUIRETLS (RFC 8689 4.1)


@dataclass(frozen=True, slots=True)
class RecipientState:
    idx: int
    address: str
    status: str                  # pending / delivered / relayed / failed
    notify: str | None
    orcpt: str | None
    last_reply: str | None
    attempts: int = 0
    last_attempt: float | None = None
    status_code: str | None = None   # RFC 3463 code of the last outcome
    remote_mta: str | None = None    # who gave the last reply
    warned: bool = False             # the delay warning went out


@dataclass(frozen=True, slots=True)
class QueueEntry:
    id: str
    reverse_path: str
    size: int
    arrived: float
    client_address: str
    helo: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str | None
    body: str | None
    smtputf8: bool
    dsn_ret: str | None
    dsn_envid: str | None
    recipients: tuple[RecipientState, ...]
    quarantine: bool = False
    requiretls: bool = False     # RFC 8689: see Envelope
    tls_required_no: bool = False


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    domain: str


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    size: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """One local delivery: the account and the UID the message got."""

    queue_id: str
    sender: str
    recipient: str
    account: str
    mailbox: str
    uid: int
    size: int
    delay: float                 # seconds from arrival to delivery


class Store(Protocol):
    """The operations the services use; ``SQLiteStore`` implements them.

    Reads for recipient resolution go through ``directory()``, which gives
    the three lookups of ``pillarbox.store.directory.Directory`` bound to
    a connection of the caller's thread.
    """

    def directory(self) -> Directory: ...

    def list_domains(self) -> list[tuple[str, int, int]]: ...

    def spool_free_space(self) -> int:
        """Bytes free where new blobs are written (for 452 4.3.1 before DATA)."""
        ...

    def new_blob(self, blob_id: str) -> BlobWriter: ...

    async def enqueue(self, blob_id: str, writer: BlobWriter, envelope: Envelope) -> None: ...

    def read_blob(self, blob_id: str) -> bytes: ...

    def queue_list(self) -> list[QueueEntry]: ...

    def queue_get(self, queue_id: str) -> QueueEntry | None: ...

    def list_mailboxes(self, address: str) -> list[MailboxInfo]: ...

    def quota_if_limited(self, account_id: int) -> Quota | None:
        """The account's usage and limits, or None if it has no limit (usage not counted).

        Raises ``NotFound`` for an unknown account.
        """
        ...


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """A queue entry with the recipients still to deliver, as local delivery reads it."""

    queue_id: str
    reverse_path: str
    size: int
    arrived: float
    recipients: tuple[tuple[int, str], ...]    # (index, forward path), pending ones
    attempts: int = 0                          # earlier attempts (0: the first)
    notify_success: frozenset[int] = frozenset()   # recipients with NOTIFY=SUCCESS
    quarantine: bool = False                   # into each account's Junk, not INBOX


class LocalDelivery(Protocol):
    """The store's side of one local-delivery batch, inside one transaction.

    ``pillarbox.deliver.local`` decides (resolution, one copy per account,
    permanent failures); this reads and writes.  Nothing is visible until the
    transaction the backend runs it in commits, and then all of it is:
    mailbox copies and recipient states together, so each message is in each
    mailbox exactly once.  Writes may be gathered until ``flush()``.
    """

    def directory(self) -> Directory: ...

    def pending(self, queue_ids: list[str]) -> dict[str, PendingEntry]: ...

    def append_to_inbox(
        self, account_id: int, queue_id: str, prefix: bytes, size: int,
        internal_date: float, delivery: str, *, junk: bool = False,
    ) -> int:
        """Add a copy of the blob ``queue_id`` to the account's INBOX (or, with
        ``junk``, to its ``\\Junk`` mailbox, RFC 6154); return its UID.

        ``delivery`` (queue id / recipient index / account) is unique: the
        same delivery applied twice fails the transaction.
        """
        ...

    def settle(self, queue_id: str, idx: int, status: str, reply: str) -> None:
        """Record a recipient's outcome: ``delivered`` or ``failed``, with the reply;
        ``pending`` with the reply of a transient failure (tried again later)."""
        ...

    def quota(self, account_id: int) -> Quota | None:
        """The account's usage, including what this batch appended, and its limits;
        None if it has no limit."""
        ...

    def finish(self, queue_id: str, copies: int) -> None:
        """Every recipient is settled: the entry goes, and with it the queue's reference
        to the blob; ``copies`` mailbox references are added."""
        ...

    def copies_made(self, queue_id: str) -> set[int]:
        """The accounts that got a copy of the entry in an earlier attempt (by the
        ``delivery`` keys of the copies still there)."""
        ...

    def keep(self, queue_id: str, copies: int) -> None:
        """Some recipients wait for another attempt: the entry stays, with the queue's
        reference to the blob; ``copies`` mailbox references are added."""
        ...

    def add_forwards(self, queue_id: str, idx: int, targets: Sequence[str],
                     orcpt: str) -> list[tuple[int, str]]:
        """Add ``targets`` (addresses of other domains an alias names) to the entry
        as pending recipients with the NOTIFY of recipient ``idx`` and its ORCPT
        (``orcpt`` if it has none); targets already among the entry's recipients
        are skipped.  Returns the new recipients' (index, address)."""
        ...

    def flush(self) -> None: ...


class QueueWork(Protocol):
    """The store's side of the queue manager's bookkeeping, inside one transaction.

    ``pillarbox.queue`` decides (retries, expiry, who hears of what); this reads
    and writes.  A report queued with ``add_message`` commits with the outcomes
    it reports, so a crash loses neither nor sends one twice.
    """

    def entries(self, queue_ids: list[str]) -> dict[str, QueueEntry]: ...

    def settle(self, queue_id: str, idx: int, status: str, reply: str, code: str | None,
               remote_mta: str | None, now: float) -> bool:
        """Record a pending recipient's outcome (``pending`` again for a transient one,
        counting the attempt); False if it was no longer pending."""
        ...

    def mark_warned(self, queue_id: str, idxs: list[int]) -> None: ...

    def defer(self, queue_id: str, next_attempt: float, reply: str) -> None: ...

    def lease(self, queue_ids: list[str], until: float) -> None: ...

    def finish(self, queue_id: str) -> None: ...

    def original(self, queue_id: str, header_only: bool) -> bytes: ...

    def add_message(self, data: bytes, envelope: Envelope, next_attempt: float) -> str:
        """Queue a new message; its id."""
        ...

    def directory(self) -> Directory:
        """Domains, accounts and aliases as this transaction sees them."""
        ...


# ------------------------------------------------------------ mail access
#
# What IMAP, POP3, import/export and SASL ask of the store.  Reads are
# synchronous and cheap (indexed queries on the caller's connection); writes
# are coroutines that return once the change is committed and durable
# (group commit: many sessions share one fsync), and announce the change on
# the notification channel, so sessions in every process see it.


class OverQuota(StoreError):
    """The account's quota would be exceeded (RFC 9208: NO [OVERQUOTA], 452 4.2.2)."""


class MailboxExists(AlreadyExists):
    pass


class NoSuchMailbox(NotFound):
    pass


class MailboxHasChildren(StoreError):
    """DELETE of a mailbox with inferiors (NO [HASCHILDREN], RFC 5530)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a login is checked against (``pillarbox.auth``)."""

    account_id: int
    address: str
    password_hash: str           # argon2id PHC string
    scram: str | None            # 'SCRAM-SHA-256$iter$salt$StoredKey$ServerKey', base64


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One mailbox of an account (RFC 9051 2.3.1.1; RFC 7162 HIGHESTMODSEQ)."""

    id: int
    account_id: int
    name: str                    # full name, hierarchy delimiter "/"
    special_use: str | None      # RFC 6154: "\\Sent", "\\Drafts" ...
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    keywords: tuple[str, ...]    # keywords ever stored in it


@dataclass(frozen=True, slots=True)
class MailboxCounts:
    """What STATUS reports (RFC 9051 6.3.11, RFC 8438 SIZE)."""

    messages: int
    unseen: int
    deleted: int
    size: int


@dataclass(slots=True)
class MessageMeta:
    """One message in a mailbox, as a selected-mailbox view keeps it."""

    uid: int
    flags: frozenset[str]        # system flags ("\\Seen" ...) and keywords, as stored
    modseq: int
    internal_date: float         # seconds since the epoch (UTC)
    size: int                    # RFC822.SIZE
    blob: str
    savedate: float | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a mailbox after a MODSEQ, with the mailbox's head as it
    was then: for EXISTS/EXPUNGE/FETCH and QRESYNC."""

    highestmodseq: int
    uidnext: int
    changed: list[FlagState]     # new or with new flags, modseq > since, by UID
    expunged: list[int]          # UIDs expunged with modseq > since, ascending
    uidvalidity: int = 0
    keywords: tuple[str, ...] = ()


class FlagState(NamedTuple):
    """A message as a change tells a session of it: its UID, flags and MODSEQ."""

    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """The outcome of a STORE on one message."""

    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True, slots=True)
class Quota:
    """An account's usage and limits (RFC 9208 STORAGE in KiB on the wire, MESSAGE)."""

    storage_used: int            # octets
    storage_limit: int | None    # octets, None: no limit
    messages_used: int
    messages_limit: int | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append: its bytes, flags and internal date.

    ``cache``: the message's ``blob_cache`` row (envelope, bodystructure, body,
    sort), when the caller has parsed it already; stored in the same commit.
    """

    data: bytes
    flags: frozenset[str] = frozenset()
    internal_date: float | None = None   # None: now
    cache: tuple[bytes, bytes, bytes, str] | None = None


class MailStore(Protocol):
    """Mailbox access; ``SQLiteStore`` implements it (``store/sqlite/mail.py``)."""

    # accounts and credentials
    def credentials(self, address: str) -> Credentials | None: ...

    def set_credentials(self, address: str, password_hash: str, scram: str | None) -> None: ...

    # mailboxes (reads)
    def mailboxes(self, account_id: int) -> list[Mailbox]: ...

    def mailbox(self, account_id: int, name: str) -> Mailbox | None: ...

    def mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...

    def counts(self, mailbox_id: int) -> MailboxCounts: ...

    def subscriptions(self, account_id: int) -> list[str]: ...

    def quota(self, account_id: int) -> Quota: ...

    # messages (reads)
    def messages(self, mailbox_id: int) -> list[MessageMeta]: ...

    def changes(self, mailbox_id: int, since_modseq: int) -> Changes: ...

    def expunged_since(self, mailbox_id: int, since_modseq: int) -> list[int]: ...

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes | None: ...

    def message_reader(self, mailbox_id: int,
                       uids: list[int]) -> Callable[[int], bytes | None]: ...

    # mailboxes (writes)
    async def create_mailbox_named(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox: ...

    async def delete_mailbox(self, account_id: int, name: str) -> None: ...

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None: ...

    async def subscribe(self, account_id: int, name: str, subscribed: bool) -> None: ...

    # messages (writes)
    async def append(
        self, mailbox_id: int, messages: list[NewMessage]
    ) -> tuple[int, list[int]]: ...

    async def store_flags(
        self, mailbox_id: int, uids: list[int], mode: str, flags: frozenset[str],
        unchangedsince: int | None = None,
    ) -> tuple[list[FlagUpdate], list[int]]: ...

    async def copy(
        self, mailbox_id: int, uids: list[int], target_id: int, *, move: bool = False
    ) -> tuple[int, list[tuple[int, int]]]: ...

    async def expunge(self, mailbox_id: int, uids: list[int] | None = None) -> list[int]: ...
