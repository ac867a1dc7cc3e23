"""When a deferred entry is tried again, when its sender is warned, when it gives up.

Postfix's schedule, which senders and administrators know: the first retry
after ``first_retry`` (Postfix's ``minimal_backoff_time``, 5 minutes), each
wait twice the one before, never more than ``max_retry`` between tries
(``maximal_backoff_time``; here an hour), and after ``lifetime``
(``maximal_queue_lifetime``, 5 days) the message is returned with a failure
report.  RFC 5321 4.5.4.1 asks for a retry interval of at least 30 minutes
and a give-up time of at least 4-5 days; the first retry comes sooner, as
Postfix's does, because most transient failures (greylisting, a restarting
server) clear within minutes.

A delay warning (RFC 3464 ``Action: delayed``) goes once per recipient after
``delay_warning`` (Postfix's ``delay_warning_time``, here 4 hours), where its
NOTIFY allows (``pillarbox.queue.report``).

The values are plain numbers, passed in from ``[queue]`` of the
configuration; nothing here reads a clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Schedule"]


@dataclass(frozen=True, slots=True)
class Schedule:
    first_retry: float = 300.0          # seconds until the first retry
    max_retry: float = 3600.0           # the longest wait between two tries
    lifetime: float = 5 * 86400.0       # give up this long after arrival
    delay_warning: float = 4 * 3600.0   # warn the sender this long after arrival (0: never)

    def __post_init__(self) -> None:
        if self.first_retry <= 0 or self.max_retry < self.first_retry:
            raise ValueError(
                f"retry schedule: first_retry ({self.first_retry:g} s) must be > 0 and "
                f"at most max_retry ({self.max_retry:g} s)"
            )

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed try (1: the first)."""
        if attempts <= 1:
            return self.first_retry
        # Doubling, capped; the exponent is bounded so a huge count cannot overflow.
        return min(self.first_retry * 2.0 ** min(attempts - 1, 64), self.max_retry)

    def next_attempt(self, attempts: int, now: float, arrived: float) -> float:
        """When to try again after ``attempts`` failed tries; never after the give-up time,
        so the failure report is not late by a whole retry interval."""
        return min(now + self.delay(attempts), max(arrived + self.lifetime, now))

    def expired(self, arrived: float, now: float) -> bool:
        return now - arrived >= self.lifetime

    def warn_due(self, arrived: float, now: float) -> bool:
        return self.delay_warning > 0 and now - arrived >= self.delay_warning

    def give_up_at(self, arrived: float) -> float:
        """RFC 3464 2.3.9 Will-Retry-Until."""
        return arrived + self.lifetime
