"""mbox files, read (mboxrd and mboxo) and written (mboxrd).

An mbox (RFC 4155) is messages one after the other, each starting with a
``From <sender> <asctime date>`` line and followed by a blank line.  A body
line that would start with ``From `` is quoted with ``>``: mboxrd quotes every
``>*From `` line (and unquotes by taking one ``>`` off each), which makes the
quoting reversible; mboxo quoted only ``From ``, and reads the same way except
that a ``>From `` it never quoted loses its ``>``.  That is the one
difference, so one reader serves both.

A line starting ``From `` begins a message when it follows a blank line (or
starts the file), or when it carries an asctime date: so an unquoted ``From``
in the body of a sloppy mboxo file stays text.  The ``From`` line's date is
the internal date, in UTC as RFC 4155 says (an explicit ``+hhmm`` is honoured);
without one, the ``Date:`` field; failing that, now.

Flags travel in header fields that belong to the mailbox, not the message.
They are turned into flags and left out of the stored message, as Dovecot
does for its own mbox files, and written back from the flags on export:

- ``Status:`` ``R`` \\Seen (``O``, old, means nothing in IMAP);
- ``X-Status:`` ``A`` \\Answered, ``F`` \\Flagged, ``T`` \\Draft, ``D`` \\Deleted
  (mutt, UW-IMAP, Dovecot);
- ``X-Keywords:`` keywords, separated by spaces or commas (Dovecot, mutt);
- ``X-Mozilla-Status:`` Thunderbird's hex bits: 0x1 read, 0x2 replied,
  0x4 marked (\\Flagged), 0x8 deleted, 0x1000 forwarded (``$Forwarded``);
  where present it wins over ``Status:``/``X-Status:``;
- ``X-Mozilla-Keys:`` Thunderbird's tags; ``X-Mozilla-Status2:``, ``X-UID:``,
  ``X-IMAP:``, ``X-IMAPbase:`` carry nothing Pillarbox keeps and are dropped.

Messages are stored with CRLF line ends (``maildir.lf_to_crlf``), written back
with LF.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO

from pillarbox.admin.maildir import crlf_to_lf, lf_to_crlf
from pillarbox.mime.dates import parse_date

__all__ = ["MboxError", "MboxMessage", "MboxWriter", "from_line", "read_mbox", "split_flags"]

Warn = Callable[[str], None]

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_ASCTIME = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb"\s+(\d{1,2})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?"
    rb"(?:\s+([A-Z]{3,5}|[+-]\d{4}))?\s+(\d{4})(?:\s+([+-]\d{4}))?"
)
_QUOTED = re.compile(rb">+From ")
_NEEDS_QUOTE = re.compile(rb"(?m)^(>*From )")
_STATE_FIELDS = {
    b"status", b"x-status", b"x-keywords", b"x-mozilla-status", b"x-mozilla-status2",
    b"x-mozilla-keys", b"x-uid", b"x-imap", b"x-imapbase",
}
_MOZILLA_BITS = (
    (0x0001, "\\Seen"), (0x0002, "\\Answered"), (0x0004, "\\Flagged"),
    (0x0008, "\\Deleted"), (0x1000, "$Forwarded"),
)
_X_STATUS = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})


class MboxError(Exception):
    """The file is not an mbox Pillarbox can read (the user's to fix)."""


@dataclass(frozen=True, slots=True)
class MboxMessage:
    data: bytes                  # CRLF, without the mailbox-state fields
    flags: frozenset[str]
    internal_date: float
    line: int                    # of its From line, for messages about it


# -------------------------------------------------------------- dates


def from_line_date(line: bytes) -> float | None:
    """The asctime date of a ``From `` line as seconds since the epoch, or None."""
    m = _ASCTIME.search(line)
    if m is None:
        return None
    month, day, hour, minute, second, zone1, year, zone2 = m.groups()
    try:
        when = datetime(int(year), _MONTHS[month.decode()], int(day), int(hour), int(minute),
                        int(second or 0), tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        return None
    stamp = int(when.timestamp())
    for zone in (zone1, zone2):
        if zone and zone[:1] in b"+-":
            sign = 1 if zone[:1] == b"+" else -1
            stamp -= sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
    return float(stamp)


def from_line(sender: str, internal_date: float) -> bytes:
    """``From sender Tue Dec  1 20:17:50 2026`` (asctime, UTC: RFC 4155)."""
    when = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(internal_date))
    return f"From {sender or 'MAILER-DAEMON'} {when}\n".encode()


# -------------------------------------------------------------- flags


def _header_end(data: bytes) -> int:
    """Offset just past the header section's last line (before the blank line)."""
    if data.startswith(b"\n"):
        return 0
    end = data.find(b"\n\n")
    return len(data) if end < 0 else end + 1


def split_flags(message: bytes) -> tuple[bytes, frozenset[str]]:
    """Take the mailbox-state fields out of an LF message's header; return it and its flags."""
    end = _header_end(message)
    header, body = message[:end], message[end:]
    kept: list[bytes] = []
    fields: dict[bytes, bytes] = {}
    current: bytes | None = None
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and current is not None:
            if current in _STATE_FIELDS:
                fields[current] += line
                continue
            kept.append(line)
            continue
        name = line.partition(b":")[0].strip().lower()
        current = name
        if name in _STATE_FIELDS:
            fields[name] = fields.get(name, b"") + b" " + line.partition(b":")[2]
        else:
            kept.append(line)
    if not fields:
        return message, frozenset()
    flags: set[str] = set()

    def text(name: bytes) -> str:
        return fields.get(name, b"").decode("ascii", "replace")

    mozilla = text(b"x-mozilla-status").strip()
    if mozilla and re.fullmatch(r"[0-9A-Fa-f]{1,8}", mozilla):
        bits = int(mozilla, 16)
        flags.update(flag for bit, flag in _MOZILLA_BITS if bits & bit)
    else:
        if "R" in text(b"status"):
            flags.add("\\Seen")
        flags.update(flag for letter, flag in _X_STATUS.items() if letter in text(b"x-status"))
    for name in (b"x-keywords", b"x-mozilla-keys"):
        flags.update(k for k in re.split(r"[\s,]+", text(name)) if k and not k.startswith("\\"))
    return b"".join(kept) + body, frozenset(flags)


def state_fields(flags: Iterable[str]) -> bytes:
    """``Status:``, ``X-Status:`` and ``X-Keywords:`` for these flags (LF)."""
    flags = set(flags)
    out = b"Status: RO\n" if "\\Seen" in flags else b"Status: O\n"
    letters = "".join(letter for letter, flag in _X_STATUS.items() if flag in flags)
    if letters:
        out += f"X-Status: {letters}\n".encode()
    keywords = sorted(flags - SYSTEM_FLAGS)
    if keywords:
        out += f"X-Keywords: {' '.join(keywords)}\n".encode()
    return out


# ------------------------------------------------------------- reading


def _is_blank(line: bytes) -> bool:
    return line in (b"\n", b"\r\n")


def read_mbox(
    f: BinaryIO, name: str = "mbox", warn: Warn = lambda _: None
) -> Iterator[MboxMessage]:
    """The messages of an mbox file, one at a time (memory: one message)."""
    lines: list[bytes] = []
    start_line = 0
    from_date: float | None = None
    previous_blank = True
    number = 0
    started = False
    for raw in f:
        number += 1
        if raw.startswith(b"From ") and (previous_blank or from_line_date(raw) is not None):
            if started:
                yield _message(lines, from_date, start_line, name, warn)
            elif lines:
                raise MboxError(f"{name} is not an mbox file: line 1 does not start with 'From '")
            started = True
            lines = []
            start_line = number
            from_date = from_line_date(raw)
            previous_blank = False
            continue
        if not started and not _is_blank(raw):
            raise MboxError(
                f"{name} is not an mbox file: line {number} does not start with 'From '")
        if started:
            lines.append(raw)
        previous_blank = _is_blank(raw)
    if started:
        yield _message(lines, from_date, start_line, name, warn)


def _message(lines: list[bytes], date: float | None, line: int, name: str,
             warn: Warn) -> MboxMessage:
    if lines and _is_blank(lines[-1]):
        lines.pop()              # the blank line before the next From line
    if not lines:
        warn(f"{name}:{line}: an empty message")
    text = b"".join(raw[1:] if raw[:1] == b">" and _QUOTED.match(raw) else raw for raw in lines)
    text, flags = split_flags(crlf_to_lf(text)) if b"\r\n" in text else split_flags(text)
    if date is None:
        m = re.search(rb"(?im)^Date:[ \t]*(.*(?:\n[ \t].*)*)", text[:_header_end(text)])
        when = parse_date(m.group(1)) if m else None
        if when is None:
            warn(f"{name}:{line}: no date in the From line nor a Date: field; dated now")
        date = float(int(when.timestamp())) if when else float(int(time.time()))
    return MboxMessage(lf_to_crlf(text), flags, date, line)


# ------------------------------------------------------------- writing


def _sender(data: bytes) -> str:
    m = re.search(rb"(?im)^Return-Path:[ \t]*<?([^<>\s]*)>?", data[:_header_end(data)])
    sender = m.group(1).decode("ascii", "replace") if m else ""
    return sender or "MAILER-DAEMON"


class MboxWriter:
    """Appends messages to an mboxrd file opened for binary writing."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.count = 0

    def add(self, data: bytes, flags: Iterable[str], internal_date: float) -> None:
        text = crlf_to_lf(data)
        end = _header_end(text)
        header, body = text[:end], text[end:]
        if header and not header.endswith(b"\n"):
            header += b"\n"
        text = header + state_fields(flags) + body
        if not text.endswith(b"\n"):
            text += b"\n"
        self.f.write(from_line(_sender(text), internal_date))
        self.f.write(_NEEDS_QUOTE.sub(rb">\1", text))
        self.f.write(b"\n")
        self.count += 1
