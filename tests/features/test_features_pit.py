"""Example tests of the point-in-time reads on small hand-built frames."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from quant_assets.calendar import session_close, trading_days
from quant_assets.features import FeatureConfig, as_of, compute_features, total_return_index
from quant_assets.features.pit import (
    context_days,
    fundamentals_as_of,
    pit_panel,
    pit_universe,
)

UTC = dt.UTC
TIME = pl.Datetime("us", "UTC")
DAYS = trading_days(dt.date(2024, 3, 1), dt.date(2024, 6, 28))


def at(day: dt.date, hour: float | None = None) -> dt.datetime:
    """`hour` UTC hours after the day's midnight; default: the session's close (bars are
    known at the close, which is also the default cutoff)."""
    if hour is None:
        return session_close(day)
    return dt.datetime.combine(day, dt.time(0), tzinfo=UTC) + dt.timedelta(hours=hour)


def bars_frame(rows) -> pl.DataFrame:
    """rows: (date, instrument, close[, volume[, knowledge_time]])."""
    out = []
    for row in rows:
        day, inst, close = row[:3]
        volume = row[3] if len(row) > 3 else 1000.0
        known = row[4] if len(row) > 4 else at(day)
        out.append((day, inst, close, close * 1.01, close * 0.99, close, volume, known))
    return pl.DataFrame(out, schema={"date": pl.Date, "instrument_id": pl.String, "open": pl.Float64,
                                     "high": pl.Float64, "low": pl.Float64, "close": pl.Float64,
                                     "volume": pl.Float64, "knowledge_time": TIME}, orient="row")


def actions_frame(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"instrument_id": pl.String, "ex_date": pl.Date, "split_ratio": pl.Float64,
                                      "cash_dividend": pl.Float64, "knowledge_time": TIME}, orient="row")


def funds_frame(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"instrument_id": pl.String, "field": pl.String, "period_end": pl.Date,
                                      "value": pl.Float64, "knowledge_time": TIME}, orient="row")


def universe_frame(ids, listed_until=None) -> pl.DataFrame:
    return pl.DataFrame({"instrument_id": ids, "sector": ["S"] * len(ids),
                         "listed_from": [dt.date(2020, 1, 1)] * len(ids),
                         "listed_until": [listed_until] * len(ids)},
                        schema={"instrument_id": pl.String, "sector": pl.String, "listed_from": pl.Date,
                                "listed_until": pl.Date})


def test_as_of_takes_the_latest_version_known_at_the_cutoff():
    d0, d1, d2 = DAYS[:3]
    frame = funds_frame([
        ("A", "x", d0, 1.0, at(d0, 10)),
        ("A", "x", d0, 2.0, at(d1, 21)),  # exactly at the cutoff: visible
        ("A", "x", d0, 3.0, at(d1, 21.01)),  # after it: not yet
        ("B", "x", d0, 9.0, at(d2, 1)),
    ])
    out = as_of(frame, [d0, d1, d2], by=["instrument_id", "field", "period_end"]).sort("as_of", "instrument_id")
    assert out.select("as_of", "instrument_id", "value").rows() == [
        (d0, "A", 1.0), (d1, "A", 2.0), (d2, "A", 3.0), (d2, "B", 9.0)]
    # a different cutoff time moves the boundary
    early = as_of(frame, [d1], by=["instrument_id", "field", "period_end"], cutoff_time=dt.time(9))
    assert early["value"].to_list() == [1.0]
    with pytest.raises(ValueError, match="exactly one"):
        as_of(frame, by="instrument_id")


def test_split_announced_after_its_ex_date_is_not_applied_before_the_announcement():
    days = DAYS[:10]
    ex, announced = days[5], days[7]
    bars = bars_frame([(d, "A", 100.0 if i < 5 else 50.0, 1000.0 if i < 5 else 2000.0) for i, d in enumerate(days)])
    actions = actions_frame([("A", ex, 2.0, 0.0, at(announced, 10))])
    panel = pit_panel(bars, actions, days[5:])
    before = panel.filter(pl.col("as_of") == days[6])  # ex passed, split not yet known
    after = panel.filter(pl.col("as_of") == days[7])
    assert before.filter(pl.col("date") >= ex)["close"].to_list() == [50.0] * 2
    assert before.filter(pl.col("date") == ex)["ret"].to_list() == [-0.5]
    # forward adjustment: the bars from the ex_date on move to the basis of the first day
    assert after["close"].to_list() == [100.0] * 8
    assert after["volume"].to_list() == [1000.0] * 8
    assert after.filter(pl.col("date") >= ex)["traded_close"].to_list() == [50.0] * 3  # as traded
    assert after.filter(pl.col("date") == ex)["ret"].to_list() == [0.0]
    # an announcement after the cutoff of its day counts from the next day
    late = actions_frame([("A", ex, 2.0, 0.0, at(announced, 21.5))])
    panel = pit_panel(bars, late, [days[7], days[8]])
    assert panel.filter((pl.col("as_of") == days[7]) & (pl.col("date") == ex))["close"][0] == 50.0
    assert panel.filter((pl.col("as_of") == days[8]) & (pl.col("date") == ex))["close"][0] == 100.0
    # and the 5-day return feature follows the same knowledge
    uni = universe_frame(["A"])
    empty = funds_frame([])
    feats = compute_features(uni, bars, actions, empty, [days[6], days[7]], FeatureConfig(features=("return_5d",)))
    assert feats["return_5d"].to_list() == [pytest.approx(-0.5), pytest.approx(0.0)]


def test_dividend_factor_uses_the_close_before_the_ex_date():
    days = DAYS[:6]
    bars = bars_frame([(d, "A", c) for d, c in zip(days, [100.0, 100.0, 100.0, 98.0, 98.0, 98.0], strict=True)])
    actions = actions_frame([("A", days[3], 1.0, 2.0, at(days[0], 9))])
    panel = pit_panel(bars, actions, [days[5]])
    # the bars from the ex-date on are divided by (1 - 2 / 100): the basis of the first day
    assert panel["close"].to_list() == pytest.approx([100.0] * 6)
    assert panel["volume"].to_list() == [1000.0] * 6  # dividends do not touch volume
    # before the ex-date the dividend is known but not applied
    panel = pit_panel(bars, actions, [days[2]])
    assert panel["close"].to_list() == [100.0] * 3


def test_missing_bars_and_late_bars_follow_the_market_days_of_the_context():
    days = DAYS[:5]
    bars = bars_frame([
        (days[0], "A", 10.0), (days[1], "A", 11.0), (days[3], "A", 12.0), (days[4], "A", 13.0),
        (days[0], "B", 20.0), (days[1], "B", 20.0), (days[2], "B", 20.0, 1.0, at(days[3], 9)),  # late bar
        (days[3], "B", 20.0), (days[4], "B", 21.0),
    ])
    md = context_days(bars, [days[2], days[3]])
    # no bar of days[2] known on days[2]: not a market day as of days[2], one as of days[3]
    assert md.filter(pl.col("as_of") == days[2])["date"].to_list() == days[:2]
    assert md.filter(pl.col("as_of") == days[3])["date"].to_list() == days[:4]
    panel = pit_panel(bars, actions_frame([]), [days[4]])
    a = panel.filter(pl.col("instrument_id") == "A")
    assert a["date"].to_list() == days
    assert a["close"].to_list() == [10.0, 11.0, None, 12.0, 13.0]
    assert a["ret"].to_list() == [None, pytest.approx(0.1), None, None, pytest.approx(13 / 12 - 1)]
    # universe: a bar of D known at the cutoff and listed
    uni = universe_frame(["A", "B"])
    assert pit_universe(uni, bars, [days[2], days[3]]).rows() == [(days[3], "A", "S"), (days[3], "B", "S")]
    delisted = universe_frame(["A", "B"], listed_until=days[2])
    assert pit_universe(delisted, bars, [days[3]]).height == 0


def test_context_is_the_year_to_date_after_a_fixed_number_of_market_days():
    days = trading_days(dt.date(2023, 12, 20), dt.date(2024, 1, 12))
    bars = bars_frame([(d, "A", 10.0) for d in days if d != dt.date(2023, 12, 27)])  # no bar that day
    new_year = [d for d in days if d.year == 2024]
    ctx = context_days(bars, [new_year[0], new_year[5]], before=3)
    # three market days before 1 January (27 December had no bar), then the year to date
    assert ctx.filter(pl.col("as_of") == new_year[0])["date"].to_list() == [
        dt.date(2023, 12, 26), dt.date(2023, 12, 28), dt.date(2023, 12, 29), new_year[0]]
    assert ctx.filter(pl.col("as_of") == new_year[5])["date"].to_list()[3:] == new_year[:6]
    # the same start for every day of the year: a day's context is a prefix of a later day's
    assert ctx.filter(pl.col("as_of") == new_year[5])["date"].to_list()[:3] == [
        dt.date(2023, 12, 26), dt.date(2023, 12, 28), dt.date(2023, 12, 29)]


def test_fundamentals_as_of_ttm_year_ago_and_split_adjusted_shares():
    quarters = [dt.date(2023, 3, 31), dt.date(2023, 6, 30), dt.date(2023, 9, 30), dt.date(2023, 12, 31),
                dt.date(2024, 3, 31)]
    rows = []
    for i, pe in enumerate(quarters):
        known = at(pe + dt.timedelta(days=30), 12)
        rows += [("A", "net_income", pe, float(i + 1), known), ("A", "shares_outstanding", pe, 100.0, known)]
    funds = funds_frame(rows)
    splits = actions_frame([("A", dt.date(2024, 4, 15), 2.0, 0.0, at(dt.date(2024, 4, 1), 12))])
    day_3q, day_5q = dt.date(2023, 11, 15), dt.date(2024, 5, 15)
    out = fundamentals_as_of(funds, splits, [day_3q, day_5q]).sort("as_of")
    first, last = out.row(0, named=True), out.row(1, named=True)
    assert first["net_income"] == 3.0 and first["net_income_ttm"] is None  # three quarters known
    assert last["net_income"] == 5.0 and last["net_income_ttm"] == 2.0 + 3 + 4 + 5
    assert last["net_income_year_ago"] == 1.0
    assert last["shares_outstanding"] == 200.0  # the April split is after the March period end
    assert last["shares_outstanding_year_ago"] == 200.0
    # stale: nothing within the maximum age
    stale = fundamentals_as_of(funds, splits, [dt.date(2025, 3, 1)])
    assert stale.height == 0


def test_total_return_index_adds_dividends_and_removes_splits():
    days = DAYS[:4]
    bars = bars_frame([(days[0], "A", 100.0), (days[1], "A", 101.0), (days[2], "A", 50.0), (days[3], "A", 49.0)])
    actions = actions_frame([("A", days[2], 2.0, 0.0, at(days[3], 23)), ("A", days[3], 1.0, 1.0, at(days[3], 23))])
    tr = total_return_index(bars, actions)["tr_close"].to_list()
    assert tr[-1] == 49.0
    assert tr[2] / tr[1] - 1 == pytest.approx(2 * 50.0 / 101.0 - 1)
    assert tr[3] / tr[2] - 1 == pytest.approx((49.0 + 1.0) / 50.0 - 1)
    assert tr[1] / tr[0] - 1 == pytest.approx(0.01)


def test_fundamentals_with_a_single_quarter_known():
    # one row per (instrument, field): no trailing sum, no year-ago quarter, typed nulls
    day = dt.date(2024, 5, 15)
    funds = funds_frame([("A", "net_income", dt.date(2024, 3, 31), 5.0, at(dt.date(2024, 4, 30), 12)),
                         ("A", "revenue", dt.date(2024, 3, 31), 50.0, at(dt.date(2024, 4, 30), 12))])
    out = fundamentals_as_of(funds, actions_frame([]), [day])
    assert out.select("net_income", "revenue").row(0) == (5.0, 50.0)
    assert out.schema["net_income_year_ago"] == pl.Float64 and out["net_income_year_ago"].to_list() == [None]
    assert out["net_income_ttm"].to_list() == [None]
