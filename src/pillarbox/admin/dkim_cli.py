"""``pillarbox dkim …``: the command-line side of ``pillarbox.admin.dkim``.

::

    pillarbox dkim keygen DOMAIN [--selector S] [--algorithm rsa|ed25519|both] [--activate]
    pillarbox dkim rotate DOMAIN [--selector S] [--algorithm rsa|ed25519|both]
    pillarbox dkim activate DOMAIN SELECTOR
    pillarbox dkim list [DOMAIN] [--records]
    pillarbox dkim remove DOMAIN SELECTOR

Registered into the parser by ``pillarbox.cli`` (``add_dkim_commands``).  The
commands work beside a running server: its workers see key changes within
``pillarbox.receive.signing.CHECK_EVERY`` seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from pillarbox.admin import dkim as service
from pillarbox.store.dkim_keys import ACTIVE, PENDING, RETIRED, DKIMKey

__all__ = ["add_dkim_commands"]

Leaf = Callable[..., argparse.ArgumentParser]


def _cli() -> Any:
    from pillarbox import cli   # imported late: cli imports this module

    return cli


def _day(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%MZ", time.gmtime(timestamp))


def _keys(store: Any) -> Any:
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys

    return SQLiteDKIMKeys(store)


def _print_new(made: list[service.PublishedKey], *, rotate: bool) -> None:
    domain = made[0].key.domain
    active = made[0].key.state == ACTIVE
    what = "new DKIM keys" if rotate else "DKIM keys"
    print(f"made {len(made)} {what} for {domain}: "
          + ", ".join(f"{p.key.selector} ({p.key.algorithm})" for p in made))
    print()
    print(f"Publish these records in the DNS zone of {domain}:")
    print()
    for p in made:
        print(p.record)
    print()
    if active:
        print(f"They sign mail from {domain} now; until the records are published, "
              "receivers find its signatures broken.")
    else:
        print(f"They do not sign yet. Once the records resolve (dig TXT "
              f"{made[0].key.selector}._domainkey.{domain}), start signing with them:")
        print(f"  pillarbox dkim activate {domain} {made[0].key.selector}")


def _cmd_keygen(args: argparse.Namespace, *, rotate: bool = False) -> int:
    cli = _cli()
    with cli._open_store(args) as store:
        made = service.generate(_keys(store), store.data_dir, args.domain,
                                algorithm=args.algorithm, selector=args.selector,
                                activate=getattr(args, "activate", False), rotate=rotate)
        local = {d[0] for d in store.list_domains()}
    _print_new(made, rotate=rotate)
    domain = made[0].key.domain
    if domain not in local:
        print(f"note: {domain} is not a local domain; its mail is signed when a user may "
              "send as it (pillarbox user send-as) or comes from smtp.trusted_networks")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    return _cmd_keygen(args, rotate=True)


def _overlap(args: argparse.Namespace) -> float:
    config, _ = _cli().resolve_config(args)
    return float(config.dkim.overlap)


def _cmd_activate(args: argparse.Namespace) -> int:
    cli = _cli()
    overlap = _overlap(args)
    with cli._open_store(args) as store:
        active, retired = service.activate(_keys(store), store.data_dir, args.domain,
                                           args.selector)
    domain = active[0].domain
    print(f"{domain} now signs with " + ", ".join(f"{k.selector} ({k.algorithm})"
                                                  for k in active))
    for k in retired:
        until = service.publish_until(k, overlap)
        assert until is not None
        print(f"retired {k.selector} ({k.algorithm}): it no longer signs; keep its record "
              f"published until {_day(until)}, then 'pillarbox dkim remove {domain} "
              f"{k.selector}'")
    print("running servers switch within a few seconds")
    return 0


def _state_text(k: DKIMKey, overlap: float) -> str:
    if k.state == PENDING:
        return "pending: publish its record, then activate"
    if k.state == ACTIVE:
        return f"active since {_day(k.changed)}: signs"
    until = service.publish_until(k, overlap)
    assert until is not None
    if until > time.time():
        return f"retired {_day(k.changed)}: keep published until {_day(until)}"
    return f"retired {_day(k.changed)}: its record may go; then remove the key"


def _cmd_list(args: argparse.Namespace) -> int:
    cli = _cli()
    overlap = _overlap(args)
    with cli._open_store(args) as store:
        if args.records:
            entries = service.published(_keys(store), store.data_dir, args.domain)
        else:
            entries = [service.PublishedKey(k, None)
                       for k in service.list_keys(_keys(store), args.domain)]
    if not entries:
        print(f"no DKIM keys for {args.domain}" if args.domain else "no DKIM keys")
        return 0
    if args.records:
        for p in entries:
            print(f"; {p.key.selector} ({p.key.algorithm}), {_state_text(p.key, overlap)}")
            print(p.record if p.record is not None else f"; unreadable: {p.problem}")
        return 0
    cli._table(("DOMAIN", "SELECTOR", "ALGORITHM", "CREATED", "STATE"),
               [(p.key.domain, p.key.selector, p.key.algorithm, _day(p.key.created),
                 _state_text(p.key, overlap)) for p in entries])
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    cli = _cli()
    overlap = _overlap(args)
    with cli._open_store(args) as store:
        key = service.remove(_keys(store), store.data_dir, args.domain, args.selector)
    print(f"removed the DKIM key {key.selector} of {key.domain} ({key.algorithm}, {key.state})")
    until = service.publish_until(key, overlap)
    if key.state == RETIRED and until is not None and until > time.time():
        print(f"its record should stay published until {_day(until)}: mail it signed "
              "may still be verified until then")
    elif key.state == RETIRED:
        print(f"its record {key.selector}._domainkey.{key.domain} can now be removed from DNS")
    else:
        print(f"it never signed: its record {key.selector}._domainkey.{key.domain} "
              "can be removed from DNS")
    return 0


def add_dkim_commands(g: argparse._SubParsersAction[argparse.ArgumentParser],
                      leaf: Leaf) -> None:
    """The ``dkim`` actions, into the group ``g`` made by ``pillarbox.cli``."""
    def algorithm(p: argparse.ArgumentParser) -> None:
        p.add_argument("--algorithm", choices=tuple(service.ALGORITHMS), default="both",
                       help="kind of keys (default both: RSA-2048 and Ed25519, two signatures)")
        p.add_argument("--selector", metavar="S",
                       help="the selector (default: r/e, year and month, such as r202612); "
                       "with both algorithms a prefix: S-rsa and S-ed25519")

    p = leaf(g, "keygen", _cmd_keygen,
             "make the signing keys of a domain and print the DNS records to publish")
    p.add_argument("domain", metavar="DOMAIN")
    algorithm(p)
    p.add_argument("--activate", action="store_true",
                   help="sign with them at once (otherwise: after 'dkim activate', once "
                   "the records are published)")
    p = leaf(g, "rotate", _cmd_rotate,
             "make new keys for a domain that signs; the old ones sign until "
             "'dkim activate' switches")
    p.add_argument("domain", metavar="DOMAIN")
    algorithm(p)
    p = leaf(g, "activate", _cmd_activate,
             "sign with the keys made together with SELECTOR; the keys that signed are "
             "retired (their records stay published for dkim.overlap)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("selector", metavar="SELECTOR")
    p = leaf(g, "list", _cmd_list, "list the DKIM keys and their states")
    p.add_argument("domain", nargs="?", metavar="DOMAIN")
    p.add_argument("--records", action="store_true",
                   help="print the zone-file lines of every key that must be published")
    p = leaf(g, "remove", _cmd_remove, "forget a retired (or never activated) key")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("selector", metavar="SELECTOR")
