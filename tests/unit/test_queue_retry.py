"""The retry schedule (``pillarbox.queue.schedule``), its configuration, and NOTIFY.

Defaults close to Postfix's: first retry after 5 minutes, doubling, at most an
hour between tries, give up after 5 days, a delay warning after 4 hours.
"""

from __future__ import annotations

import pytest

from pillarbox.config import ConfigError, load_config
from pillarbox.queue.report import notify_allows
from pillarbox.queue.schedule import Schedule

DAY = 86400.0


def test_default_schedule_is_postfix_like() -> None:
    s = Schedule()
    assert [s.delay(n) for n in range(1, 9)] == [
        300, 600, 1200, 2400, 3600, 3600, 3600, 3600]
    assert s.delay(0) == 300 and s.delay(10**9) == 3600     # no overflow
    assert (s.lifetime, s.delay_warning) == (5 * DAY, 4 * 3600)


def test_tries_over_five_days_and_a_last_one_at_the_give_up_time() -> None:
    s = Schedule()
    arrived = now = 1_000_000.0
    tries = 0
    while not s.expired(arrived, now):
        tries += 1
        now = s.next_attempt(tries, now, arrived)
    # 300+600+1200+2400 s (4 tries), then 118 hourly ones, and one more cut short to
    # land exactly at 5 days.
    assert now == arrived + 5 * DAY
    assert tries == 4 + 118 + 1


def test_next_attempt_never_passes_the_give_up_time() -> None:
    s = Schedule(first_retry=60, max_retry=3600, lifetime=1000)
    assert s.next_attempt(5, now=900.0, arrived=0.0) == 1000.0
    assert s.next_attempt(1, now=100.0, arrived=0.0) == 160.0
    # Already past it (a long outage): now, not in the past.
    assert s.next_attempt(3, now=5000.0, arrived=0.0) == 5000.0


def test_expiry_and_delay_warning_times() -> None:
    s = Schedule(delay_warning=4 * 3600)
    assert not s.warn_due(0.0, 4 * 3600 - 1) and s.warn_due(0.0, 4 * 3600)
    assert not s.expired(0.0, 5 * DAY - 1) and s.expired(0.0, 5 * DAY)
    assert s.give_up_at(100.0) == 100.0 + 5 * DAY
    assert not Schedule(delay_warning=0).warn_due(0.0, 10 * DAY)   # 0: never


def test_a_schedule_that_makes_no_sense_is_refused() -> None:
    with pytest.raises(ValueError, match="first_retry"):
        Schedule(first_retry=0)
    with pytest.raises(ValueError, match="max_retry"):
        Schedule(first_retry=600, max_retry=300)


def test_queue_keys_of_the_configuration(tmp_path) -> None:
    path = tmp_path / "pillarbox.toml"
    path.write_text('[queue]\nretry_first = "2m"\nretry_max = "30m"\nlifetime = "3d"\n'
                    'delay_warning = 0\nactive_limit = 5000\npostmaster = "pm@example.com"\n')
    q = load_config(path, {"queue.destination_concurrency": "5"}).queue
    assert (q.retry_first, q.retry_max, q.lifetime, q.delay_warning) == (120, 1800, 3 * DAY, 0)
    assert (q.active_limit, q.destination_concurrency, q.postmaster) == (5000, 5, "pm@example.com")
    defaults = load_config(None, {}).queue
    assert (defaults.retry_first, defaults.retry_max, defaults.lifetime,
            defaults.delay_warning) == (300, 3600, 5 * DAY, 4 * 3600)
    assert (defaults.concurrency, defaults.destination_concurrency) == (100, 20)


@pytest.mark.parametrize("key, value", [
    ("queue.retry_first", "soon"), ("queue.lifetime", "10s"), ("queue.active_limit", "0"),
    ("queue.postmaster", "not an address"),
])
def test_bad_queue_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: value})
    assert any(key in line for line in info.value.errors)


@pytest.mark.parametrize("notify, success, failure, delay", [
    (None, False, True, True),                 # the default: failures and delays
    ("NEVER", False, False, False),
    ("SUCCESS", True, False, False),
    ("FAILURE", False, True, False),
    ("delay,Failure", False, True, True),      # any case, any order
    ("SUCCESS,FAILURE,DELAY", True, True, True),
])
def test_notify(notify: str | None, success: bool, failure: bool, delay: bool) -> None:
    assert notify_allows(notify, "SUCCESS") is success
    assert notify_allows(notify, "FAILURE") is failure
    assert notify_allows(notify, "DELAY") is delay
