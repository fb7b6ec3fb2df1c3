"""The trading calendar: sessions of a real exchange, and the as-of cutoff of a day.

Pure Python (no Dagster) so that the simulator, the file source, features, labels and
partitions share one definition. Sessions come from ``exchange_calendars`` (the library
zipline uses), for the exchange named by ``QUANT_CALENDAR`` (default ``XNYS``, the New York
Stock Exchange): regular holidays, unscheduled closures (2001-09-11..14, 2012-10-29/30 for
Hurricane Sandy, 2018-12-05 for President Bush's funeral, ...) and half days as the
exchange had them. Every function takes an optional ``calendar`` name; None means the
configured one.

The as-of cutoff of day D (rows with ``knowledge_time <= cutoff(D)`` are visible to D's
features) is, by default, relative to D's actual close:

    cutoff(D) = close(D) + QUANT_CUTOFF_OFFSET          (SessionCutoff)

where close(D) is the session's close in UTC, so a half day (2022-11-25 closed at 13:00
New York) has an earlier cutoff, and DST is the exchange's: 16:00 New York is 21:00 UTC in
winter and 20:00 UTC in summer. The default offset is 0 (the cutoff is the close itself),
which keeps a winter XNYS day's cutoff at 21:00 UTC, the old fixed default. A day that is
not a session (a weekend, a holiday) gets the cutoff of a regular session on that date:
cutoffs then increase strictly from day to day, so "known by D" stays monotone.

``QUANT_CUTOFF_TIME=HH:MM`` replaces the rule by a fixed UTC time of day (the behaviour
before real calendars; a plain ``datetime.time`` wherever a cutoff is passed). It ignores
DST and half days, so it is an override for reproducing old runs and tests, not a default.

Sessions are precomputed once per calendar (a sorted tuple, a set and the closes of
1980..2035) so that the functions below are a set lookup or a bisection: features and
labels call them in loops. A build is kept on disk (``QUANT_CALENDAR_CACHE``, see
``_cache_file``), keyed by the exchange_calendars version, so that a new process reads it
instead of importing pandas and exchange_calendars to build it again.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

UTC = dt.UTC

DEFAULT_CALENDAR = "XNYS"
CALENDAR_ENV = "QUANT_CALENDAR"
# The span of sessions precomputed per calendar. Fixed (not "today + 1 year") so that a
# day's answer never depends on when the process started; clipped to the calendar's own
# bounds (some, e.g. lunar-holiday calendars, are only defined up to a year).
CALENDAR_START = dt.date(1980, 1, 1)
CALENDAR_END = dt.date(2035, 12, 31)


@dataclass(frozen=True)
class SessionCutoff:
    """cutoff(D) = D's actual close (UTC; half days earlier) + ``offset``."""

    offset: dt.timedelta = dt.timedelta(0)


# What a cutoff rule can be: relative to the session close, or a fixed UTC time of day.
Cutoff = SessionCutoff | dt.time

DEFAULT_CUTOFF: Cutoff = SessionCutoff()


@dataclass(frozen=True)
class Sessions:
    """One exchange's sessions, precomputed (see module doc)."""

    name: str
    tz: str
    days: tuple[dt.date, ...]  # sorted
    day_set: frozenset[dt.date]
    closes: dict[dt.date, dt.datetime]  # UTC close of every session
    regular_close: dt.time  # the local close time of a regular session
    special_closes: dict[dt.date, dt.datetime]  # sessions closing at another time (UTC)

    @property
    def first(self) -> dt.date:
        return self.days[0]

    @property
    def last(self) -> dt.date:
        return self.days[-1]


def calendar_name() -> str:
    """The configured calendar: QUANT_CALENDAR, default XNYS."""
    return os.environ.get(CALENDAR_ENV) or DEFAULT_CALENDAR


def sessions(calendar: str | None = None) -> Sessions:
    """The precomputed sessions of `calendar` (default: the configured one, read each call
    so that a changed QUANT_CALENDAR is seen; the build itself is cached per name)."""
    return _build(calendar or calendar_name())


@lru_cache(maxsize=8)
def _build(name: str) -> Sessions:
    path = _cache_file(name)
    if path is not None:
        cached = _read_cache(path, name)
        if cached is not None:
            return cached
    built = _from_exchange_calendars(name)
    if path is not None:
        _write_cache(path, built)
    return built


