"""Local submission: what ``pillarbox sendmail`` does with the message it reads.

The steps, in order (each raises :class:`SubmitError`, whose ``status`` is
the sysexits code, and then nothing is queued):

1. **Reading.**  Standard input, line by line: CRLF, a bare LF and a bare CR
   all end a line and become CRLF (RFC 5322 §2.3: CR and LF occur only
   together), a last line without one gets it, and a leading mbox ``From ``
   line goes (as Postfix's sendmail does).  Without ``-i``/``-oi`` a line
   holding only ``.`` ends the input; there is no dot-stuffing here, a line
   ``..`` stays ``..``.
2. **The header** (RFC 5322 §2.2): up to the first empty line, or the first
   line that is neither a field nor a continuation, where the empty line is
   put in.  ``Bcc:`` and ``Resent-Bcc:`` are removed (RFC 5322 §3.6.3: the
   other recipients must not see them).  Missing ``From:``, ``Date:`` and
   ``Message-ID:`` are added (RFC 6409 §8.1-8.3 lets a submission server do
   that), unless ``-G`` says that the message is relayed, not submitted.
3. **The envelope.**  Recipients are the arguments and, with ``-t``, the
   addresses of ``To:``, ``Cc:`` and ``Bcc:`` (of ``Resent-To:``,
   ``Resent-Cc:`` and ``Resent-Bcc:`` if the message has any, RFC 5322
   §3.6.6).  An address without a domain (``root``, cron's ``MAILTO=alice``)
   gets the sender domain (below).  Each is checked as RCPT checks it: an
   unknown local recipient is ``EX_NOUSER`` and nothing is sent; other
   domains are queued for remote delivery (this is local submission, which
   may relay).  8-bit content gives ``BODY=8BITMIME`` (RFC 6152); a non-ASCII
   address in the envelope or in an address field needs ``SMTPUTF8``
   (RFC 6531 §3.4).
4. **Queuing**: ``pillarbox.admin.handover``.

The sender domain, for unqualified addresses and the ``From:`` added: the
server's name (``server.hostname``) if it is a local domain, else the
longest local domain it belongs to (``mx.example.com`` → ``example.com``),
else the server's name.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import BinaryIO

from pillarbox.deliver.recipients import Verdict, resolve
from pillarbox.mime.addresses import Mailbox as HeaderMailbox
from pillarbox.mime.addresses import parse_mailbox_list
from pillarbox.mime.dates import format_date
from pillarbox.mime.generate import address_field, needs_smtputf8
from pillarbox.mime.headers import HeaderField, split_fields, unfold
from pillarbox.protocols.smtp.address import Mailbox, parse_path
from pillarbox.protocols.smtp.params import xtext_encode
from pillarbox.protocols.smtp.reply import RemoteProtocolError
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.blobs import BlobWriter
from pillarbox.store.sqlite.store import SQLiteStore

# sysexits.h (BSD): what callers of sendmail test for.
EX_OK = 0
EX_USAGE = 64          # bad command line
EX_DATAERR = 65        # bad input: the message or an address in it
EX_NOINPUT = 66
EX_NOUSER = 67         # a local recipient that does not exist
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_IOERR = 74
EX_TEMPFAIL = 75       # not queued now; try again later
EX_NOPERM = 77
EX_CONFIG = 78

MAX_HEADER = 1 << 20            # octets of header block read before the body
_CHUNK = 65536
SPOOL_IN_MEMORY = 4 << 20        # octets of a message spooled in memory, the rest on disk

_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_FROM_LINE = re.compile(rb">*From ")


class SubmitError(Exception):
    """Nothing was queued; ``status`` is the exit status (sysexits) to report."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ reading


def read_lines(stream: BinaryIO, *, dot_ends: bool) -> Iterator[bytes]:
    """The lines of ``stream``, each ending in CRLF (step 1 of the module docstring)."""
    first = True
    rest = b""
    while True:
        try:
            chunk = stream.read(_CHUNK)
        except OSError as exc:
            raise SubmitError(f"error reading the message: {exc}", EX_DATAERR) from exc
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for raw in lines:
            for line in _split_cr(raw):
                if first:
                    first = False
                    if _FROM_LINE.match(line):
                        continue
                if dot_ends and line == b".":
                    return
                yield line + b"\r\n"
    if rest:
        for line in _split_cr(rest):
            if first and _FROM_LINE.match(line):
                first = False
                continue
            first = False
            if dot_ends and line == b".":
                return
            yield line + b"\r\n"


