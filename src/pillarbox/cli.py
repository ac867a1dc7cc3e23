"""The ``pillarbox`` command: run the server, and administer its data directory.

::

    pillarbox [-c FILE] [-o KEY=VALUE]... serve
    pillarbox config check [FILE]
    pillarbox domain add|list|remove …
    pillarbox user add|list|passwd|remove …
    pillarbox user quota ADDRESS [--storage SIZE] [--messages N]
    pillarbox user send-as ADDRESS [GRANTED] [--remove]
    pillarbox alias add|list|remove …
    pillarbox queue list|show|retry|hold|release|delete|bounce|shape …
    pillarbox dkim keygen|rotate|activate|list|remove …   (outbound DKIM keys)
    pillarbox reports send [--day YYYY-MM-DD] [--dry-run]   (DMARC and TLS-RPT reports)
    pillarbox mailbox list USER
    pillarbox mailbox import ADDRESS PATH [--format F] [--mailbox NAME] [--dry-run]
    pillarbox mailbox export ADDRESS PATH [--format maildir|mbox] [--mailbox NAME]...
    pillarbox dns check DOMAIN [--address IP]... [--nameserver IP[:PORT]]...
    pillarbox sendmail [SENDMAIL OPTION]... [RECIPIENT]...   (docs/sendmail.md)

The configuration is ``-c FILE``, else ``./pillarbox.toml`` if there is one,
else the development defaults (DESIGN.md), so that the CLI run from the folder
where ``pillarbox serve`` runs works on the same data.  ``-o`` overrides a
key as on a command line.  Administration acts through the service functions
of ``pillarbox.admin.commands`` while a server may be running on the same
data: SQLite's locking serialises the writers.

Passwords never come from the command line, where ``ps`` and the shell
history would show them: they are asked for twice on a terminal, or read as
one line from standard input (``printf '%s\\n' "$pw" | pillarbox user add …``).

Exit status: 0 done, 1 refused or failed (``pillarbox: error: …`` on stderr),
2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pillarbox import __version__
from pillarbox.admin import commands
from pillarbox.admin.commands import AdminError, InvalidName
from pillarbox.admin.dns_cli import add_dns_commands
from pillarbox.admin.dkim_cli import add_dkim_commands
from pillarbox.admin.reports_cli import add_reports_commands
from pillarbox.admin.queue_cli import add_queue_commands
from pillarbox.admin.names import unicode_domain
from pillarbox.config import Config, ConfigError, check_config, load_config
from pillarbox.store.base import StoreError
from pillarbox.store.sqlite.store import SQLiteStore

__all__ = ["build_parser", "main", "parse_args", "read_password", "resolve_config"]

PROG = "pillarbox"
DEFAULT_CONFIG = Path("pillarbox.toml")
DEV_HOSTNAME = "localhost"

Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and os.path.basename(sys.argv[0]) in ("sendmail", "mailq", "newaliases"):
        # Installed as /usr/sbin/sendmail (or mailq) by a symlink to this command.
        from pillarbox.admin import sendmail

        return sendmail.main()
    args = parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as e:
        for line in e.errors:
            _error(line)
    except (StoreError, AdminError, InvalidName) as e:
        _error(str(e))
    except BrokenPipeError:
        # Output piped into `head`: stop quietly, without a traceback at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, sqlite3.Error) as e:
        _error(str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; usage errors exit with status 2 (argparse)."""
    args = build_parser().parse_args(argv)
    # Global options may also follow the subcommand; those given there are
    # parsed into their own names (a subparser would replace, not extend, the
    # values given before it) and merged here: -o adds up, the last -c wins.
    args.overrides = [*args.overrides, *getattr(args, "late_overrides", [])]
    args.config = getattr(args, "late_config", None) or args.config
    return args


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


# --------------------------------------------------------------- configuration


def resolve_config(args: argparse.Namespace) -> tuple[Config, bool]:
    """The configuration the options name, and whether it is the development one.

    With no file (no ``-c``, no ``./pillarbox.toml``) the development defaults
    apply: the server is ``localhost`` unless ``-o server.hostname=…`` says
    otherwise, and data is kept in ``./pillarbox-data``.
    """
    path = _config_path(args.config)
    overrides = dict(args.overrides)
    dev_mode = path is None
    if dev_mode:
        overrides.setdefault("server.hostname", DEV_HOSTNAME)
        # Development: passwords in clear on loopback (DESIGN.md, security stance).
        overrides.setdefault("auth.allow_plaintext_on_loopback", "true")
    return load_config(path, overrides), dev_mode


