"""The markers the protocol cores return from ``next_event()`` besides events.

Every core (SMTP server and client, IMAP, POP3) answers ``next_event()``
with an event, or with ``NEED_DATA`` (nothing complete in the buffer: feed
more bytes) or ``PAUSED`` (an event waits for the session's answer, or TLS is
being set up).  Each core names its own markers; this is their one type.
"""

from __future__ import annotations

__all__ = ["Sentinel"]


class Sentinel:
    """A named marker, compared by identity."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name