def _split_cr(raw: bytes) -> list[bytes]:
    """A line ended by LF, without its CR; a bare CR inside it ends a line too."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.split(b"\r") if b"\r" in raw else [raw]


def split_header(lines: Iterator[bytes]) -> tuple[bytes, bytes | None]:
    """The header block (fields, no empty line) and the first body line, if any.

    The first body line is ``b"\\r\\n"`` when an empty line ended the header;
    another line when it ended the header by not being a field; None at the
    end of input.
    """
    header: list[bytes] = []
    size = 0
    for line in lines:
        if line == b"\r\n":
            return b"".join(header), line
        if line[:1] in (b" ", b"\t") and header:
            pass
        elif not _FIELD_START.match(line):
            return b"".join(header), line
        header.append(line)
        size += len(line)
        if size > MAX_HEADER:
            raise SubmitError(
                f"the message header is longer than {MAX_HEADER} octets", EX_DATAERR
            )
    return b"".join(header), None


# ------------------------------------------------------------------ header


_RECIPIENT_FIELDS = ("to", "cc", "bcc")
_RESENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")
_HIDDEN = frozenset({"bcc", "resent-bcc"})


def header_recipients(fields: Sequence[HeaderField]) -> list[HeaderMailbox]:
    """The recipients ``-t`` takes: To/Cc/Bcc, or their Resent- forms if any (RFC 5322 §3.6.6)."""
    names = {f.name.lower() for f in fields}
    wanted = _RESENT_FIELDS if names & set(_RESENT_FIELDS) else _RECIPIENT_FIELDS
    found: list[HeaderMailbox] = []
    for f in fields:
        if f.name.lower() in wanted:
            found += parse_mailbox_list(unfold(f.value))
    return found


@dataclass(frozen=True, slots=True)
class Originator:
    """Who submits: for the ``From:`` that is added, and the ``Received:`` line."""

    address: str                 # addr-spec for From: ('' for the null sender)
    display: str | None          # -F, $NAME or the GECOS name
    uid: int
    hostname: str                # server.hostname


def fix_header(
    header: bytes, queue_id: str, who: Originator, *, add_missing: bool, now: float | None = None
) -> bytes:
    """The header block without Bcc, with the missing From/Date/Message-ID (RFC 6409 §8)."""
    fields = split_fields(header)
    kept = [f.raw for f in fields if f.name.lower() not in _HIDDEN]
    # Lines that split_fields does not take as fields (junk inside the block) stay as they were.
    out = header if len(kept) == len(fields) else b"".join(kept)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    if not add_missing:
        return out
    names = {f.name.lower() for f in fields}
    added = []
    if "from" not in names and who.address:
        added.append(address_field("From", [(who.display, who.address)]))
    if "date" not in names:
        when = datetime.fromtimestamp(time.time() if now is None else now).astimezone()
        added.append(f"Date: {format_date(when)}\r\n".encode())
    if "message-id" not in names:
        added.append(f"Message-ID: <{queue_id}@{who.hostname}>\r\n".encode())
    return out + b"".join(added)


def display_name(text: str | None) -> str | None:
    """A full name for ``From:`` (``-F``, ``$NAME``, GECOS): one line of valid text.

    Control characters (a CR LF would start a new header field) become spaces;
    undecodable bytes of the environment become U+FFFD.
    """
    if not text:
        return None
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    clean = " ".join("".join(" " if not c.isprintable() else c for c in text).split())
    return clean or None


def received_line(queue_id: str, who: Originator, now: float | None = None) -> bytes:
    """The time stamp line of a local submission (RFC 5321 §4.4), as Postfix writes it."""
    when = datetime.fromtimestamp(time.time() if now is None else now).astimezone()
    return (
        f"Received: by {who.hostname} (Pillarbox sendmail, from userid {who.uid})\r\n"
        f"\tid {queue_id}; {format_date(when)}\r\n"
    ).encode()


# ---------------------------------------------------------------- addresses


def sender_domain(hostname: str, local_domains: Sequence[str]) -> str:
    """The domain of unqualified addresses (module docstring)."""
    host = hostname.lower()
    domains = {d.lower() for d in local_domains}
    if host in domains:
        return host
    parents = [d for d in domains if host.endswith("." + d)]
    return max(parents, key=len) if parents else host


def envelope_address(local: str, domain: str | None, default_domain: str) -> Mailbox:
    """One address, checked as a forward path is (RFC 5321 §4.1.2); raises SubmitError."""
    return _checked(str(Mailbox(local, domain or default_domain)))


def _checked(text: str) -> Mailbox:
    try:
        parsed = parse_path(f"<{text}>", reverse=False, smtputf8=True)
    except RemoteProtocolError as exc:
        raise SubmitError(f"bad address {text!r}: {exc.reply.lines[-1]}", EX_DATAERR) from None
    if parsed is None or not parsed.domain:
        raise SubmitError(f"bad address {text!r}", EX_DATAERR)
    return parsed


def address_text(mailbox: Mailbox) -> str:
    """The envelope form the receiver stores: local part as decoded, domain in A-labels."""
    return f"{mailbox.local_part}@{mailbox.ascii_domain}"


def from_header(found: Sequence[HeaderMailbox], default_domain: str) -> list[Mailbox]:
    """The addresses of header mailboxes (groups flattened), qualified and checked."""
    out = []
    for mb in found:
        if mb.mailbox is None:
            continue   # an empty group member or '<>'
        local = mb.mailbox.decode("utf-8", "replace")
        domain = mb.domain.decode("utf-8", "replace") if mb.domain else None
        out.append(envelope_address(local, domain, default_domain))
    return out


_BARE = re.compile(r"[^\s<>(),;:\"]+")


def from_argument(arg: str, default_domain: str) -> list[Mailbox]:
    """The recipients of one argument: an address, or an address list as in a header.

    A bare word is checked whole (``a@b@c`` is refused, not read as ``a@b``).
    """
    if _BARE.fullmatch(arg):
        return [_checked(arg if "@" in arg else f"{arg}@{default_domain}")]
    mailboxes = parse_mailbox_list(arg.encode("utf-8", "surrogateescape"))
    if not mailboxes or any(not mb.valid for mb in mailboxes):
        raise SubmitError(f"bad address {arg!r}", EX_DATAERR)
    return from_header(mailboxes, default_domain)


def parse_sender(text: str, default_domain: str) -> Mailbox | None:
    """The reverse path of ``-f``: an address (first of a list, as Postfix), '' or '<>': null."""
    text = text.strip()
    if text in ("", "<>"):
        return None
    try:
        found = from_argument(text, default_domain)
    except SubmitError as exc:
        raise SubmitError(f"-f: {exc}", EX_USAGE) from None
    if not found:
        raise SubmitError(f"-f: no address in {text!r}", EX_USAGE)
    return found[0]


def check_recipients(
    store: SQLiteStore, recipients: Sequence[Mailbox], delimiters: str
) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Refuse the message if a recipient in a local domain does not exist (EX_NOUSER).

    Returns the aliases among them that forward to other domains: recipient
    text → (the remote addresses, whether the alias reaches only those).  Mail
    submitted here goes straight into the queue, not through a receiving
    session, so :func:`dsn_recipients` queues the forwards themselves (as
    Postfix's cleanup expands aliases before the queue); with our own sender
    there is nothing to rewrite with SRS, and nothing received to seal.
    """
    directory = store.directory()
    unknown = []
    forwards: dict[str, tuple[tuple[str, ...], bool]] = {}
    for r in recipients:
        if r.is_literal:
            continue
        found = resolve(directory, r.local_part, r.ascii_domain, delimiters)
        if found.verdict is Verdict.UNKNOWN:
            unknown.append(str(r))
        elif found.forwards:
            forwards[address_text(r)] = (found.forwards, found.verdict is Verdict.FORWARD)
    if unknown:
        raise SubmitError(
            f"no such user here: {', '.join(unknown)} (nothing was sent)", EX_NOUSER
        )
    return forwards


