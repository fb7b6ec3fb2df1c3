"""The trading calendar: which days are trading days, and the as-of cutoff of a day.

Pure Python (no Dagster) so that the simulator, features and partitions share one
definition. Trading days are weekdays less a small fixed set of exchange holidays
(New Year's Day, Independence Day, Christmas, observed on the nearest weekday the way
NYSE observes them). It is a simulator calendar, not a full NYSE calendar: real data
sources bring their own trading days, and a bar on a non-trading day is rejected by the
data-quality checks.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

UTC = dt.UTC

DEFAULT_CUTOFF = dt.time(21, 0)  # after the US close


def _observed(day: dt.date) -> dt.date:
    if day.weekday() == 5:  # Saturday -> Friday
        return day - dt.timedelta(days=1)
    if day.weekday() == 6:  # Sunday -> Monday
        return day + dt.timedelta(days=1)
    return day


@lru_cache(maxsize=256)
def holidays(year: int) -> frozenset[dt.date]:
    days = {
        _observed(dt.date(year, 7, 4)),
        _observed(dt.date(year, 12, 25)),
    }
    new_year = dt.date(year, 1, 1)
    # NYSE does not observe New Year's Day on the preceding Friday (Dec 31).
    if new_year.weekday() != 5:
        days.add(_observed(new_year))
    return frozenset(days)


def is_trading_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in holidays(day.year)


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Trading days in the closed interval [start, end]."""
    out = []
    day = start
    one = dt.timedelta(days=1)
    while day <= end:
        if is_trading_day(day):
            out.append(day)
        day += one
    return out


def holiday_list(start: dt.date, end: dt.date) -> list[dt.date]:
    """Weekday holidays in [start, end] (what the partition definition excludes)."""
    return sorted(
        h for y in range(start.year, end.year + 1) for h in holidays(y) if start <= h <= end
    )


def shift_trading_days(day: dt.date, n: int) -> dt.date:
    """The trading day n trading days after (n > 0) or before (n < 0) `day`."""
    step = dt.timedelta(days=1 if n >= 0 else -1)
    remaining = abs(n)
    cur = day
    while remaining:
        cur += step
        if is_trading_day(cur):
            remaining -= 1
    return cur


def cutoff(day: dt.date, at: dt.time = DEFAULT_CUTOFF) -> dt.datetime:
    """As-of cutoff of trading day `day`: rows with knowledge_time <= cutoff(day) are visible."""
    return dt.datetime.combine(day, at, tzinfo=UTC)


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
