"""The exchange calendar: sessions, cutoffs, partitions and label horizons.

References: NYSE's published holiday and early-close schedules (e.g. Thanksgiving 2022-11-24
closed, 2022-11-25 closed at 13:00 New York) and the exchange's unscheduled closures
(2001-09-11..14, 2012-10-29/30 Hurricane Sandy, 2018-12-05 President G. H. W. Bush's funeral,
2025-01-09 President Carter's funeral); exchange_calendars' own session index is the
reference for whole ranges.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import exchange_calendars as xcals
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_assets import calendar
from quant_assets.calendar import (
    SessionCutoff,
    cutoff,
    is_trading_day,
    shift_trading_days,
    trading_days,
)
from quant_assets.settings import Settings, get_settings, parse_duration

UTC = dt.UTC
CLOSED = [
    dt.date(2022, 11, 24),  # Thanksgiving
    dt.date(2022, 7, 4),
    dt.date(2022, 6, 20),  # Juneteenth (observed), a holiday since 2022
    dt.date(2001, 9, 11), dt.date(2001, 9, 14),  # unscheduled: September 11
    dt.date(2012, 10, 29), dt.date(2012, 10, 30),  # unscheduled: Hurricane Sandy
    dt.date(2018, 12, 5),  # unscheduled: national day of mourning
    dt.date(2025, 1, 9),  # unscheduled: national day of mourning
]
OPEN = [dt.date(2022, 11, 25), dt.date(2012, 10, 31), dt.date(2018, 12, 4), dt.date(2018, 12, 6), dt.date(2001, 9, 17)]


@pytest.mark.parametrize("day", CLOSED)
def test_closed_days_are_not_sessions(day):
    assert day.weekday() < 5 and not is_trading_day(day)


@pytest.mark.parametrize("day", OPEN)
def test_open_days_are_sessions(day):
    assert is_trading_day(day)


def test_trading_days_match_exchange_calendars_over_decades():
    start, end = dt.date(1990, 1, 2), dt.date(2024, 12, 31)
    reference = xcals.get_calendar("XNYS", start=start.isoformat(), end=end.isoformat())
    assert trading_days(start, end) == [d.date() for d in reference.sessions]


def test_closed_weekdays_are_what_partitions_exclude():
    assert calendar.closed_weekdays(dt.date(2012, 10, 1), dt.date(2012, 12, 31)) == [
        dt.date(2012, 10, 29), dt.date(2012, 10, 30), dt.date(2012, 11, 22), dt.date(2012, 12, 25)]


def test_shift_counts_sessions_across_closures():
    assert shift_trading_days(dt.date(2022, 11, 23), 1) == dt.date(2022, 11, 25)
    assert shift_trading_days(dt.date(2012, 10, 26), 1) == dt.date(2012, 10, 31)
    assert shift_trading_days(dt.date(2018, 12, 6), -1) == dt.date(2018, 12, 4)
    assert shift_trading_days(dt.date(2022, 11, 26), 1) == dt.date(2022, 11, 28)  # from a Saturday
    assert shift_trading_days(dt.date(2022, 11, 26), 0) == dt.date(2022, 11, 26)


@settings(max_examples=200, deadline=None)
@given(st.dates(dt.date(1990, 1, 1), dt.date(2030, 12, 31)), st.integers(-600, 600))
def test_shift_is_inverted_and_counts_sessions(day, n):
    target = shift_trading_days(day, n)
    if n == 0:
        assert target == day
        return
    assert is_trading_day(target)
    between = trading_days(min(day, target), max(day, target))
    # the sessions strictly after `day` up to target (or from target up to strictly before)
    assert len([d for d in between if d != day]) == abs(n)
    if is_trading_day(day):
        assert shift_trading_days(target, -n) == day


# --------------------------------------------------------------------------- cutoffs


def test_cutoff_is_the_actual_close_half_days_earlier_and_dst():
    assert cutoff(dt.date(2022, 1, 14)) == dt.datetime(2022, 1, 14, 21, tzinfo=UTC)  # winter, EST
    assert cutoff(dt.date(2022, 7, 1)) == dt.datetime(2022, 7, 1, 20, tzinfo=UTC)  # summer, EDT
    assert cutoff(dt.date(2022, 11, 25)) == dt.datetime(2022, 11, 25, 18, tzinfo=UTC)  # half day, 13:00 NY
    assert cutoff(dt.date(2022, 3, 11)) == dt.datetime(2022, 3, 11, 21, tzinfo=UTC)  # Friday before DST
    assert cutoff(dt.date(2022, 3, 14)) == dt.datetime(2022, 3, 14, 20, tzinfo=UTC)  # Monday after
    offset = SessionCutoff(dt.timedelta(minutes=30))
    assert cutoff(dt.date(2022, 11, 25), offset) == dt.datetime(2022, 11, 25, 18, 30, tzinfo=UTC)
    # the fixed-UTC override ignores DST and half days
    assert cutoff(dt.date(2022, 11, 25), dt.time(21)) == dt.datetime(2022, 11, 25, 21, tzinfo=UTC)
    assert calendar.latest_cutoff_time() == dt.time(21)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.dates(dt.date(1995, 1, 1), dt.date(2030, 12, 31)), min_size=1, max_size=40),
    st.integers(-6 * 60, 6 * 60),
)
def test_cutoff_expression_equals_the_python_cutoff_and_is_monotone(days, minutes):
    rule = SessionCutoff(dt.timedelta(minutes=minutes))
    frame = pl.DataFrame({"day": days}, schema={"day": pl.Date})
    got = frame.select(calendar.cutoff_expr(pl.col("day"), rule))["day"].to_list()
    assert got == [cutoff(d, rule) for d in days]
    ordered = sorted(set(days))
    cuts = [cutoff(d, rule) for d in ordered]
    assert all(a < b for a, b in zip(cuts, cuts[1:], strict=False))


def test_another_exchange_through_quant_calendar(monkeypatch):
    # 2022-08-29: UK summer bank holiday; New York was open
    assert is_trading_day(dt.date(2022, 8, 29))
    monkeypatch.setenv("QUANT_CALENDAR", "XLON")
    assert not is_trading_day(dt.date(2022, 8, 29))
    assert cutoff(dt.date(2022, 1, 14)) == dt.datetime(2022, 1, 14, 16, 30, tzinfo=UTC)  # 16:30 London
    assert get_settings().calendar_name == "XLON"
    monkeypatch.setenv("QUANT_CALENDAR", "NOPE")
    with pytest.raises(ValueError, match="QUANT_CALENDAR='NOPE'"):
        get_settings()


def test_settings_of_the_cutoff_and_the_source(monkeypatch):
    assert parse_duration("X", "1h30min") == dt.timedelta(minutes=90)
    assert parse_duration("X", "-15min") == dt.timedelta(minutes=-15)
    assert parse_duration("X", "0") == dt.timedelta(0)
    with pytest.raises(ValueError, match="X='soon'"):
        parse_duration("X", "soon")
    assert get_settings().cutoff_time == SessionCutoff()
    monkeypatch.setenv("QUANT_CUTOFF_OFFSET", "30min")
    assert get_settings().cutoff_time == SessionCutoff(dt.timedelta(minutes=30))
    monkeypatch.setenv("QUANT_CUTOFF_TIME", "21:00")
    with pytest.raises(ValueError, match="not both"):
        get_settings()
    monkeypatch.delenv("QUANT_CUTOFF_OFFSET")
    assert get_settings().cutoff_time == dt.time(21)
    monkeypatch.setenv("QUANT_SOURCE", "files")
    with pytest.raises(ValueError, match="QUANT_DATA_DIR"):
        get_settings()
    monkeypatch.setenv("QUANT_SOURCE", "csv")
    with pytest.raises(ValueError, match="QUANT_SOURCE='csv'"):
        get_settings()


# --------------------------------------------------------------------------- partitions, labels


def _settings(start: dt.date, end: dt.date) -> Settings:
    return dataclasses.replace(get_settings(), start_date=start, end_date=end)


@pytest.mark.parametrize(
    ("start", "end"),
    [(dt.date(2012, 10, 1), dt.date(2012, 12, 31)), (dt.date(2018, 11, 20), dt.date(2019, 1, 10)),
     (dt.date(2022, 11, 1), dt.date(2022, 11, 30))],
)
def test_partitions_are_exactly_the_sessions(start, end):
    from quant_assets.partitions import build_trading_day_partitions

    keys = build_trading_day_partitions(_settings(start, end)).get_partition_keys()
    assert keys == [d.isoformat() for d in trading_days(start, end)]
    for closed in CLOSED:
        assert closed.isoformat() not in keys


def test_label_horizons_count_sessions():
    from quant_assets.features.labels import label_end

    assert label_end(dt.date(2022, 11, 23), 1) == dt.date(2022, 11, 25)  # over Thanksgiving
    assert label_end(dt.date(2012, 10, 26), 2) == dt.date(2012, 11, 1)  # over Sandy
    assert label_end(dt.date(2018, 12, 4), 5) == dt.date(2018, 12, 12)  # over the 2018-12-05 closure


@pytest.mark.parametrize("name", ["XNYS", "XLON", "XTKS"])
def test_the_calendar_cache_gives_exactly_the_build(name, tmp_path, monkeypatch):
    """A built calendar is written to QUANT_CALENDAR_CACHE and read back equal, field by
    field (sessions, closes, half days), without building it again; the file is keyed by the
    exchange_calendars version."""
    from importlib.metadata import version

    monkeypatch.setenv("QUANT_CALENDAR_CACHE", "off")
    assert calendar._cache_file(name) is None
    fresh = calendar._build.__wrapped__(name)
    monkeypatch.setenv("QUANT_CALENDAR_CACHE", str(tmp_path))
    path = calendar._cache_file(name)
    assert path.parent == tmp_path and f"exchange_calendars-{version('exchange_calendars')}" in path.name
    written = calendar._build.__wrapped__(name)  # builds and writes
    assert path.exists() and written == fresh

    def no_build(_name):
        raise AssertionError("built again although the cache holds it")

    monkeypatch.setattr(calendar, "_from_exchange_calendars", no_build)
    cached = calendar._build.__wrapped__(name)
    assert cached == fresh
    assert cached.days == fresh.days and cached.closes == fresh.closes
    assert cached.special_closes == fresh.special_closes and cached.regular_close == fresh.regular_close
    assert all(c.tzinfo is not None and c.utcoffset() == dt.timedelta(0) for c in cached.closes.values())
    if name == "XNYS":  # the day after Thanksgiving 2022 closed at 13:00 New York
        assert cached.special_closes[dt.date(2022, 11, 25)] == dt.datetime(2022, 11, 25, 18, 0, tzinfo=UTC)


def test_a_bad_calendar_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_CALENDAR_CACHE", str(tmp_path))
    fresh = calendar._build.__wrapped__("XNYS")
    path = calendar._cache_file("XNYS")
    good = path.read_text()
    for bad in ("not json", '{"format": 1, "name": "XLON", "tz": "Europe/London", "days": [], "closes": []}',
                good.replace('"format": 1', '"format": 0'), good[: len(good) // 2]):
        path.write_text(bad)
        assert calendar._build.__wrapped__("XNYS") == fresh
        assert path.read_text() == good  # written again, whole
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