def dsn_recipients(
    recipients: Sequence[Mailbox], notify: tuple[str, ...] | None,
    forwards: dict[str, tuple[tuple[str, ...], bool]] | None = None,
) -> tuple[EnvelopeRecipient, ...]:
    """Envelope recipients, duplicates dropped, with the NOTIFY of ``-N`` (RFC 3461 §4.1);
    an alias that forwards adds its remote addresses, each with the alias as its
    ORCPT (RFC 3461 §4.2), and is itself left out when it reaches nothing else."""
    seen: set[str] = set()
    out = []
    notified = ",".join(notify) if notify else None

    def add(address: str, orcpt: str | None) -> None:
        key = address.lower()
        if key not in seen:
            seen.add(key)
            out.append(EnvelopeRecipient(address, notified, orcpt))

    for r in recipients:
        text = address_text(r)
        remote, only = (forwards or {}).get(text, ((), False))
        if not only:
            add(text, None)
        for address in remote:
            add(address, f"rfc822;{xtext_encode(text)}")
    return tuple(out)


def needs_utf8(header: bytes, sender: Mailbox | None, recipients: Sequence[Mailbox]) -> bool:
    """RFC 6531 §3.4: an envelope address or an address field is not ASCII."""
    if sender is not None and not sender.is_ascii:
        return True
    if any(not r.is_ascii for r in recipients):
        return True
    return bool(_EIGHT_BIT.search(header)) and needs_smtputf8(header + b"\r\n")


