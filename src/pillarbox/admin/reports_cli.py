"""``pillarbox reports send``: the command-line side of ``pillarbox.reports.job``.

::

    pillarbox reports send [--day YYYY-MM-DD] [--dry-run]

Builds the DMARC aggregate (RFC 7489 §7.2) and TLS-RPT (RFC 8460) reports
of one UTC day (default: yesterday) from the counts the server spooled
under ``reports/``, and queues them; a running server delivers them at its
next poll.  A report already queued for that domain and day is not queued
again.  ``--dry-run`` prints each report (its recipients and document)
and queues nothing.  Registered into the parser by ``pillarbox.cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable

from pillarbox.admin.commands import AdminError

__all__ = ["add_reports_commands"]

Leaf = Callable[..., argparse.ArgumentParser]


def _cmd_send(args: argparse.Namespace) -> int:
    from pillarbox import cli   # imported late: cli imports this module
    from pillarbox.reports.job import ReportJob, day_range, previous_day

    config, _ = cli.resolve_config(args)
    day = args.day or previous_day(time.time())
    try:
        day_range(day)
    except ValueError as e:
        raise AdminError(str(e)) from None
    with cli._open_store(args) as store:
        try:
            job = ReportJob.from_config(store, config)
        except ValueError as e:      # a bad dns.nameservers entry
            raise AdminError(str(e)) from None
        if args.dry_run:
            built, notes = asyncio.run(job.build(day))
            for b in built:
                sys.stdout.write(f"--- {b.kind} report for {b.domain} ({day}), "
                                 f"{b.rows} row(s), to {', '.join(b.recipients)}\n")
                sys.stdout.write(b.document.decode("utf-8"))
        else:
            built, notes = asyncio.run(job.send(day))
            for b in built:
                sys.stdout.write(f"queued {b.kind} report {b.report_id} for {b.domain} to "
                                 f"{', '.join(b.recipients)}\n")
    for n in notes:
        sys.stdout.write(f"skipped: {n}\n")
    if not built:
        sys.stdout.write(f"no reports {'to send' if args.dry_run else 'queued'} for {day}\n")
    return 0


def add_reports_commands(group: argparse._SubParsersAction[argparse.ArgumentParser],
                         leaf: Leaf) -> None:
    """Register ``pillarbox reports send`` (called by ``pillarbox.cli``)."""
    p = leaf(group, "send", _cmd_send,
             "build the DMARC aggregate and TLS-RPT reports of a day and queue them "
             "(a report already queued for that domain and day is not queued again)")
    p.add_argument("--day", metavar="YYYY-MM-DD",
                   help="the UTC day to report on (default: yesterday)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the reports instead of queueing them")