def _from_exchange_calendars(name: str) -> Sessions:
    # imported here: pandas + exchange_calendars cost ~0.5 s, paid only when a calendar is
    # built (not when it comes from the cache)
    import exchange_calendars as xcals

    if name not in xcals.get_calendar_names(include_aliases=True):
        raise ValueError(
            f"{CALENDAR_ENV}={name!r} is not an exchange_calendars calendar "
            f"(e.g. XNYS, XNAS, XLON, XTKS, XETR; all: exchange_calendars.get_calendar_names())"
        )
    start, end = CALENDAR_START, CALENDAR_END
    try:
        cal = xcals.get_calendar(name, start=start.isoformat(), end=end.isoformat())
    except ValueError:
        # a calendar with class bounds (bound_min/bound_max) refuses a span beyond them: read
        # them from one built over its default span, then clamp. Only then: that build costs
        # ~0.3 s, and XNYS and most calendars have no bounds
        kind = type(xcals.get_calendar(name))
        bound_min, bound_max = kind.bound_min(), kind.bound_max()
        if bound_min is not None:
            start = max(start, bound_min.date())
        if bound_max is not None:
            end = min(end, bound_max.date())
        cal = xcals.get_calendar(name, start=start.isoformat(), end=end.isoformat())
    days = tuple(d.date() for d in cal.sessions)
    closes = [c.to_pydatetime().astimezone(UTC) for c in cal.closes]
    return _sessions(name, str(cal.tz), days, closes)


def _sessions(name: str, tz: str, days: tuple[dt.date, ...], closes: list[dt.datetime]) -> Sessions:
    """Sessions from the days and their UTC closes (a fresh build and the cache share it)."""
    close_of = dict(zip(days, closes, strict=True))
    zone = ZoneInfo(tz)
    local_close = Counter(c.astimezone(zone).time() for c in closes)
    regular = local_close.most_common(1)[0][0]
    special = {d: c for d, c in close_of.items() if c != _regular_close_utc(d, regular, zone)}
    return Sessions(
        name=name,
        tz=tz,
        days=days,
        day_set=frozenset(days),
        closes=close_of,
        regular_close=regular,
        special_closes=special,
    )


# The on-disk cache of built sessions. Every process that loads the code location (a run
# worker, each step worker, a code server) needs the sessions at import (partitions are built
# from them), and building them costs ~1-1.5 s on a 2-core host: importing pandas and
# exchange_calendars, then exchange_calendars' holiday rules. The cache holds exactly what
# the build returned, keyed by calendar, span and exchange_calendars version (a new release
# with new holidays is a new file), written whole or not at all (a rename).
CALENDAR_CACHE_ENV = "QUANT_CALENDAR_CACHE"
_CACHE_FORMAT = 1


def _cache_file(name: str) -> Path | None:
    """The cache file of calendar ``name``; None when QUANT_CALENDAR_CACHE is ``off``.
    Default folder: ``$XDG_CACHE_HOME/quant-assets/calendars`` (``~/.cache/...``)."""
    setting = os.environ.get(CALENDAR_CACHE_ENV, "").strip()
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        root = Path(setting)
    else:
        try:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        except RuntimeError:  # no home directory (a bare container user): no cache
            return None
        root = base / "quant-assets" / "calendars"
    span = f"{CALENDAR_START:%Y%m%d}-{CALENDAR_END:%Y%m%d}"
    return root / f"{name}-{span}-exchange_calendars-{version('exchange_calendars')}.json"


