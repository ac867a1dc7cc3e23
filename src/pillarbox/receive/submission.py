"""The header of a submitted message: ``From:`` checked, ``Date:`` and ``Message-ID:`` added.

RFC 6409 §8 lists what a submission server may fix; Pillarbox adds a missing
``Date:`` (§8.2) and ``Message-ID:`` (§8.3), on the submission ports only
(a relay on port 25 must not change what it passes on, RFC 5321 §3.7.4).
``From:`` is not made up: without one the message goes as it is.

The header section is held until its blank line (at most ``MAX_HEADER``
octets; a longer one is passed on untouched and refused, since its
``From:`` cannot be checked), then written to the spool in one piece; the
body streams past as before.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pillarbox.mime.addresses import Mailbox as HeaderMailbox
from pillarbox.mime.addresses import parse_mailbox_list
from pillarbox.mime.dates import format_date
from pillarbox.mime.headers import Headers, split_fields, unfold
from pillarbox.protocols.smtp.address import Mailbox

__all__ = ["MAX_HEADER", "HeaderGate"]

MAX_HEADER = 1 << 20


class HeaderGate:
    """Holds the header section of one message; ``feed()`` returns what may be spooled."""

    def __init__(self, *, add_missing: bool, message_id: str,
                 strip: Callable[[bytes], bytes] | None = None) -> None:
        self.add_missing = add_missing
        self.strip = strip                  # drops fields from the header block
        self.message_id = message_id        # "<id@host>"
        self._block = b""                   # the header block as spooled
        self._senders: list[Mailbox | str] | None = None
        self.too_long = False
        self.added: list[str] = []
        self._head: bytearray | None = bytearray()

    @property
    def senders(self) -> list[Mailbox | str]:
        """The From: addresses (str for an unparsable one), parsed when first asked
        for: only signing and the submission sender check want them."""
        if self._senders is None:
            self._senders = [_envelope_form(mailbox)
                             for field in Headers(split_fields(self._block)).get_all("from")
                             for mailbox in parse_mailbox_list(unfold(field.value))]
        return self._senders

    @property
    def holding(self) -> bool:
        return self._head is not None

    def feed(self, data: bytes) -> bytes:
        head = self._head
        if head is None:
            return data
        head += data
        if head.startswith(b"\r\n"):
            return self._release(0)
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            return self._release(end + 2)
        if len(head) > MAX_HEADER:
            self.too_long = True
            self._head = None
            return bytes(head)
        return b""

    def finish(self) -> bytes:
        """The end of the message: what is still held (a message without a body)."""
        head = self._head
        if head is None:
            return b""
        cut = len(head)
        if not head.endswith(b"\r\n"):
            cut = head.rfind(b"\r\n") + 2 if b"\r\n" in head else 0
        return self._release(cut, blank=False)

    def _release(self, cut: int, *, blank: bool = True) -> bytes:
        """Fix the header block ``head[:cut]`` and return it with what follows."""
        head = bytes(self._head or b"")
        self._head = None
        block, rest = head[:cut], head[cut:]
        if self.strip is not None:
            stripped = self.strip(block)
            if stripped != block:
                block = stripped
                head = block + rest
        self._block = block
        if not self.add_missing:
            return head      # (the fields are split only if someone asks for senders)
        headers = Headers(split_fields(block))
        extra = []
        if "date" not in headers:
            extra.append(f"Date: {format_date(datetime.now().astimezone())}\r\n")
            self.added.append("Date")
        if "message-id" not in headers:
            extra.append(f"Message-ID: {self.message_id}\r\n")
            self.added.append("Message-ID")
        if not extra:
            return head
        if block and not block.endswith(b"\r\n"):
            block += b"\r\n"
        fixed = block + "".join(extra).encode("ascii")
        if not blank and not rest:
            return fixed
        return fixed + rest


def _envelope_form(mailbox: HeaderMailbox) -> Mailbox | str:
    """A ``From:`` mailbox as an envelope mailbox, or its text if it is not a usable address."""
    text = mailbox.addr_spec
    if not mailbox.valid or mailbox.mailbox is None or mailbox.domain is None:
        return text or "(no address)"
    try:
        local = mailbox.mailbox.decode("utf-8")
        domain = mailbox.domain.decode("utf-8").strip()
    except UnicodeDecodeError:
        return text
    if not local or not domain or domain.startswith("["):
        return text
    return Mailbox(local, domain)
