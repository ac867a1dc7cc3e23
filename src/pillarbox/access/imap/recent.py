"""IMAP4rev1's \\Recent (RFC 3501 §2.3.2): each new message is recent in one session.

The store keeps the first UID nobody has claimed (``claim_recent``); a
session claims exactly the UIDs it announces.  Within a process, the claim
in flight is remembered, so that when a delivery wakes a thousand sessions
of one mailbox one of them writes and the others know without asking.
"""

from __future__ import annotations

from typing import Any

# The highest UID (exclusive) a session of this process has claimed or is
# claiming \Recent up to, per mailbox.
CLAIMED: dict[int, int] = {}


async def claim(store: Any, mailbox_id: int, up_to: int) -> tuple[int, int]:
    """Claim \\Recent for the UIDs below ``up_to``, unless a session of this
    process already did (or is doing it now).

    Only one session can have a message as \\Recent: when a delivery wakes a
    thousand sessions of one mailbox, one claim (one write) is enough, and
    the others get none without asking.  A session that sees more new UIDs
    than the claim in flight covers claims the rest.
    """
    if up_to <= CLAIMED.get(mailbox_id, 0):
        return 0, 0
    CLAIMED[mailbox_id] = up_to
    if len(CLAIMED) > 100000:
        CLAIMED.clear()
        CLAIMED[mailbox_id] = up_to
    return await store.claim_recent(mailbox_id, up_to)  # type: ignore[no-any-return]
