"""``pillarbox queue …``: the command-line side of ``pillarbox.admin.queue``.

::

    pillarbox queue list [--state S] [--domain D] [--sender ADDR]
    pillarbox queue show ID
    pillarbox queue retry ID... | --domain D | --all
    pillarbox queue hold ID... | --domain D | --all
    pillarbox queue release ID... | --domain D | --all
    pillarbox queue delete ID...
    pillarbox queue bounce ID... | --domain D | --all
    pillarbox queue shape [--state S] [--top N]

Registered into the parser by ``pillarbox.cli`` (``add_queue_commands``),
whose helpers (opening the store, tables, times) it uses.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pillarbox.admin import commands
from pillarbox.admin import queue as service
from pillarbox.admin.commands import AdminError
from pillarbox.store.base import QueueEntry, StoreError

__all__ = ["add_queue_commands"]

Leaf = Callable[..., argparse.ArgumentParser]


def _cli() -> Any:
    from pillarbox import cli   # imported late: cli imports this module

    return cli


def _selection(args: argparse.Namespace) -> service.Selection:
    return service.Selection(tuple(args.ids), args.domain, args.all)


def _cmd_list(args: argparse.Namespace) -> int:
    cli = _cli()
    with cli._open_store(args) as store:
        entries = service.list_entries(store, state=args.state, domain=args.domain,
                                       sender=args.sender)
    if not entries:
        filtered = args.state or args.domain or args.sender is not None
        print("no entries match" if filtered else "queue is empty")
        return 0
    cli._table(
        ("ID", "ARRIVED", "SIZE", "STATE", "SENDER", "RCPTS", "LAST REPLY"),
        [
            (e.id, cli._when(e.arrived), e.size, e.state, cli._path(e.reverse_path),
             len(e.recipients), e.last_reply or "")
            for e in entries
        ],
    )
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.state] = counts.get(e.state, 0) + 1
    per_state = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    print(f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}: {per_state}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    cli = _cli()
    with cli._open_store(args) as store:
        entry = commands.queue_show(store, args.id)
        blob, head = commands.message_head(store, entry.id)
    _show_entry(entry)
    print(f"blob:           {blob}")
    if head is None:
        print("  (the blob file is missing)")
    else:
        print("headers:")
        for line in head:
            print(f"  {line}")
    return 0


def _show_entry(e: QueueEntry) -> None:
    cli = _cli()

    def field(name: str, value: object) -> None:
        print(f"{name + ':':<16}{value}")

    field("queue id", e.id)
    field("state", e.state)
    field("arrived", cli._when(e.arrived))
    field("attempts", e.attempts)
    field("next attempt", cli._when(e.next_attempt) if e.state != "hold" else "- (held)")
    field("last reply", e.last_reply or "-")
    field("size", f"{e.size} bytes")
    field("client", f"{e.client_address} (HELO {e.helo})")
    field("reverse path", cli._path(e.reverse_path))
    field("body", e.body or "-")
    field("smtputf8", "yes" if e.smtputf8 else "no")
    field("dsn", f"RET={e.dsn_ret or '-'} ENVID={e.dsn_envid or '-'}")
    print(f"recipients:     {len(e.recipients)}")
    for r in e.recipients:
        dsn = [f"NOTIFY={r.notify}" if r.notify else "", f"ORCPT={r.orcpt}" if r.orcpt else ""]
        line = f"  {r.idx}  {cli._path(r.address)}  {r.status}  {' '.join(x for x in dsn if x)}"
        print(line.rstrip())
        facts = [f"attempts {r.attempts}"]
        if r.last_attempt:
            facts.append(f"last try {cli._when(r.last_attempt)}")
        if r.status == "pending" and e.state != "hold":
            facts.append(f"next try {cli._when(e.next_attempt)}")
        if r.remote_mta:
            facts.append(f"by {r.remote_mta}")
        if r.warned:
            facts.append("delay reported")
        print(f"       {', '.join(facts)}")
        if r.last_reply:
            for reply_line in r.last_reply.splitlines():
                print(f"       {reply_line}")


def _acted(verb: str, ids: list[str], none: str) -> int:
    for ident in ids:
        print(f"{verb} {ident}")
    if not ids:
        print(none)
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    with _cli()._open_store(args) as store:
        ids = service.retry(store, _selection(args))
    return _acted("due now:", ids, "nothing to retry (held entries wait for release)")


def _cmd_hold(args: argparse.Namespace) -> int:
    with _cli()._open_store(args) as store:
        ids = service.hold(store, _selection(args))
    return _acted("held", ids, "nothing to hold")


def _cmd_release(args: argparse.Namespace) -> int:
    with _cli()._open_store(args) as store:
        ids = service.release(store, _selection(args))
    return _acted("released", ids, "nothing held")


def _cmd_delete(args: argparse.Namespace) -> int:
    cli = _cli()
    status = 0
    with cli._open_store(args) as store:
        for ident in args.ids:
            try:
                deleted = commands.queue_delete(store, ident)
            except (StoreError, AdminError) as e:
                cli._error(str(e))
                status = 1
            else:
                print(f"deleted {deleted}")
    return status


def _cmd_bounce(args: argparse.Namespace) -> int:
    cli = _cli()
    config, _ = cli.resolve_config(args)
    with cli._open_store(args) as store:
        done, reports = service.bounce(
            store, _selection(args), hostname=config.server.hostname,
            postmaster=config.queue.postmaster,
            delimiters=config.delivery.recipient_delimiter,
        )
    for ident in done:
        print(f"bounced {ident}")
    if not done:
        print("nothing to bounce")
    print(f"{len(reports)} failure report{'' if len(reports) == 1 else 's'} queued"
          + (f": {', '.join(reports)}" if reports else ""))
    return 0


def _cmd_shape(args: argparse.Namespace) -> int:
    cli = _cli()
    with cli._open_store(args) as store:
        result = service.shape(store, state=args.state)
    heads = [str(b) for b in result.buckets] + [f"{result.buckets[-1]}+"]
    print("age in minutes; one count per message and destination domain")
    cli._table(("DOMAIN", "T", *heads),
               [(d, total, *counts) for d, total, counts in result.table(args.top)])
    return 0


def add_queue_commands(group: argparse._SubParsersAction[argparse.ArgumentParser],
                       leaf: Leaf) -> None:
    """The ``queue`` actions, into the group ``pillarbox.cli`` made."""

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("ids", nargs="*", metavar="ID")
        p.add_argument("--domain", metavar="DOMAIN",
                       help="the entries with a recipient at DOMAIN still to deliver")
        p.add_argument("--all", action="store_true", help="every entry")

    p = leaf(group, "list", _cmd_list, "list queue entries")
    p.add_argument("--state", choices=service.STATES)
    p.add_argument("--domain", metavar="DOMAIN",
                   help="only entries with a recipient at DOMAIN still to deliver")
    p.add_argument("--sender", metavar="ADDRESS",
                   help="only entries from this reverse path ('<>': reports)")
    p = leaf(group, "show", _cmd_show,
             "show a queue entry, each recipient's state, attempts, last reply and next "
             "try, and its message's headers")
    p.add_argument("id", metavar="ID")
    p = leaf(group, "retry", _cmd_retry, "try entries again now (held ones stay held)")
    selection(p)
    p = leaf(group, "hold", _cmd_hold, "keep entries from delivery until released")
    selection(p)
    p = leaf(group, "release", _cmd_release, "let held entries go, due now")
    selection(p)
    p = leaf(group, "delete", _cmd_delete,
             "delete queue entries; their senders are not notified")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = leaf(group, "bounce", _cmd_bounce,
             "fail entries now: each sender gets a failure report (as NOTIFY allows)")
    selection(p)
    p = leaf(group, "shape", _cmd_shape,
             "count messages by destination domain and age, like Postfix's qshape")
    p.add_argument("--state", choices=service.STATES)
    p.add_argument("--top", type=int, metavar="N", help="only the N largest domains")