def _config_path(given: Path | None) -> Path | None:
    if given is not None:
        return given
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


@contextlib.contextmanager
def _open_store(args: argparse.Namespace, *, create: bool = False) -> Iterator[SQLiteStore]:
    """The store of the configured data directory, made first if ``create``.

    Only ``domain add``, the first step of a new installation, creates one:
    any other command pointed at the wrong place (a mistyped data_dir, or
    run from another folder) would otherwise make an empty data directory
    there and answer "no accounts" as if that were the truth.
    """
    config, _ = resolve_config(args)
    data_dir = config.server.data_dir
    store = SQLiteStore(data_dir)
    try:
        if data_dir.exists() and not data_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        if not create and not store.db_path.is_file():
            missing = ("it holds no Pillarbox database" if data_dir.is_dir()
                       else "no such directory")
            raise AdminError(
                f"cannot open the data directory {data_dir} (server.data_dir): {missing}; "
                f"name the server's configuration with -c FILE, or start anew with "
                f"'pillarbox domain add'"
            )
        store.open()
    except (OSError, sqlite3.Error) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise AdminError(
            f"cannot open the data directory {data_dir}: {reason}{_owner_hint(data_dir)}"
        ) from e
    try:
        yield store
    finally:
        store.close()


def _owner_hint(data_dir: Path) -> str:
    """Why a directory may refuse us: it belongs to another user (the server's,
    ``server.user``), and the command was run as someone else."""
    import pwd

    try:
        owner = data_dir.stat().st_uid
    except OSError:
        return ""
    if owner == os.geteuid():
        return ""

    def name(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"uid {uid}"

    return f" (it belongs to {name(owner)}; this command runs as {name(os.geteuid())})"


def _override(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


# ------------------------------------------------------------------- passwords


def read_password(prompt: str = "Password") -> str:
    """A password from the terminal (asked twice) or one line of standard input."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        first = getpass.getpass(f"{prompt}: ")
        if not first:
            raise AdminError("empty password")
        if getpass.getpass(f"{prompt} (again): ") != first:
            raise AdminError("the passwords do not match")
        return first
    line = stdin.readline() if stdin is not None else ""
    if not line:
        raise AdminError("no password on standard input (one line expected)")
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise AdminError("empty password")
    return password


# ------------------------------------------------------------------ formatting


def _when(timestamp: float) -> str:
    """UTC, as in the logs, so the two can be read side by side."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Aligned columns; numbers to the right; the last column is not padded."""
    cells = [list(headers)] + [["" if v is None else str(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            if numeric[i]:
                parts.append(cell.rjust(widths[i]))
            elif i == len(row) - 1:
                parts.append(cell)
            else:
                parts.append(cell.ljust(widths[i]))
        print("  ".join(parts).rstrip())


def _path(address: str) -> str:
    return f"<{address}>"


def _report_dangling(store: SQLiteStore) -> None:
    for source, target in commands.dangling_aliases(store):
        _warn(f"alias {source} -> {target}: {target} is no longer an account or an alias")


# -------------------------------------------------------------------- commands


def _cmd_serve(args: argparse.Namespace) -> int:
    config, dev_mode = resolve_config(args)
    from pillarbox.serve import serve  # the server's imports are not needed to administer

    return serve(config, dev_mode=dev_mode)


def _cmd_sendmail(args: argparse.Namespace) -> int:
    from pillarbox.admin import sendmail

    return sendmail.run(args.sendmail_args, config=args.config, overrides=args.overrides)


def _cmd_config_check(args: argparse.Namespace) -> int:
    path = args.file or _config_path(args.config)
    if path is None:
        print(
            f"{PROG} config check: error: no FILE given and no ./{DEFAULT_CONFIG} here",
            file=sys.stderr,
        )
        return 2
    errors = check_config(path)
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        return 1
    print(f"{path}: ok")
    return 0


def _cmd_domain_add(args: argparse.Namespace) -> int:
    with _open_store(args, create=True) as store:
        domain = commands.add_domain(store, args.name)
    print(f"added domain {_with_unicode(domain)}")
    return 0


def _with_unicode(domain: str) -> str:
    shown = unicode_domain(domain)
    return domain if shown == domain else f"{domain} ({shown})"


def _cmd_domain_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        domains = commands.list_domains(store)
    if not domains:
        print("no domains")
        return 0
    _table(
        ("DOMAIN", "ACCOUNTS", "ALIASES"),
        [(_with_unicode(d.name), d.accounts, d.aliases) for d in domains],
    )
    return 0


def _cmd_domain_remove(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        domain = commands.remove_domain(store, args.name, force=args.force)
        print(f"removed domain {domain}")
        _report_dangling(store)
    return 0


def _cmd_user_add(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        address = commands.check_new_user(store, args.address)
        password = read_password(f"Password for {address}")
        commands.add_user(store, address, password)
    print(f"added account {address}")
    return 0


def _cmd_user_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        users = commands.list_users(store, args.domain)
    if not users:
        print("no accounts")
        return 0
    if any(u.storage_limit or u.messages_limit for u in users):
        _table(
            ("ADDRESS", "MESSAGES", "INBOX", "SIZE", "QUOTA"),
            [(u.address, u.messages, u.inbox, u.size, _limits(u.storage_limit, u.messages_limit))
             for u in users],
        )
        return 0
    _table(
        ("ADDRESS", "MESSAGES", "INBOX", "SIZE"),
        [(u.address, u.messages, u.inbox, u.size) for u in users],
    )
    return 0


def _limits(storage: int | None, messages: int | None) -> str:
    parts = [commands.format_size(storage)] if storage else []
    parts += [f"{messages} messages"] if messages else []
    return ", ".join(parts)


def _cmd_user_quota(args: argparse.Namespace) -> int:
    changes: dict[str, int | None] = {}
    if args.storage is not None:
        changes["storage"] = commands.parse_size(args.storage)
    if args.messages is not None:
        changes["messages"] = commands.parse_count(args.messages)
    with _open_store(args) as store:
        if changes:
            address, quota = commands.set_quota(store, args.address, **changes)
            limits = _limits(quota.storage_limit, quota.messages_limit) or "no limit"
            print(f"set the quota of {address}: {limits}")
        else:
            address, quota = commands.get_quota(store, args.address)
            print(address)
    fmt = commands.format_size

    def use(used: int, limit: int | None) -> str:
        if not limit:
            return ""
        return f"{100 * used / limit:.0f} %" + (" (full)" if used >= limit else "")

    _table(
        ("RESOURCE", "USED", "LIMIT", "USE"),
        [
            ("storage", fmt(quota.storage_used),
             fmt(quota.storage_limit) if quota.storage_limit else "none",
             use(quota.storage_used, quota.storage_limit)),
            ("messages", str(quota.messages_used),
             str(quota.messages_limit) if quota.messages_limit else "none",
             use(quota.messages_used, quota.messages_limit)),
        ],
    )
    return 0


def _cmd_user_passwd(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        address = commands.require_user(store, args.address)
        password = read_password(f"New password for {address}")
        commands.set_password(store, address, password)
    print(f"changed the password of {address}")
    return 0


def _cmd_user_remove(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        address = commands.remove_user(store, args.address)
        print(f"removed account {address} and its mailboxes")
        _report_dangling(store)
    return 0


def _cmd_user_send_as(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        if args.granted is None:
            address, granted = commands.list_send_as(store, args.address)
            print(f"{address} may send as: {', '.join(granted) if granted else '(no grants)'}")
            return 0
        address, target = commands.send_as(store, args.address, args.granted,
                                           remove=args.remove)
    if args.remove:
        print(f"{address} may no longer send as {target}")
    else:
        print(f"{address} may now send as {target}")
    return 0


def _cmd_alias_add(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        source, added = commands.add_alias(store, args.source, args.targets)
    print(f"added alias {source} -> {', '.join(added)}")
    return 0


def _cmd_alias_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        aliases = commands.list_aliases(store, args.domain)
    if not aliases:
        print("no aliases")
        return 0
    width = max(len(source) for source, _ in aliases)
    for source, targets in aliases:
        print(f"{source.ljust(width)}  -> {', '.join(targets)}")
    return 0


def _cmd_alias_remove(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        source, target, removed = commands.remove_alias(store, args.source, args.target)
        what = f"{source} -> {target}" if target else source
        print(f"removed alias {what}" + (f" ({removed} targets)" if removed > 1 else ""))
        _report_dangling(store)
    return 0


def _cmd_mailbox_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        boxes = commands.list_mailboxes(store, args.user)
    _table(
        ("NAME", "SPECIAL-USE", "MESSAGES", "SIZE", "UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ"),
        [
            (b.name, b.special_use or "", b.messages, b.size, b.uidvalidity, b.uidnext,
             b.highestmodseq)
            for b in boxes
        ],
    )
    return 0


def _cmd_mailbox_import(args: argparse.Namespace) -> int:
    import asyncio

    from pillarbox.admin import mailbox_io

    def progress(text: str) -> None:
        if sys.stderr.isatty():   # a person watching; not a log or a pipe
            print(text, file=sys.stderr)

    with _open_store(args) as store:
        report = asyncio.run(mailbox_io.import_mail(
            store, args.address, args.path, fmt=args.format, mailbox=args.mailbox,
            layout=args.layout, dry_run=args.dry_run, progress=progress, warn=_warn,
        ))
    _table(
        ("MAILBOX", "FOUND", "IMPORTED", "DUPLICATES", "UNREADABLE", "SIZE", ""),
        [(m.name, m.found, m.imported, m.duplicates, m.skipped, m.size,
          "(new)" if m.created else "") for m in report.mailboxes],
    )
    verb = "would import" if report.dry_run else "imported"
    read = sum(m.found for m in report.mailboxes)
    rate = read / report.seconds if report.seconds > 0 else 0.0
    boxes = len(report.mailboxes)
    print(f"{verb} {report.imported} messages into {boxes} mailbox{'es' if boxes != 1 else ''}, "
          f"skipped {report.duplicates} already there, in {report.seconds:.1f} s "
          f"({rate:.0f} messages read/s)")
    return 0


def _cmd_mailbox_export(args: argparse.Namespace) -> int:
    from pillarbox.admin import mailbox_io

    with _open_store(args) as store:
        report = mailbox_io.export_mail(
            store, args.address, args.path, fmt=args.format, mailboxes=args.mailboxes,
            layout=args.layout, warn=_warn,
        )
    _table(("MAILBOX", "MESSAGES"), report.mailboxes)
    boxes = len(report.mailboxes)
    print(f"exported {report.messages} messages from {boxes} mailbox{'es' if boxes != 1 else ''} "
          f"to {report.path} ({args.format}) in {report.seconds:.1f} s")
    return 0


# ---------------------------------------------------------------------- parser


def _add_global_options(parser: argparse.ArgumentParser, *, late: bool) -> None:
    prefix, default = ("late_", argparse.SUPPRESS) if late else ("", None)
    parser.add_argument(
        "-c", "--config", type=Path, metavar="FILE", dest=prefix + "config",
        default=default,
        help=f"configuration file (default: ./{DEFAULT_CONFIG} if present, "
        "else the development defaults)",
    )
    parser.add_argument(
        "-o", "--set", type=_override, action="append", metavar="KEY=VALUE",
        dest=prefix + "overrides", default=default if late else [],
        help="override a configuration key, e.g. -o server.data_dir=/srv/mail (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pillarbox mail server: run it, and administer its domains, accounts, "
        "aliases, queue and mailboxes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, late=False)
    late = argparse.ArgumentParser(add_help=False)
    _add_global_options(late, late=True)

    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def group(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        p = top.add_parser(name, help=help, description=help)
        return p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def leaf(
        where: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Handler,
        help: str,
    ) -> argparse.ArgumentParser:
        p = where.add_parser(name, help=help, description=help, parents=[late])
        p.set_defaults(handler=handler)
        return p

    leaf(top, "serve", _cmd_serve, "run the mail server")
    # Sendmail's own option syntax (-t -oi -fADDR …): everything after the word is its.
    p = top.add_parser("sendmail", add_help=False, prefix_chars="\0",
                       help="submit a message as sendmail(1) does (docs/sendmail.md)")
    p.add_argument("sendmail_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=_cmd_sendmail)

    g = group("config", "configuration files")
    p = leaf(g, "check", _cmd_config_check, "check a configuration file")
    p.add_argument("file", nargs="?", type=Path, metavar="FILE",
                   help=f"the file (default: -c, else ./{DEFAULT_CONFIG})")

    g = group("domain", "local domains")
    p = leaf(g, "add", _cmd_domain_add, "add a local domain (IDNs in either form)")
    p.add_argument("name", metavar="NAME")
    leaf(g, "list", _cmd_domain_list, "list the local domains")
    p = leaf(g, "remove", _cmd_domain_remove, "remove a local domain")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true",
                   help="also remove its accounts, their mail, and its aliases")

    g = group("user", "accounts (passwords are read from the terminal or standard input)")
    p = leaf(g, "add", _cmd_user_add, "add an account with its default mailboxes")
    p.add_argument("address", metavar="ADDRESS")
    p = leaf(g, "list", _cmd_user_list, "list accounts")
    p.add_argument("domain", nargs="?", metavar="DOMAIN")
    p = leaf(g, "passwd", _cmd_user_passwd, "change an account's password")
    p.add_argument("address", metavar="ADDRESS")
    p = leaf(g, "remove", _cmd_user_remove, "remove an account, its mailboxes and its mail")
    p.add_argument("address", metavar="ADDRESS")
    p = leaf(g, "quota", _cmd_user_quota,
             "show an account's usage and limits, or set them (mail over a limit waits: "
             "452 4.2.2 at RCPT, NO [OVERQUOTA] on IMAP APPEND)")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--storage", metavar="SIZE",
                   help="octets over all mailboxes: 500M, 1G (1024-based), 0 or none: no limit")
    p.add_argument("--messages", metavar="N", help="messages over all mailboxes; 0 or none: "
                   "no limit")

    p = leaf(g, "send-as", _cmd_user_send_as,
             "let an account send (submission: envelope sender and From:) as another "
             "address; without GRANTED, list its grants")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("granted", nargs="?", metavar="GRANTED",
                   help="an address, or @domain for every address of a domain")
    p.add_argument("--remove", action="store_true", help="revoke the grant")

    g = group("alias", "aliases; @domain is the domain's catch-all")
    p = leaf(g, "add", _cmd_alias_add,
             "deliver mail for SOURCE to TARGETs (local, or forwarded to other domains)")
    p.add_argument("source", metavar="SOURCE", help="an address, or @domain for the catch-all")
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="local accounts or aliases, or addresses in other domains "
                        "(forwarded with SRS and an ARC seal)")
    p = leaf(g, "list", _cmd_alias_list, "list aliases")
    p.add_argument("domain", nargs="?", metavar="DOMAIN")
    p = leaf(g, "remove", _cmd_alias_remove, "remove an alias, or one of its targets")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", nargs="?", metavar="TARGET")

    g = group("queue", "messages accepted and not yet delivered")
    add_queue_commands(g, leaf)   # pillarbox.admin.queue_cli

    g = group("dkim", "DKIM signing keys of our domains: make, publish, rotate")
    add_dkim_commands(g, leaf)    # pillarbox.admin.dkim_cli

    g = group("dns", "the DNS records of a mail domain")
    add_dns_commands(g, leaf)     # pillarbox.admin.dns_cli

    g = group("reports", "DMARC aggregate and TLS-RPT reports we send")
    add_reports_commands(g, leaf)  # pillarbox.admin.reports_cli

    g = group("mailbox", "mailboxes of an account")
    p = leaf(g, "list", _cmd_mailbox_list, "list an account's mailboxes")
    p.add_argument("user", metavar="USER")
    p = leaf(g, "import", _cmd_mailbox_import,
             "import a Maildir (Dovecot, Courier) or mbox into an account; "
             "messages already there are skipped, so an interrupted import can be run again")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("path", type=Path, metavar="PATH",
                   help="a Maildir, an mbox file, or a folder of mbox files")
    p.add_argument("--format", choices=("auto", "maildir", "mbox"), default="auto",
                   help="default: a folder with cur/ or new/ is a Maildir, a file an mbox")
    p.add_argument("--mailbox", metavar="NAME",
                   help="where the Maildir's root or the mbox goes (default INBOX); "
                   "the Maildir's folders go below it")
    p.add_argument("--layout", choices=("auto", "maildir++", "fs"), default="auto",
                   help="Maildir folders: .Work.Projects (maildir++) or Work/Projects "
                   "(Dovecot's LAYOUT=fs); default: as found")
    p.add_argument("--dry-run", action="store_true",
                   help="read everything and report what would be imported; change nothing")
    p = leaf(g, "export", _cmd_mailbox_export,
             "export an account's mailboxes as a Dovecot-compatible Maildir or as mboxrd")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("path", type=Path, metavar="PATH",
                   help="a new (or empty) directory; for one --mailbox in mbox, a file")
    p.add_argument("--format", choices=("maildir", "mbox"), default="maildir")
    p.add_argument("--mailbox", metavar="NAME", action="append", dest="mailboxes",
                   help="export only this mailbox (repeatable; default: all)")
    p.add_argument("--layout", choices=("maildir++", "fs"), default="maildir++",
                   help="Maildir folders as .Work.Projects (default) or Work/Projects")

    return parser
