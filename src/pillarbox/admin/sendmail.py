"""``pillarbox sendmail`` and ``mailq``: the Sendmail command line, as Postfix has it.

::

    sendmail [option ...] [--] [recipient ...]     (pillarbox sendmail, pillarbox-sendmail)
    sendmail -bs                                   SMTP on standard input and output
    mailq, sendmail -bp                            the queue

Cron, PHP's ``mail()``, git send-email and shell scripts hand a message to
``/usr/sbin/sendmail``; installed there (a symlink to ``pillarbox-sendmail``,
docs/sendmail.md), Pillarbox takes it.  The options are those of Postfix's
sendmail(1), parsed as its getopt does (clusters such as ``-ti``, values
attached or not, ``-oi`` and ``-odb`` as ``-o`` with a value, the options
ending at the first recipient or ``--``).  Options Postfix ignores are
ignored; an unknown one is a usage error (EX_USAGE, 64).  What the message
goes through is ``pillarbox.admin.submit``; ``-bs`` is
``pillarbox.admin.smtp_stdio``; ``-bp`` is ``pillarbox.admin.mailq``.

**How a message gets into the queue.**  The command works with and without
a running server, and exits 0 only once the message is committed to the
durable queue:

- if the queue manager of a running ``pillarbox serve`` answers on its
  socket (``<data_dir>/run/queue.sock``), the message is handed to it as a
  worker hands what it received (``pillarbox.queue.ipc``): the manager makes
  it durable, commits it and delivers it in its next cycle, and answers once
  committed.  Small messages travel inside the request, so nothing is
  written under ``blobs/`` by the caller;
- otherwise (no server, or a manager that refuses or never answers) the
  entry is committed in the store directly, as any CLI command writes beside
  a server (``Store.enqueue``: blob fsync'd with its directory, then the
  row, state ``active``, due now).  A running manager's poll finds it within
  a second; the next ``serve`` makes every active entry due at start
  (``QueueManager._make_active_due``) and delivers it.

A hand-over lost midway (the manager died) may or may not have committed:
if the entry is not in the store, a copy is committed under a new id, so
the message may arrive twice but is never lost (DESIGN.md: at least once).
A direct commit is checked once more against a server starting at that
moment, whose clean-up of unnamed blob files could take the new one
(``handover.ensure_blob``).  The code is ``pillarbox.admin.handover``; no
store method was added for it.

**Finding the data.**  Callers such as cron cannot pass Pillarbox options,
so the configuration file is, in order: ``-C FILE`` (a directory means its
``pillarbox.toml``), ``pillarbox -c FILE sendmail`` when run as a
subcommand, ``$PILLARBOX_CONFIG`` (file or directory), ``./pillarbox.toml``,
``/etc/pillarbox/pillarbox.toml``; with none, the development defaults
(``./pillarbox-data``).  The data directory must exist: sendmail never
creates an empty one (EX_CONFIG, 78).

Exit status (sysexits.h): 0 queued; 64 usage; 65 bad message or address;
67 unknown local recipient; 71 no login name; 75 cannot be queued now (try
again later); 77 no permission on the data directory; 78 configuration.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from pillarbox.admin.handover import commit
from pillarbox.admin.submit import (
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOPERM,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    Originator,
    SubmitError,
    blob_from,
    check_recipients,
    display_name,
    dsn_recipients,
    fix_header,
    from_argument,
    from_header,
    header_recipients,
    local_envelope,
    needs_utf8,
    parse_sender,
    read_lines,
    received_line,
    sender_domain,
    split_header,
    spool_message,
    this_user,
)
from pillarbox.config import Config, ConfigError, load_config
from pillarbox.mime.headers import split_fields
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.store.base import Envelope
from pillarbox.store.blobs import new_id
from pillarbox.store.sqlite.store import SQLiteStore

__all__ = ["Options", "UsageError", "main", "mailq_main", "parse_options", "run"]

ENV_CONFIG = "PILLARBOX_CONFIG"
SYSTEM_CONFIG = Path("/etc/pillarbox/pillarbox.toml")
LOCAL_CONFIG = Path("pillarbox.toml")
DEV_HOSTNAME = "localhost"      # as ``pillarbox.cli`` without a file

# Postfix's getopt string: options followed by ':' take a value.
_GETOPT = "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"
_WITH_VALUE = frozenset(c for i, c in enumerate(_GETOPT) if _GETOPT[i + 1 : i + 2] == ":")
_FLAGS = frozenset(c for c in _GETOPT if c != ":") - _WITH_VALUE
_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")     # RFC 3461 §4.1, in canonical order
MAX_ENVID = 100                               # RFC 3461 §4.4


class UsageError(Exception):
    """The command line is wrong: EX_USAGE, with this message."""


@dataclass(slots=True)
class Options:
    """The command line, interpreted."""

    mode: str = "deliver"            # deliver (-bm), smtp (-bs), mailq (-bp), newaliases (-bi)
    extract: bool = False            # -t
    dot_ends: bool = True            # cleared by -i / -oi
    sender: str | None = None        # -f / -r, as given
    full_name: str | None = None     # -F
    body: str | None = None          # -B: "7BIT" or "8BITMIME" (RFC 6152)
    notify: tuple[str, ...] | None = None   # -N (RFC 3461 §4.1)
    ret: str | None = None           # -R: "FULL" or "HDRS" (RFC 3461 §4.3)
    envid: str | None = None         # -V (RFC 3461 §4.4)
    verbose: int = 0                 # -v
    gateway: bool = False            # -G: relayed, not submitted: no headers added
    config: Path | None = None       # -C
    recipients: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def parse_options(args: Sequence[str], *, prog: str = "sendmail") -> Options:
    """Interpret a sendmail command line (without the program name); raises UsageError."""
    opts = Options()
    if prog == "mailq":
        opts.mode = "mailq"
    elif prog == "newaliases":
        opts.mode = "newaliases"
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        if arg == "-q":
            raise UsageError("-q: Pillarbox retries the queue on its own schedule; "
                             "to retry now use 'pillarbox queue retry'")
        pos = 1
        while pos < len(arg):
            letter = arg[pos]
            pos += 1
            if letter in _FLAGS:
                _flag(opts, letter)
                continue
            if letter not in _WITH_VALUE:
                raise UsageError(f"unknown option -{letter}")
            if pos < len(arg):
                value = arg[pos:]
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise UsageError(f"option -{letter} needs a value")
            _valued(opts, letter, value)
            break
    opts.recipients = list(args[i:])
    if opts.extract and opts.mode != "deliver":
        raise UsageError("-t can be used only in delivery mode")
    if opts.recipients and opts.mode != "deliver":
        what = {"smtp": "SMTP mode (-bs)", "mailq": "the queue listing (-bp)",
                "newaliases": "alias initialisation"}[opts.mode]
        raise UsageError(f"{what} takes no recipients")
    return opts


def _flag(opts: Options, letter: str) -> None:
    if letter == "t":
        opts.extract = True
    elif letter == "i":
        opts.dot_ends = False
    elif letter == "v":
        opts.verbose += 1
    elif letter == "G":
        opts.gateway = True
    elif letter == "I":
        opts.mode = "newaliases"
    elif letter == "n":
        raise UsageError("-n (no aliasing) is not supported")
    else:                      # -U -c -m -x: ignored, as Postfix does
        opts.ignored.append(f"-{letter}")


def _valued(opts: Options, letter: str, value: str) -> None:
    if letter in "fr":
        opts.sender = value
    elif letter == "F":
        opts.full_name = value
    elif letter == "C":
        opts.config = Path(value)
    elif letter == "B":
        body = value.upper()
        if body not in ("7BIT", "8BITMIME"):
            raise UsageError("-B needs 8BITMIME or 7BIT")
        opts.body = body
    elif letter == "N":
        opts.notify = _parse_notify(value)
    elif letter == "R":
        ret = value.upper()
        if ret not in ("FULL", "HDRS"):
            raise UsageError("-R needs full or hdrs")
        opts.ret = ret
    elif letter == "V":
        if not value or len(value) > MAX_ENVID or not all("\x21" <= c <= "\x7e" for c in value):
            raise UsageError(
                "-V needs an envelope id of 1 to 100 printable ASCII characters (RFC 3461 4.4)"
            )
        opts.envid = value
    elif letter == "b":
        _mode(opts, value)
    elif letter == "o":
        if value == "i":
            opts.dot_ends = False
        else:                  # -oem -oee -odb -odi -om -o7 -o8 -oA…: ignored, as Postfix does
            opts.ignored.append(f"-o{value}")
    elif letter == "X" and value.startswith("V"):
        raise UsageError("-XV (VERP) is not supported")
    else:                      # -A -L -O -X -e -h -p: ignored, as Postfix does
        opts.ignored.append(f"-{letter}{value}")


def _mode(opts: Options, value: str) -> None:
    what = value[:1]
    if what == "m":
        opts.mode = "deliver"
    elif what == "s":
        opts.mode = "smtp"
    elif what == "p":
        opts.mode = "mailq"
    elif what == "i":
        opts.mode = "newaliases"
    elif what in ("h", "H"):
        opts.ignored.append(f"-b{value}")
    elif what in ("d", "l"):
        raise UsageError(f"-b{what}: run the server with 'pillarbox serve'")
    else:
        raise UsageError(f"unsupported: -b{value}")


def _parse_notify(value: str) -> tuple[str, ...]:
    items = [v.strip().upper() for v in value.split(",")]
    if items == ["NEVER"]:
        return ("NEVER",)
    if not items or any(v not in _NOTIFY for v in items):
        raise UsageError("-N needs never, or a list of success, failure, delay")
    return tuple(v for v in _NOTIFY if v in items)


# -------------------------------------------------------------- configuration


def config_file(given: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The configuration file (module docstring: finding the data)."""
    candidates: list[Path] = []
    if given is not None:
        candidates.append(given)
    elif environ.get(ENV_CONFIG):
        candidates.append(Path(environ[ENV_CONFIG]))
    for path in candidates:
        return path / LOCAL_CONFIG.name if path.is_dir() else path
    for path in (LOCAL_CONFIG, SYSTEM_CONFIG):
        if path.is_file():
            return path
    return None


