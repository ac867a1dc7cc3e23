"""What the queue manager hands to remote delivery, and what it gets back.

The queue manager (``pillarbox.queue``) owns the entries, their schedule and
the reports to senders; remote delivery (``pillarbox.deliver.remote``) owns
routing, connections and the SMTP dialogue.  These values are the whole
contract between the two: one message, the pending recipients of one domain,
and one outcome per recipient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

Status = Literal["delivered", "relayed", "deferred", "failed"]


@dataclass(frozen=True, slots=True)
class OutboundRecipient:
    idx: int                     # the recipient's index in its queue entry
    address: str                 # forward path, as received
    notify: str | None = None    # RFC 3461 NOTIFY, comma separated ("SUCCESS,FAILURE")
    orcpt: str | None = None     # RFC 3461 ORCPT as 'addr-type;address'


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One queued message, for the recipients of one destination domain."""

    queue_id: str
    reverse_path: str            # '' is the null reverse path (a bounce)
    recipients: tuple[OutboundRecipient, ...]
    size: int                    # octets of the message as stored
    open_body: Callable[[], BinaryIO]   # a fresh reader of exactly the message, each call
    body: str | None = None      # RFC 6152 BODY: "7BIT", "8BITMIME" or None
    smtputf8: bool = False       # RFC 6531: the envelope or headers need SMTPUTF8
    dsn_ret: str | None = None   # RFC 3461 RET: "FULL" / "HDRS"
    dsn_envid: str | None = None  # RFC 3461 ENVID, as received (xtext decoded)
    requiretls: bool = False     # RFC 8689 4.2.1: only verified TLS, to a REQUIRETLS next hop
    tls_required_no: bool = False  # RFC 8689 4.2.2: "TLS-Required: No", policies not enforced


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient in one attempt.

    ``reply`` is the remote server's reply exactly as it came (the lines of a
    multi-line reply joined by ``"\\n"``), or, when no server answered for the
    recipient, our own reply-shaped text that says what went wrong (``"451 4.4.1
    No answer from mx.example.net [192.0.2.1]: connection refused"``).
    ``status`` is the RFC 3463 enhanced code ("2.0.0", "5.1.1"); ``relayed``
    means accepted by a next hop that does not do DSN (RFC 3461 §5.2.2).
    """

    idx: int
    result: Status
    reply: str
    status: str
    remote_mta: str | None = None    # the MX host name that answered, if any


@dataclass(frozen=True, slots=True)
class Delivery:
    """Every recipient's outcome of one attempt, with how the message travelled."""

    outcomes: tuple[Outcome, ...]
    tls: str | None = None           # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384 verified", None: plain
