"""Quality rules: each rule catches one small bad example and passes clean data."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import polars as pl
import pytest

from quant_assets.data.quality import (
    RULE_DOCS,
    RULES_BY_TABLE,
    Violation,
    check_corporate_actions,
    check_fundamentals,
    check_market_bars,
    check_universe,
    format_violations,
)
from quant_assets.data.simulator import MarketData, SimulatorConfig, simulate_market


@lru_cache(maxsize=1)
def _md() -> MarketData:
    return simulate_market(SimulatorConfig(n_instruments=6, end=dt.date(2022, 3, 31)))


def _bars() -> pl.DataFrame:
    return _md().market_bars.head(20)


def _set(df: pl.DataFrame, row: int, **values) -> pl.DataFrame:
    """Copy of df with the given columns replaced in one row (values keep the column dtype)."""
    idx = pl.int_range(pl.len()) == row
    return df.with_columns(
        pl.when(idx).then(pl.lit(v, dtype=df.schema[c])).otherwise(pl.col(c)).alias(c)
        for c, v in values.items()
    )


def _rules(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


def test_clean_simulated_tables_pass():
    md = _md()
    assert check_market_bars(md.market_bars, md.universe) == []
    assert check_universe(md.universe) == []
    assert check_corporate_actions(md.corporate_actions) == []
    assert check_fundamentals(md.fundamentals) == []
    assert format_violations([]) == "no violations"


def test_every_rule_is_documented():
    for rules in RULES_BY_TABLE.values():
        for rule in rules:
            assert RULE_DOCS[rule]


# --- market_bars -------------------------------------------------------------------------


def test_schema_missing_column_stops_row_rules():
    out = check_market_bars(_bars().drop("volume"))
    assert _rules(out) == ["schema"]
    assert "missing columns ['volume']" in out[0].message


def test_schema_wrong_dtype():
    out = check_market_bars(_bars().with_columns(pl.col("volume").cast(pl.Int64)))
    assert _rules(out) == ["schema"]
    assert "volume is Int64" in out[0].message


def test_schema_naive_knowledge_time_is_a_dtype_error():
    out = check_market_bars(
        _bars().with_columns(pl.col("knowledge_time").dt.replace_time_zone(None))
    )
    assert _rules(out) == ["schema"]


def test_schema_extra_and_reordered_columns_are_reported():
    assert _rules(check_market_bars(_bars().with_columns(extra=pl.lit(1)))) == ["schema"]
    reordered = _bars().select(pl.col("instrument_id"), pl.exclude("instrument_id"))
    out = check_market_bars(reordered)
    assert _rules(out) == ["schema"] and "column order" in out[0].message


def test_duplicate_key():
    bars = _bars()
    out = check_market_bars(pl.concat([bars, bars.head(2)]))
    assert _rules(out) == ["duplicate_key"]
    assert out[0].n_rows == 4
    assert set(out[0].examples[0]) == {"date", "instrument_id"}


def test_null_key():
    out = check_market_bars(_set(_bars(), 3, instrument_id=None))
    assert _rules(out) == ["null_key"]


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), None])
def test_price_must_be_finite_positive(value):
    out = check_market_bars(_set(_bars(), 2, close=value))
    assert "price_positive_finite" in _rules(out)
    v = next(v for v in out if v.rule == "price_positive_finite")
    assert v.n_rows == 1 and v.examples[0]["instrument_id"] == _bars()["instrument_id"][2]


def test_ohlc_consistency():
    bars = _bars()
    row = bars.row(4, named=True)
    out = check_market_bars(_set(bars, 4, low=max(row["open"], row["close"]) * 1.01))
    assert _rules(out) == ["ohlc_consistency"]
    out = check_market_bars(_set(bars, 5, high=bars["low"][5] * 0.99))
    assert _rules(out) == ["ohlc_consistency"]


@pytest.mark.parametrize("value", [-5.0, float("nan")])
def test_volume(value):
    assert _rules(check_market_bars(_set(_bars(), 1, volume=value))) == ["volume_non_negative"]


def test_optional_fields_may_be_null_but_present_values_are_checked():
    # a close-only source: open/high/low/volume null means "not provided", never a failure
    close_only = _bars().with_columns(pl.lit(None, pl.Float64).alias(c) for c in ("open", "high", "low", "volume"))
    assert check_market_bars(close_only) == []
    # a present high below the close still breaks the OHLC rule with the other fields absent
    row = close_only.row(3, named=True)
    out = check_market_bars(_set(close_only, 3, high=row["close"] * 0.9))
    assert _rules(out) == ["ohlc_consistency"]
    assert _rules(check_market_bars(_set(close_only, 3, low=-1.0))) == ["price_positive_finite"]


def test_knowledge_time_present():
    assert _rules(check_market_bars(_set(_bars(), 0, knowledge_time=None))) == [
        "knowledge_time_present"
    ]


def test_knowledge_time_before_date():
    early = dt.datetime(2022, 1, 2, 23, 59, tzinfo=dt.UTC)  # bar of 2022-01-03 known the day before
    out = check_market_bars(_set(_bars(), 0, knowledge_time=early))
    assert _rules(out) == ["knowledge_time_before_date"]
    assert out[0].examples[0]["date"] == dt.date(2022, 1, 3)
    same_day = dt.datetime(2022, 1, 3, 0, 0, tzinfo=dt.UTC)
    assert check_market_bars(_set(_bars(), 0, knowledge_time=same_day)) == []


@pytest.mark.parametrize("day", [dt.date(2022, 1, 8), dt.date(2021, 12, 24), dt.date(2022, 7, 4)])
def test_trading_day(day):
    out = check_market_bars(_set(_bars(), 0, date=day))
    assert "trading_day" in _rules(out)


def test_unknown_instrument_and_outside_listing():
    md = _md()
    bars = _bars()
    out = check_market_bars(_set(bars, 0, instrument_id="NOPE"), md.universe)
    assert _rules(out) == ["unknown_instrument"]
    assert out[0].examples == [{"date": bars["date"][0], "instrument_id": "NOPE"}]
    first = bars.row(0, named=True)
    uni = md.universe.with_columns(
        listed_from=pl.when(pl.col("instrument_id") == first["instrument_id"])
        .then(pl.lit(first["date"] + dt.timedelta(days=1)))
        .otherwise("listed_from")
    )
    out = check_market_bars(bars, uni)
    assert _rules(out) == ["outside_listing"]
    uni = md.universe.with_columns(
        listed_until=pl.when(pl.col("instrument_id") == first["instrument_id"])
        .then(pl.lit(first["date"] - dt.timedelta(days=1)))
        .otherwise("listed_until")
    )
    assert "outside_listing" in _rules(check_market_bars(bars, uni))


def test_bad_universe_argument_raises():
    with pytest.raises(ValueError, match="universe"):
        check_market_bars(_bars(), _md().universe.drop("listed_from"))


def test_message_names_rule_and_at_most_five_examples():
    bars = _md().market_bars.with_columns(volume=pl.lit(-1.0))
    (v,) = check_market_bars(bars)
    assert v.rule == "volume_non_negative" and v.n_rows == bars.height
    assert len(v.examples) == 5
    assert "volume_non_negative" in v.message and str(bars.height) in v.message
    text = format_violations([v])
    assert "[volume_non_negative]" in text and "1 rule(s) failed" in text


def test_empty_frame_passes():
    assert check_market_bars(_bars().clear(), _md().universe) == []


# --- universe ----------------------------------------------------------------------------


def test_universe_rules():
    uni = _md().universe
    assert _rules(check_universe(uni.drop("sector"))) == ["schema"]
    assert _rules(check_universe(pl.concat([uni, uni.head(1)]))) == ["duplicate_key"]
    assert _rules(check_universe(_set(uni, 0, sector=None))) == ["null_key"]
    bad = _set(uni, 1, listed_from=dt.date(2022, 5, 1), listed_until=dt.date(2022, 4, 1))
    assert _rules(check_universe(bad)) == ["listing_interval"]


# --- corporate actions -------------------------------------------------------------------


def _actions() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "instrument_id": ["A", "A", "B"],
            "ex_date": [dt.date(2022, 3, 1), dt.date(2022, 6, 1), dt.date(2022, 3, 1)],
            "split_ratio": [2.0, 1.0, 1.0],
            "cash_dividend": [0.0, 0.25, 0.1],
            "knowledge_time": [dt.datetime(2022, 2, 10, 14, tzinfo=dt.UTC)] * 3,
        },
        schema={
            "instrument_id": pl.String,
            "ex_date": pl.Date,
            "split_ratio": pl.Float64,
            "cash_dividend": pl.Float64,
            "knowledge_time": pl.Datetime("us", "UTC"),
        },
    )


def test_corporate_action_rules():
    acts = _actions()
    assert check_corporate_actions(acts) == []
    assert _rules(check_corporate_actions(acts.drop("cash_dividend"))) == ["schema"]
    for ratio in (0.0, -2.0, float("inf"), float("nan"), None):
        assert _rules(check_corporate_actions(_set(acts, 0, split_ratio=ratio))) == [
            "split_ratio_positive_finite"
        ]
    for cash in (-0.1, float("nan"), None):
        assert _rules(check_corporate_actions(_set(acts, 1, cash_dividend=cash))) == [
            "cash_dividend_non_negative"
        ]
    assert _rules(check_corporate_actions(pl.concat([acts, acts.tail(1)]))) == ["duplicate_key"]
    assert _rules(check_corporate_actions(_set(acts, 2, knowledge_time=None))) == [
        "knowledge_time_present"
    ]
    assert _rules(check_corporate_actions(_set(acts, 2, ex_date=None))) == ["null_key"]
    # the same ex-date announced twice (a correction) is not a duplicate
    later = acts.tail(1).with_columns(pl.col("knowledge_time") + dt.timedelta(days=1))
    assert check_corporate_actions(pl.concat([acts, later])) == []


# --- fundamentals ------------------------------------------------------------------------


def test_fundamental_rules():
    f = _md().fundamentals
    assert _rules(check_fundamentals(f.rename({"value": "v"}))) == ["schema"]
    assert _rules(check_fundamentals(pl.concat([f, f.head(1)]))) == ["duplicate_key"]
    for value in (float("nan"), float("inf"), None):
        assert _rules(check_fundamentals(_set(f, 0, value=value))) == ["value_finite"]
    early = dt.datetime(2021, 12, 30, 12, tzinfo=dt.UTC)
    bad = _set(f, 0, period_end=dt.date(2021, 12, 31), knowledge_time=early)
    out = check_fundamentals(bad)
    assert _rules(out) == ["knowledge_time_before_period_end"]
    assert out[0].examples[0]["period_end"] == dt.date(2021, 12, 31)
    assert _rules(check_fundamentals(_set(f, 0, knowledge_time=None))) == ["knowledge_time_present"]
    assert _rules(check_fundamentals(_set(f, 0, field=None))) == ["null_key"]