def load(given: Path | None, overrides: Sequence[tuple[str, str]],
         environ: Mapping[str, str]) -> Config:
    path = config_file(given, environ)
    values = dict(overrides)
    if path is None:
        values.setdefault("server.hostname", DEV_HOSTNAME)
    elif not path.is_file():
        raise SubmitError(f"no configuration file {path}", EX_CONFIG)
    try:
        return load_config(path, values)
    except ConfigError as exc:
        raise SubmitError("; ".join(exc.errors), EX_CONFIG) from None


def open_store(config: Config) -> SQLiteStore:
    """The store of an existing data directory; never creates one."""
    data_dir = config.server.data_dir
    if not (data_dir / "pillarbox.db").is_file():
        raise SubmitError(
            f"no Pillarbox data directory at {data_dir}: name the configuration with -C FILE "
            f"or ${ENV_CONFIG} (see docs/sendmail.md)", EX_CONFIG,
        )
    try:
        return SQLiteStore(data_dir).open()
    except PermissionError as exc:
        raise SubmitError(f"cannot open the data directory {data_dir}: {exc.strerror}",
                          EX_NOPERM) from exc
    except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError: a passing state
        raise SubmitError(f"cannot open the data directory {data_dir}: {exc}",
                          EX_TEMPFAIL) from exc