def has_8bit(data: bytes) -> bool:
    return _EIGHT_BIT.search(data) is not None


# ------------------------------------------------------------------ spooling


def spool_message(
    head: bytes, first_body_line: bytes | None, lines: Iterator[bytes], limit: int
) -> tuple[BinaryIO, bool]:
    """The whole message in a temporary file, and whether it has 8-bit octets.

    The input is read to its end before the blob file exists: a slow pipe
    (``slow-report | sendmail``) then cannot hold a half-written file in the
    spool while a server starts and cleans it (``handover.ensure_blob``).  Up to
    ``SPOOL_IN_MEMORY`` octets stay in memory.  ``limit`` (octets, 0: none)
    is ``smtp.max_message_size``; past it, EX_DATAERR.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    eight_bit = False

    def put(data: bytes) -> None:
        nonlocal size, eight_bit
        size += len(data)
        if limit and size > limit:
            raise SubmitError(
                f"the message is larger than the limit of {limit} octets "
                "(smtp.max_message_size)", EX_DATAERR,
            )
        eight_bit = eight_bit or has_8bit(data)
        spool.write(data)

    try:
        put(head + b"\r\n")
        if first_body_line is not None and first_body_line != b"\r\n":
            put(first_body_line)
        chunk: list[bytes] = []
        pending = 0
        for line in lines:
            chunk.append(line)
            pending += len(line)
            if pending >= _CHUNK:
                put(b"".join(chunk))
                chunk, pending = [], 0
        put(b"".join(chunk))
        spool.seek(0)
    except OSError as exc:
        spool.close()
        raise SubmitError(f"cannot spool the message: {exc}", EX_TEMPFAIL) from exc
    except BaseException:
        spool.close()
        raise
    return spool, eight_bit  # type: ignore[return-value]


def blob_from(store: SQLiteStore, queue_id: str, spool: BinaryIO) -> BlobWriter:
    """The spooled message written into its blob (not yet fsync'd: ``handover.commit`` is)."""
    writer = store.new_blob(queue_id)
    try:
        while data := spool.read(_CHUNK):
            writer.write(data)
    except OSError as exc:
        writer.discard()
        raise SubmitError(f"cannot write the message: {exc}", EX_TEMPFAIL) from exc
    return writer


def local_envelope(envelope: Envelope, uid: int, user: str) -> Envelope:
    """Mark an envelope as a local submission (``queue show``: client and HELO)."""
    return replace(envelope, client_address="local", helo=f"sendmail uid={uid} ({user})")


def this_user() -> tuple[int, str, str | None]:
    """(uid, login name, full name) of the invoking user; raises SubmitError (EX_OSERR)."""
    import pwd

    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise SubmitError(f"no login name found for user ID {uid}", EX_OSERR) from None
    gecos = entry.pw_gecos.split(",", 1)[0].strip()
    full = gecos.replace("&", entry.pw_name.capitalize()) if gecos else None
    return uid, entry.pw_name, full or None
