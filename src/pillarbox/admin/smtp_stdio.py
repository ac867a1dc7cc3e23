"""``sendmail -bs``: the SMTP server core on standard input and output.

As Postfix's ``sendmail -bs`` runs its smtpd on the terminal, this runs
Pillarbox's own core (``pillarbox.protocols.smtp.server``) and receiver
policy (``pillarbox.receive.session``) over a pipe, for programs that speak
SMTP to a local command rather than to a port (Symfony Mailer's default
transport, some MUAs).  It is a local submission, so:

- relaying is allowed (sendmail(1): "mail relaying and other access controls
  are disabled"); an unknown local recipient is still ``550 5.1.1``;
- the header is treated as ``sendmail`` treats it (``pillarbox.admin.submit``):
  ``Bcc:`` removed, missing ``From:``, ``Date:`` and ``Message-ID:`` added
  (RFC 6409 §8), 8-bit content marked ``BODY=8BITMIME`` and non-ASCII
  addresses ``SMTPUTF8`` when the client did not say so;
- lines may end in a bare LF, which becomes CRLF before the core sees it.
  The core's strictness about line ends closes SMTP smuggling between
  servers that read them differently; on a local pipe, normalised before
  anything reads them, there is no second reader to disagree with;
- ``250`` after the data means what it means on the network: the message is
  committed to the durable queue (``submit.commit``).

No TLS (STARTTLS is not offered) and no time-outs: the peer is a local
process, which closes its end when done.  The exit status is 0 once the
client has quit or closed the pipe.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import datetime
from typing import BinaryIO

from pillarbox.admin.handover import commit
from pillarbox.admin.submit import (
    MAX_HEADER,
    Originator,
    SubmitError,
    address_text,
    display_name,
    fix_header,
    has_8bit,
    local_envelope,
    sender_domain,
    split_header,
    this_user,
)
from pillarbox.config import Config
from pillarbox.deliver.recipients import Resolution, Verdict
from pillarbox.mime.dates import format_date
from pillarbox.mime.generate import needs_smtputf8
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.params import xtext_encode
from pillarbox.protocols.smtp.reply import Reply
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from pillarbox.receive.session import ReceiverContext, Session, Transaction
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.blobs import BlobWriter
from pillarbox.store.sqlite.store import SQLiteStore

_LONE_LF = re.compile(rb"(?<!\r)\n")


class LineEnds:
    """Bare LF → CRLF across reads (a CR at the end of one read, LF at the next)."""

    def __init__(self) -> None:
        self._cr = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return data
        if self._cr and data[:1] == b"\n":
            out = b"\n" + _LONE_LF.sub(b"\r\n", data[1:])
        else:
            out = _LONE_LF.sub(b"\r\n", data)
        self._cr = data[-1:] == b"\r"
        return out


class LocalSession(Session):
    """A receiver session for a local submission (module docstring)."""

    def __init__(self, ctx: ReceiverContext, core: SMTPServerConnection, *, uid: int,
                 user: str, display: str | None, domain: str) -> None:
        super().__init__(ctx, core, "local")
        # The local user is as trusted as a client of smtp.trusted_networks
        # (Postfix's sendmail -bs: permit_mynetworks for local submissions).
        self.trusted = True
        self.uid = uid
        self.user = user
        self.display = display
        self.domain = domain
        self.eight_bit = False
        self.utf8_header = False
        self._head: bytearray | None = None

    def rcpt_to(self, event: ev.RcptTo) -> Reply:
        path = event.forward_path
        if not path.domain:
            return super().rcpt_to(event)
        resolution = self._resolve(path)
        if resolution.forwards:
            return self._forwarding_alias(event, resolution)
        if resolution.verdict is not Verdict.REMOTE:
            return super().rcpt_to(event)
        tx = self.tx
        assert tx is not None
        params = event.params
        orcpt = f"{params.orcpt[0]};{xtext_encode(params.orcpt[1])}" if params.orcpt else None
        notify = ",".join(params.notify) if params.notify else None
        tx.recipients.append((path, EnvelopeRecipient(address_text(path), notify, orcpt)))
        return Reply(250, "2.1.5", f"Recipient <{path}> ok")

    def _forwarding_alias(self, event: ev.RcptTo, resolution: Resolution) -> Reply:
        """An alias of ours that names addresses of other domains: they are queued
        here, as ``sendmail`` without ``-bs`` queues them (``admin/submit.py``,
        ``dsn_recipients``), each with the alias as its ORCPT (RFC 3461 §4.2); the
        alias itself too if it also reaches accounts of ours.  The sender is a local
        user, ours: there is nothing to rewrite with SRS, nothing received to seal."""
        path = event.forward_path
        if resolution.verdict is Verdict.LOCAL:
            reply = super().rcpt_to(event)      # quota and the alias's own entry
            if reply.code != 250:
                return reply
        tx = self.tx
        assert tx is not None
        params = event.params
        notify = ",".join(params.notify) if params.notify else None
        orcpt = (f"{params.orcpt[0]};{xtext_encode(params.orcpt[1])}" if params.orcpt
                 else f"rfc822;{xtext_encode(address_text(path))}")
        queued = {r.address.lower() for _, r in tx.recipients}
        for address in resolution.forwards:
            if address.lower() not in queued:
                queued.add(address.lower())
                tx.recipients.append((path, EnvelopeRecipient(address, notify, orcpt)))
        return Reply(250, "2.1.5", f"Recipient <{path}> ok")

    # ------------------------------------------------------------- content

    def message_start(self) -> None:
        super().message_start()
        self.eight_bit = self.utf8_header = False
        self._head = bytearray()

    def message_data(self, data: bytes) -> None:
        if not self.eight_bit and has_8bit(data):
            self.eight_bit = True
        if self._head is None:
            super().message_data(data)
            return
        self._head += data
        if self._head.startswith(b"\r\n") or b"\r\n\r\n" in self._head:
            self._flush_head()
        elif len(self._head) > MAX_HEADER:
            head, self._head = bytes(self._head), None
            super().message_data(head)   # too long to be a header: kept as it came

    async def message_end(self, event: ev.MessageEnd) -> Reply:
        if self._head is not None:
            self._flush_head()
        return await super().message_end(event)

    def _flush_head(self) -> None:
        tx = self.tx
        buf, self._head = bytes(self._head or b""), None
        if tx is None:
            return
        end = buf.find(b"\r\n\r\n")
        cut = 0 if buf.startswith(b"\r\n") else (end + 2 if end >= 0 else len(buf))
        lines = iter(buf[:cut].splitlines(keepends=True))
        try:
            header, first = split_header(lines)
        except SubmitError:
            super().message_data(buf)
            return
        rest = (first or b"") + b"".join(lines) + buf[cut:]
        own = f"{self.user}@{self.domain}"
        sender = str(tx.reverse_path) if tx.reverse_path else own
        # The user's name goes only with the user's own address, not with any MAIL FROM.
        who = Originator(sender, self.display if sender == own else None, self.uid,
                         self.ctx.hostname)
        fixed = fix_header(header, tx.queue_id, who, add_missing=True)
        self.utf8_header = has_8bit(fixed) and needs_smtputf8(fixed + b"\r\n")
        super().message_data(fixed + (b"" if rest.startswith(b"\r\n") else b"\r\n") + rest)

    def reset(self) -> None:
        self._head = None
        super().reset()

    def _received_header(self, tx: Transaction) -> bytes:
        """RFC 5321 §4.4, naming the local user rather than a client address."""
        core = self.core
        if getattr(tx.params, "smtputf8", False):
            proto = "UTF8SMTP"
        else:
            proto = "ESMTP" if core.esmtp else "SMTP"
        helo = "".join(c if c.isprintable() and c not in "()\\;" else "?"
                       for c in (core.helo_name or "unknown"))[:255]
        return (
            f"Received: from {helo} (uid {self.uid})\r\n"
            f"\tby {self.ctx.hostname} (Pillarbox sendmail -bs) with {proto} id {tx.queue_id};\r\n"
            f"\t{format_date(datetime.now().astimezone())}\r\n"
        ).encode("utf-8")


async def serve_stdio(config: Config, store: SQLiteStore, stdin: BinaryIO,
                      stdout: BinaryIO) -> int:
    """One SMTP session between ``stdin`` and ``stdout``; the store is closed at the end."""
    from pillarbox.queue.manager import socket_path

    try:
        uid, user, gecos = this_user()
        display = display_name(os.environ.get("NAME") or gecos)
        domain = sender_domain(config.server.hostname, [d[0] for d in store.list_domains()])
        socket = socket_path(store)
        session: LocalSession | None = None

        async def enqueue(blob_id: str, writer: BlobWriter, envelope: Envelope) -> None:
            envelope = local_envelope(envelope, uid, user)
            if session is not None and session.eight_bit and envelope.body is None:
                envelope = replace(envelope, body="8BITMIME")
            if session is not None and session.utf8_header:
                envelope = replace(envelope, smtputf8=True)
            await commit(store, blob_id, writer, envelope, socket)

        ctx = ReceiverContext(
            store=store, hostname=config.server.hostname,
            recipient_delimiter=config.delivery.recipient_delimiter,
            min_free_space=config.queue.min_free_space, enqueue=enqueue,
        )
        smtp = config.smtp
        core = SMTPServerConnection(config.server.hostname, Limits(
            max_message_size=smtp.max_message_size, max_recipients=smtp.max_recipients,
            max_command_line=smtp.max_command_line, max_text_line=smtp.max_text_line,
            max_errors=smtp.max_errors, max_received_headers=smtp.max_received_headers,
        ))
        session = LocalSession(ctx, core, uid=uid, user=user, display=display, domain=domain)
        await _converse(core, session, stdin, stdout)
        return 0
    finally:
        store.close()


async def _converse(core: SMTPServerConnection, session: LocalSession, stdin: BinaryIO,
                    stdout: BinaryIO) -> None:
    """Feed the core, answer its events, write its replies (as ``net/smtp.py`` does)."""
    line_ends = LineEnds()

    def flush() -> None:
        out = core.data_to_send()
        if out:
            stdout.write(out)
            stdout.flush()

    core.greeting()
    flush()
    try:
        while True:
            event = core.next_event()
            if session.answer_now(event):
                continue
            kind = type(event)
            if event is ev.NEED_DATA or event is ev.PAUSED:
                flush()
                data = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
                if not data:
                    break                     # the client closed the pipe
                core.receive_data(line_ends.feed(data))
            elif kind is ev.MessageEnd:
                core.respond(await session.message_end(event))  # type: ignore[arg-type]
            elif kind is ev.Closing:
                flush()
                break
    except BrokenPipeError:
        pass
    finally:
        session.discard()