# ------------------------------------------------------------------ commands


def run(
    args: Sequence[str], *, prog: str = "sendmail", config: Path | None = None,
    overrides: Sequence[tuple[str, str]] = (), stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None, stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the sendmail command line ``args``; return its exit status (sysexits)."""
    err = stderr or sys.stderr
    env = os.environ if environ is None else environ
    try:
        opts = parse_options(args, prog=prog)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=err)
        print(f"usage: {prog} [-t] [-i] [-f sender] [-F name] [-bs|-bp] [--] [recipient ...]"
              " (see docs/sendmail.md)", file=err)
        return EX_USAGE
    try:
        if opts.mode == "newaliases":
            print(f"{prog}: aliases are kept in the Pillarbox store ('pillarbox alias'); "
                  "there is nothing to rebuild", file=err)
            return EX_OK
        cfg = load(opts.config or config, overrides, env)
        if opts.mode == "mailq":
            from pillarbox.admin.mailq import print_queue

            store = open_store(cfg)
            try:
                print_queue(store, stdout or sys.stdout.buffer)
            finally:
                store.close()
            return EX_OK
        if opts.mode == "smtp":
            from pillarbox.admin.smtp_stdio import serve_stdio

            return asyncio.run(serve_stdio(
                cfg, open_store(cfg), stdin or sys.stdin.buffer, stdout or sys.stdout.buffer,
            ))
        return asyncio.run(_deliver(opts, cfg, stdin or sys.stdin.buffer, err, env, prog))
    except SubmitError as exc:
        print(f"{prog}: error: {exc}", file=err)
        return exc.status
    except BrokenPipeError:
        return EX_OK if opts.mode == "mailq" else EX_IOERR    # mailq | head
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was sent", file=err)
        return EX_TEMPFAIL
    except (OSError, sqlite3.Error) as exc:
        print(f"{prog}: error: {exc}; nothing was sent, try again later", file=err)
        return EX_TEMPFAIL
    except Exception as exc:  # noqa: BLE001 - a bug: say so with a sysexits status, not 1
        print(f"{prog}: internal error: {exc!r}", file=err)
        return EX_SOFTWARE


async def _deliver(opts: Options, cfg: Config, stdin: BinaryIO, err: TextIO,
                   env: Mapping[str, str], prog: str) -> int:
    from pillarbox.queue.manager import socket_path

    store = open_store(cfg)
    try:
        hostname = cfg.server.hostname
        domain = sender_domain(hostname, [d[0] for d in store.list_domains()])
        try:
            uid, user, gecos = this_user()
        except SubmitError:
            if opts.sender is None:
                raise
            uid, user, gecos = os.getuid(), f"uid {os.getuid()}", None   # -f: no name needed
        sender: Mailbox | None
        if opts.sender is not None:
            sender = parse_sender(opts.sender, domain)
        else:
            sender = Mailbox(user, domain)
        display = display_name(opts.full_name or env.get("NAME") or gecos)
        who = Originator(str(sender) if sender else "", display, uid, hostname)

        queue_id = new_id()
        lines = read_lines(stdin, dot_ends=opts.dot_ends)
        header, first_body_line = split_header(lines)
        fields = split_fields(header)
        recipients: list[Mailbox] = []
        for arg in opts.recipients:
            recipients += from_argument(arg, domain)
        if opts.extract:
            recipients += from_header(header_recipients(fields), domain)
        if not recipients:
            if opts.extract:
                raise SubmitError("no recipient addresses found in the message header",
                                  EX_DATAERR)
            raise SubmitError("no recipients: give them as arguments, or use -t", EX_USAGE)
        forwards = check_recipients(store, recipients, cfg.delivery.recipient_delimiter)

        head = received_line(queue_id, who) + fix_header(
            header, queue_id, who, add_missing=not opts.gateway
        )
        spool, eight_bit = spool_message(head, first_body_line, lines,
                                         cfg.smtp.max_message_size)
        with spool:
            writer = blob_from(store, queue_id, spool)
            body = "8BITMIME" if eight_bit else opts.body
            envelope = local_envelope(Envelope(
                reverse_path=str(sender) if sender else "",
                recipients=dsn_recipients(recipients, opts.notify, forwards),
                client_address="local", helo="",
                body=body,
                smtputf8=needs_utf8(header, sender, recipients) or any(
                    not a.isascii() for remote, _ in forwards.values() for a in remote),
                dsn_ret=opts.ret, dsn_envid=opts.envid,
            ), uid, user)
            queued = await commit(store, queue_id, writer, envelope, socket_path(store))
        if opts.verbose:
            print(f"{prog}: queued as {queued.queue_id} (via the {queued.via}) from "
                  f"<{envelope.reverse_path}> to "
                  f"{', '.join('<' + r.address + '>' for r in envelope.recipients)}", file=err)
        return EX_OK
    finally:
        store.close()


# --------------------------------------------------------------- entry points


def main(argv: Sequence[str] | None = None) -> int:
    """``pillarbox-sendmail`` (and anything symlinked to it): behaves by its name."""
    prog = os.path.basename(sys.argv[0]) or "sendmail"
    args = sys.argv[1:] if argv is None else list(argv)
    return run(args, prog="mailq" if prog.endswith("mailq") else
               "newaliases" if prog == "newaliases" else "sendmail")


def mailq_main(argv: Sequence[str] | None = None) -> int:
    """``pillarbox-mailq``: the queue, as Postfix's mailq shows it."""
    return run(sys.argv[1:] if argv is None else list(argv), prog="mailq")


if __name__ == "__main__":
    raise SystemExit(main())
