"""The store interface: what services may ask of storage, and the values they get.

Nothing above the store knows which backend it talks to (DESIGN.md, layer 4).
The embedded backend is ``pillarbox.store.sqlite``; a PostgreSQL backend will
implement the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pillarbox.store.blobs import BlobWriter

if TYPE_CHECKING:
    from pillarbox.deliver.recipients import Directory


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


@dataclass(frozen=True, slots=True)
class RecipientState:
    idx: int
    address: str
    status: str                  # pending / delivered / failed
    notify: str | None
    orcpt: str | None
    last_reply: str | None


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
    the three lookups of ``pillarbox.deliver.recipients.Directory`` bound to
    a connection of the caller's thread.
    """

    def directory(self) -> Directory: ...

    def new_blob(self, blob_id: str) -> BlobWriter: ...

    async def enqueue(self, blob_id: str, writer: BlobWriter, envelope: Envelope) -> None: ...

    def read_blob(self, blob_id: str) -> bytes: ...

    def queue_list(self) -> list[QueueEntry]: ...

    def queue_get(self, queue_id: str) -> QueueEntry | None: ...

    def list_mailboxes(self, address: str) -> list[MailboxInfo]: ...