def _read_cache(path: Path, name: str) -> Sessions | None:
    """The cached sessions, or None when the file is missing, unreadable or not this
    calendar's (then it is rebuilt and written again)."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != _CACHE_FORMAT or data.get("name") != name:
            return None
        days = tuple(dt.date.fromisoformat(d) for d in data["days"])
        closes = [dt.datetime.fromtimestamp(t, UTC) for t in data["closes"]]
        return _sessions(name, data["tz"], days, closes)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cache(path: Path, built: Sessions) -> None:
    """Write the cache file whole (a temporary file renamed over it); a folder that cannot
    be written leaves the cache off, nothing else."""
    data = {
        "format": _CACHE_FORMAT, "name": built.name, "tz": built.tz,
        "days": [d.isoformat() for d in built.days],
        "closes": [built.closes[d].timestamp() for d in built.days],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _regular_close_utc(day: dt.date, local: dt.time, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, local, tzinfo=zone).astimezone(UTC)


def _in_range(s: Sessions, day: dt.date) -> None:
    if not s.first <= day <= s.last:
        raise ValueError(
            f"{day} is outside the {s.name} calendar's precomputed sessions "
            f"{s.first}..{s.last} (quant_assets.calendar.CALENDAR_START/END)"
        )


# --------------------------------------------------------------------------- sessions


def is_trading_day(day: dt.date, calendar: str | None = None) -> bool:
    """True when the exchange held a session on `day`."""
    s = sessions(calendar)
    _in_range(s, day)
    return day in s.day_set


def trading_days(start: dt.date, end: dt.date, calendar: str | None = None) -> list[dt.date]:
    """Sessions in the closed interval [start, end]."""
    s = sessions(calendar)
    if end < start:
        return []
    _in_range(s, start)
    _in_range(s, end)
    return list(s.days[bisect.bisect_left(s.days, start) : bisect.bisect_right(s.days, end)])


def shift_trading_days(day: dt.date, n: int, calendar: str | None = None) -> dt.date:
    """The session n sessions after (n > 0) or before (n < 0) `day`; `day` itself for n = 0.

    `day` need not be a session: the first session after a Saturday is Monday (n = 1).
    """
    if n == 0:
        return day
    s = sessions(calendar)
    _in_range(s, day)
    if n > 0:
        i = bisect.bisect_right(s.days, day) + n - 1
    else:
        i = bisect.bisect_left(s.days, day) + n
    if not 0 <= i < len(s.days):
        raise ValueError(
            f"{n} sessions from {day} leaves the {s.name} calendar's precomputed sessions "
            f"{s.first}..{s.last}"
        )
    return s.days[i]


def closed_weekdays(start: dt.date, end: dt.date, calendar: str | None = None) -> list[dt.date]:
    """Monday-to-Friday days in [start, end] without a session: holidays and unscheduled
    closures (what a weekday partition definition must exclude)."""
    s = sessions(calendar)
    _in_range(s, start)
    _in_range(s, min(end, s.last))
    out = []
    day = start
    one = dt.timedelta(days=1)
    while day <= end:
        if day.weekday() < 5 and day not in s.day_set:
            out.append(day)
        day += one
    return out


def weekend_sessions(start: dt.date, end: dt.date, calendar: str | None = None) -> list[dt.date]:
    """Sessions in [start, end] on a Saturday or Sunday (none on XNYS; some exchanges trade on
    weekend days): a weekday cron cannot make them partitions, so callers must refuse them."""
    return [d for d in trading_days(start, end, calendar) if d.weekday() >= 5]


def session_close(day: dt.date, calendar: str | None = None) -> dt.datetime:
    """The actual close (UTC) of session `day`; ValueError when `day` is not a session."""
    s = sessions(calendar)
    _in_range(s, day)
    try:
        return s.closes[day]
    except KeyError:
        raise ValueError(f"{day} is not a {s.name} session") from None


# --------------------------------------------------------------------------- cutoffs


def _close_or_regular(day: dt.date, s: Sessions) -> dt.datetime:
    close = s.closes.get(day)
    if close is None:  # not a session: the close a regular session would have had
        close = _regular_close_utc(day, s.regular_close, ZoneInfo(s.tz))
    return close


def cutoff(day: dt.date, at: Cutoff = DEFAULT_CUTOFF, calendar: str | None = None) -> dt.datetime:
    """As-of cutoff of day `day` (module doc): rows with knowledge_time <= cutoff are visible."""
    if isinstance(at, dt.time):
        return dt.datetime.combine(day, at, tzinfo=UTC)
    return _close_or_regular(day, sessions(calendar)) + at.offset


def latest_cutoff_time(at: Cutoff = DEFAULT_CUTOFF, calendar: str | None = None) -> dt.time:
    """The latest UTC time of day a regular session's cutoff takes over the year (21:00 for
    XNYS with a zero offset: the winter close): a daily schedule at or after it runs after
    every regular cutoff, summer or winter."""
    if isinstance(at, dt.time):
        return at
    s = sessions(calendar)
    zone = ZoneInfo(s.tz)
    year = [dt.date(2021, 1, 4) + dt.timedelta(days=7 * k) for k in range(53)]
    # time after the date's 00:00 UTC (may pass midnight with a large offset)
    after_midnight = max(
        _regular_close_utc(d, s.regular_close, zone) + at.offset
        - dt.datetime.combine(d, dt.time(0), tzinfo=UTC)
        for d in year
    )
    return (dt.datetime.min + after_midnight % dt.timedelta(days=1)).time()


def cutoff_expr(day: pl.Expr, at: Cutoff = DEFAULT_CUTOFF, calendar: str | None = None) -> pl.Expr:
    """Polars version of `cutoff` for a Date expression: Datetime("us", "UTC")."""
    if isinstance(at, dt.time):
        return day.dt.combine(at, time_unit="us").dt.replace_time_zone("UTC")
    s = sessions(calendar)
    regular = (
        day.dt.combine(s.regular_close, time_unit="us")
        .dt.replace_time_zone(s.tz, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
    )
    if s.special_closes:
        # a handful per year (half days, delayed closes): a lookup, the regular rule otherwise
        regular = day.replace_strict(
            list(s.special_closes),
            list(s.special_closes.values()),
            default=regular,
            return_dtype=pl.Datetime("us", "UTC"),
        )
    if at.offset:
        regular = regular + pl.lit(at.offset)
    return regular.cast(pl.Datetime("us", "UTC"))


def session_close_expr(day: pl.Expr, calendar: str | None = None) -> pl.Expr:
    """The close (UTC) of each date: `cutoff_expr` with a zero offset (a regular close for a
    date that is not a session)."""
    return cutoff_expr(day, SessionCutoff(), calendar)


def is_session_expr(day: pl.Expr, calendar: str | None = None) -> pl.Expr:
    """True where the date is a session (vectorised `is_trading_day`)."""
    s = sessions(calendar)
    return day.is_in(pl.Series(s.days, dtype=pl.Date).implode())


# --------------------------------------------------------------------------- months


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
