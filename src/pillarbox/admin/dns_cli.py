"""``pillarbox dns check``: the command-line side of ``pillarbox.admin.dns_check``.

::

    pillarbox dns check DOMAIN [--address IP]... [--nameserver IP[:PORT]]...

Registered into the parser by ``pillarbox.cli`` (``add_dns_commands``); the
check and its DNS machinery are imported only when the command runs, so the
other commands do not pay for them.  Exit status 0 when every published item
is fine, 1 when something is missing or wrong (or the DNS did not answer).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from pillarbox.admin.commands import AdminError

__all__ = ["add_dns_commands"]

Leaf = Callable[..., argparse.ArgumentParser]


def _cmd_check(args: argparse.Namespace) -> int:
    from pillarbox import cli   # imported late: cli imports this module
    from pillarbox.admin.dns_check import check_domain, setup_from_config
    from pillarbox.policy.dns import DNSResolver

    config, _ = cli.resolve_config(args)
    setup = setup_from_config(config, args.domain, args.addresses or ())
    servers = args.nameservers or list(config.dns.nameservers) or None
    try:
        resolver = DNSResolver(servers, timeout=config.dns.timeout)
    except ValueError as e:
        raise AdminError(str(e)) from None
    report = asyncio.run(check_domain(setup, resolver))
    sys.stdout.write(report.render())
    return 0 if report.ok else 1


def add_dns_commands(group: argparse._SubParsersAction[argparse.ArgumentParser],
                     leaf: Leaf) -> None:
    """Register ``pillarbox dns check`` (called by ``pillarbox.cli``)."""
    p = leaf(group, "check", _cmd_check,
             "what DOMAIN should publish in the DNS (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, "
             "PTR), and what is wrong with what it publishes; exit 1 if anything is")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--address", dest="addresses", action="append", metavar="IP",
                   help="a public address of this server (repeatable; default: those of "
                   "server.hostname in the DNS)")
    p.add_argument("--nameserver", dest="nameservers", action="append", metavar="IP[:PORT]",
                   help="ask this nameserver (repeatable; default: dns.nameservers, else "
                   "/etc/resolv.conf)")
