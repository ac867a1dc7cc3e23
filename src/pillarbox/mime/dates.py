"""Date-time of RFC 5322 §3.3, with the obsolete forms of §4.3.

Accepted: an optional day name, one- or two-digit days, month names in any
case, two- and three-digit years (§4.3: 00-49 → 20xx, 50-999 → 1900+), a
missing seconds field, comments, ``.`` as time separator, numeric zones and the
obsolete alphabetic zones (UT, GMT, the US zones; military letters and unknown
zones mean -0000, i.e. UTC with unknown local offset).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["format_date", "parse_date"]

_MONTHS = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}
_ZONES = {"ut": 0, "utc": 0, "gmt": 0, "z": 0, "edt": -4, "est": -5, "cdt": -5, "cst": -6,
          "mdt": -6, "mst": -7, "pdt": -7, "pst": -8}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DATE = re.compile(
    r"""^\s*(?:[a-z]+\s*,?\s*)?            # day name (optional, even without comma)
    (\d{1,2})\s*[-\s]?\s*([a-z]{3})[a-z]*\s*[-\s]?\s*(\d{2,4})\s+
    (\d{1,2})\s*[:.]\s*(\d{1,2})(?:\s*[:.]\s*(\d{1,2}))?
    \s*([+-]\d{1,4}|[a-z]+)?""",
    re.IGNORECASE | re.VERBOSE,
)
_COMMENT = re.compile(r"\([^()]*\)")


def parse_date(value: bytes | str | None) -> datetime | None:
    """Parse a Date header value into an aware datetime, or None when unreadable."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = _COMMENT.sub(" ", value)
    m = _DATE.match(value)
    if not m:
        return None
    day, mon, year, hh, mm, ss, zone = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    y = int(year)
    if len(year) == 2:
        y += 2000 if y < 50 else 1900
    elif len(year) == 3:
        y += 1900
    offset = 0
    if zone:
        if zone[0] in "+-":
            digits = zone[1:].rjust(4, "0")
            offset = int(digits[:2]) * 60 + int(digits[2:])
            if offset >= 24 * 60 or int(digits[2:]) >= 60:
                offset = 0
            if zone[0] == "-":
                offset = -offset
        else:
            offset = _ZONES.get(zone.lower(), 0) * 60
    try:
        return datetime(
            y, month, int(day), int(hh), int(mm), int(ss or 0),
            tzinfo=timezone(timedelta(minutes=offset)),
        )
    except ValueError:
        # 24:00:00 and leap seconds: clamp rather than fail (§3.3 allows 60)
        try:
            base = datetime(y, month, int(day), tzinfo=timezone(timedelta(minutes=offset)))
        except ValueError:
            return None
        return base + timedelta(hours=int(hh), minutes=int(mm), seconds=int(ss or 0))


def format_date(when: datetime) -> str:
    """RFC 5322 §3.3 date-time, e.g. ``Tue, 1 Jul 2003 10:52:37 +0200``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    off = when.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    mon = list(_MONTHS)[when.month - 1].capitalize()
    day = _DAYS[when.weekday()].capitalize()
    return (f"{day}, {when.day} {mon} {when.year:04d} {when.hour:02d}:{when.minute:02d}:"
            f"{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}")
