"""What a policy check decides (DESIGN.md, layer 5).

A check is judged by its :class:`Verdict`: accept, reject permanently, defer
temporarily, tag (accept, with a note for ``Authentication-Results:``), or
quarantine (accept into the recipient's Junk mailbox).  Reject and defer
carry the SMTP reply the receiver sends; every verdict carries the name of
the check that gave it, for the log and for the operator reading it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pillarbox.protocols.smtp.reply import Reply

__all__ = ["Action", "Verdict"]


class Action(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"            # permanent: 5xx
    DEFER = "defer"              # transient: 4xx
    TAG = "tag"                  # accept, noted
    QUARANTINE = "quarantine"    # accept into Junk


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's decision; ``reply`` is set for REJECT and DEFER."""

    check: str
    action: Action
    reply: Reply | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action in (Action.REJECT, Action.DEFER) and self.reply is None:
            raise ValueError(f"{self.check}: a {self.action.value} verdict needs its SMTP reply")
        if self.reply is not None:
            if self.action is Action.REJECT and not self.reply.is_permanent:
                raise ValueError(f"{self.check}: reject with a non-5xx reply {self.reply}")
            if self.action is Action.DEFER and not self.reply.is_transient:
                raise ValueError(f"{self.check}: defer with a non-4xx reply {self.reply}")

    @classmethod
    def accept(cls, check: str, reason: str = "") -> Verdict:
        return cls(check, Action.ACCEPT, None, reason)

    @classmethod
    def reject(cls, check: str, status: str, text: str) -> Verdict:
        return cls(check, Action.REJECT, Reply(550, status, text), text)

    @classmethod
    def defer(cls, check: str, status: str, text: str) -> Verdict:
        return cls(check, Action.DEFER, Reply(451, status, text), text)

    @property
    def is_final(self) -> bool:
        """A reject or a defer ends the chain; the others let it go on."""
        return self.action in (Action.REJECT, Action.DEFER)

    def __str__(self) -> str:
        tail = f" ({self.reply})" if self.reply else (f" ({self.reason})" if self.reason else "")
        return f"{self.check}: {self.action.value}{tail}"
