"""The market simulator: determinism, contract schemas, realism, the predictable component."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_assets.calendar import cutoff, is_trading_day, session_close
from quant_assets.data.quality import (
    check_corporate_actions,
    check_fundamentals,
    check_market_bars,
    check_universe,
)
from quant_assets.data.reference import current_universe
from quant_assets.data.simulator import (
    CORPORATE_ACTIONS_SCHEMA,
    FUNDAMENTAL_FIELDS,
    FUNDAMENTALS_SCHEMA,
    MARKET_BARS_SCHEMA,
    UNIVERSE_SCHEMA,
    MarketData,
    SimulatorConfig,
    planted_signal,
    simulate_market,
)


@lru_cache(maxsize=4)
def _market(**kwargs) -> MarketData:
    return simulate_market(SimulatorConfig(**kwargs))


def _adjusted(md: MarketData) -> pl.DataFrame:
    """Bars with the split- and dividend-adjusted log return of each day (null on day 1)."""
    actions = (
        md.corporate_actions.group_by("instrument_id", "ex_date")
        .agg(pl.col("split_ratio").product(), pl.col("cash_dividend").sum())
        .rename({"ex_date": "date"})
    )
    return (
        md.market_bars.join(actions, on=["instrument_id", "date"], how="left")
        .with_columns(pl.col("split_ratio").fill_null(1.0), pl.col("cash_dividend").fill_null(0.0))
        .sort("instrument_id", "date")
        .with_columns(
            prev_close=pl.col("close").shift(1).over("instrument_id"),
        )
        .with_columns(
            adj_ret=(
                (pl.col("close") * pl.col("split_ratio") + pl.col("cash_dividend"))
                / pl.col("prev_close")
            ).log()
        )
    )


def _reversal_ic(md: MarketData) -> float:
    bars = _adjusted(md).with_columns(
        past5=pl.col("adj_ret").rolling_sum(5).over("instrument_id"),
    )
    bars = bars.with_columns(next5=pl.col("past5").shift(-5).over("instrument_id"))
    daily = (
        bars.drop_nulls(["past5", "next5"])
        .group_by("date")
        .agg(ic=pl.corr(-pl.col("past5"), pl.col("next5"), method="spearman"))
    )
    return float(daily["ic"].mean())


# --- determinism -------------------------------------------------------------------------


def test_same_config_gives_identical_frames():
    cfg = SimulatorConfig(n_instruments=30, end=dt.date(2022, 12, 30))
    a, b = simulate_market(cfg), simulate_market(cfg)
    for name in MarketData._fields:
        assert getattr(a, name).equals(getattr(b, name)), name


def test_different_seed_gives_different_data():
    a = simulate_market(SimulatorConfig(n_instruments=20, end=dt.date(2022, 6, 30), seed=1))
    b = simulate_market(SimulatorConfig(n_instruments=20, end=dt.date(2022, 6, 30), seed=2))
    assert not a.market_bars.equals(b.market_bars)
    assert not a.fundamentals.equals(b.fundamentals)


# --- contract ----------------------------------------------------------------------------


def test_schemas_and_column_order_are_the_contract():
    md = _market()
    for frame, schema in zip(
        md,
        (UNIVERSE_SCHEMA, MARKET_BARS_SCHEMA, CORPORATE_ACTIONS_SCHEMA, FUNDAMENTALS_SCHEMA),
        strict=True,
    ):
        assert list(frame.schema.items()) == list(schema.items())
    assert md.market_bars.schema["knowledge_time"] == pl.Datetime("us", "UTC")


def test_default_frames_pass_every_quality_rule():
    md = _market()
    assert check_universe(md.universe) == []
    assert check_market_bars(md.market_bars, md.universe) == []
    assert check_corporate_actions(md.corporate_actions) == []
    assert check_fundamentals(md.fundamentals) == []


def test_rows_are_sorted_deterministically():
    md = _market()
    bars = md.market_bars
    assert bars.equals(bars.sort("date", "instrument_id"))
    assert md.universe.equals(md.universe.sort("instrument_id", "knowledge_time"))
    assert current_universe(md.universe)["instrument_id"].to_list() == [f"SIM{i:04d}" for i in range(1, 101)]
    assert md.corporate_actions.equals(
        md.corporate_actions.sort("instrument_id", "ex_date", "knowledge_time")
    )
    keys = ["instrument_id", "period_end", "field", "knowledge_time"]
    assert md.fundamentals.equals(md.fundamentals.sort(keys))


def test_ids_sectors_and_trading_days():
    md = _market()
    assert set(md.universe["sector"].unique()) == {f"S{k:02d}" for k in range(1, 9)}
    days = md.market_bars["date"].unique().to_list()
    assert all(is_trading_day(d) for d in days)
    assert min(days) == dt.date(2022, 1, 3) and max(days) == dt.date(2024, 12, 31)


# --- universe ----------------------------------------------------------------------------


def test_listings_and_delistings_inside_the_range():
    md = _market()
    start, end = dt.date(2022, 1, 3), dt.date(2024, 12, 31)
    uni = current_universe(md.universe)
    late = uni.filter(pl.col("listed_from") > start)
    delisted = uni.filter(pl.col("listed_until").is_not_null())
    assert 3 <= late.height <= 25
    assert 3 <= delisted.height <= 25
    assert (delisted["listed_until"] < end).all()
    span = md.market_bars.group_by("instrument_id").agg(
        first=pl.col("date").min(), last=pl.col("date").max(), n=pl.len()
    )
    joined = uni.join(span, on="instrument_id")
    assert joined.height == uni.height  # delisted names keep their history
    assert (joined["first"] >= joined["listed_from"]).all()
    late_ids = joined.filter(pl.col("listed_from") > start)
    assert (late_ids["first"] == late_ids["listed_from"]).all()
    gone = joined.filter(pl.col("listed_until").is_not_null())
    assert (gone["last"] == gone["listed_until"]).all()
    alive = joined.filter(pl.col("listed_until").is_null())
    assert (alive["last"] == end).all()
    # bitemporal: a delisting is a second version, known at the close of the last day
    # (no day before it sees the future delisting); the listing version is known from its start
    versions = md.universe.join(delisted.select("instrument_id"), on="instrument_id")
    assert versions.height == 2 * delisted.height
    first = versions.filter(pl.col("listed_until").is_null())
    second = versions.filter(pl.col("listed_until").is_not_null())
    assert (first["knowledge_time"].dt.date() == first["listed_from"]).all()
    assert second["knowledge_time"].to_list() == [session_close(d) for d in second["listed_until"]]


# --- bars --------------------------------------------------------------------------------


def test_ohlc_consistent_positive_and_volume_positive():
    bars = _market().market_bars
    o, h, lo, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
    assert (lo > 0).all()
    assert (lo <= np.minimum(o, c)).all()
    assert (np.maximum(o, c) <= h).all()
    assert (h > lo).all()
    assert (bars["volume"] > 0).all()
    assert bars.select(pl.all().is_null().any()).row(0) == (False,) * bars.width


def test_bar_knowledge_time_is_the_session_close_and_the_default_cutoff():
    bars = _market().market_bars
    days = bars["date"].unique().sort()
    closes = pl.DataFrame({"date": days, "expected": [session_close(d) for d in days]})
    joined = bars.join(closes, on="date")
    assert (joined["knowledge_time"] == joined["expected"]).all()
    # 16:00 New York: 21:00 UTC in winter, 20:00 UTC in summer, 18:00 UTC on the half day
    kt = dict(bars.group_by("date").agg(pl.col("knowledge_time").first()).iter_rows())
    assert kt[dt.date(2022, 1, 14)] == dt.datetime(2022, 1, 14, 21, tzinfo=dt.UTC)
    assert kt[dt.date(2022, 7, 1)] == dt.datetime(2022, 7, 1, 20, tzinfo=dt.UTC)
    assert kt[dt.date(2022, 11, 25)] == dt.datetime(2022, 11, 25, 18, tzinfo=dt.UTC)
    assert dt.date(2022, 11, 24) not in kt  # Thanksgiving: no bars
    sample = bars.row(0, named=True)
    assert sample["knowledge_time"] <= cutoff(sample["date"])


def test_volatility_clusters_and_volume_follows_volatility():
    bars = _adjusted(_market()).drop_nulls("adj_ret")
    daily = bars.group_by("date").agg(abs_ret=pl.col("adj_ret").abs().mean()).sort("date")
    x = daily["abs_ret"].to_numpy()
    assert np.corrcoef(x[:-1], x[1:])[0, 1] > 0.2  # calm and stressed spells
    # within an instrument, bigger moves come with more volume
    corr = (
        bars.group_by("instrument_id")
        .agg(c=pl.corr(pl.col("adj_ret").abs(), pl.col("volume").log()))
        .drop_nans()["c"]
        .median()
    )
    assert corr > 0.05


def test_daily_adjusted_returns_are_plausible():
    bars = _adjusted(_market()).drop_nulls("adj_ret")
    vol = bars.group_by("instrument_id").agg(v=pl.col("adj_ret").std() * np.sqrt(252))["v"]
    assert 0.15 < vol.median() < 0.6
    assert bars["adj_ret"].abs().max() < 0.7


# --- corporate actions -------------------------------------------------------------------


def test_splits_divide_the_traded_price_by_the_ratio():
    md = _market()
    bars = _adjusted(md)
    splits = md.corporate_actions.filter(pl.col("split_ratio") != 1.0)
    assert splits.height >= 3
    assert set(splits["split_ratio"].unique()) <= {2.0, 3.0, 0.2}
    on_ex = splits.join(
        bars, left_on=["instrument_id", "ex_date"], right_on=["instrument_id", "date"]
    )
    assert on_ex.height == splits.height
    raw = (on_ex["close"] / on_ex["prev_close"]).log()
    # the raw price drops by log(ratio); the adjusted return is an ordinary day's move
    assert ((raw + on_ex["split_ratio"].log()).abs() < 0.2).all()
    assert (on_ex["adj_ret"].abs() < 0.2).all()
    assert (raw.abs() > 0.4).all()


def test_dividends_are_quarterly_small_and_drop_the_price():
    md = _market()
    divs = md.corporate_actions.filter(pl.col("cash_dividend") > 0)
    assert divs.height >= 50
    assert (divs["split_ratio"] == 1.0).all()
    on_ex = divs.join(
        _adjusted(md), left_on=["instrument_id", "ex_date"], right_on=["instrument_id", "date"]
    )
    yield_q = on_ex["cash_dividend"] / on_ex["prev_close"]
    assert ((yield_q > 0) & (yield_q < 0.03)).all()
    gaps = divs.group_by("instrument_id").agg(
        g=pl.col("ex_date").diff().dt.total_days().drop_nulls()
    )
    all_gaps = gaps.explode("g")["g"].drop_nulls()
    assert 70 <= all_gaps.median() <= 110


def test_actions_announced_5_to_30_days_before_ex_date():
    acts = _market().corporate_actions
    lead = (
        acts["ex_date"].cast(pl.Datetime("us")).dt.replace_time_zone("UTC") - acts["knowledge_time"]
    ).dt.total_hours()
    # announced on a calendar day 5..30 days before ex, at some time of that day
    assert (lead > 4 * 24).all() and (lead <= 30 * 24).all()
    hours = acts["knowledge_time"].dt.hour()
    assert hours.n_unique() > 5


# --- fundamentals ------------------------------------------------------------------------


def test_fundamentals_fields_and_publication_lag():
    f = _market().fundamentals
    assert set(f["field"].unique()) == set(FUNDAMENTAL_FIELDS)
    first = f.group_by("instrument_id", "field", "period_end").agg(
        kt=pl.col("knowledge_time").min()
    )
    lag = (first["kt"].dt.date() - first["period_end"]).dt.total_days()
    assert lag.min() >= 25 and lag.max() <= 62  # 25-60 days, rolled to a weekday
    assert set(first["period_end"].dt.month().unique()) == {3, 6, 9, 12}
    assert (f["knowledge_time"].dt.date() <= dt.date(2024, 12, 31)).all()


def test_restatements_are_later_rows_with_changed_values():
    f = _market().fundamentals
    ordered = f.sort("instrument_id", "field", "period_end", "knowledge_time")
    grouped = ordered.group_by("instrument_id", "field", "period_end", maintain_order=True).agg(
        pl.col("value"), pl.col("knowledge_time")
    )
    restated = grouped.filter(pl.col("value").list.len() > 1)
    share = (f.height - grouped.height) / f.height
    assert 0.03 <= share <= 0.12
    for row in restated.head(50).iter_rows(named=True):
        assert row["knowledge_time"][1] > row["knowledge_time"][0]
        assert row["value"][1] != row["value"][0]
    assert "shares_outstanding" not in restated["field"].to_list()


def test_shares_outstanding_follow_splits():
    md = _market()
    shares = md.fundamentals.filter(pl.col("field") == "shares_outstanding").sort(
        "instrument_id", "period_end"
    )
    splits = md.corporate_actions.filter(pl.col("split_ratio") != 1.0)
    checked = 0
    for s in splits.iter_rows(named=True):
        own = shares.filter(pl.col("instrument_id") == s["instrument_id"])
        before = own.filter(pl.col("period_end") < s["ex_date"]).tail(1)
        after = own.filter(pl.col("period_end") >= s["ex_date"]).head(1)
        if before.height == 0 or after.height == 0:
            continue
        between = splits.filter(
            (pl.col("instrument_id") == s["instrument_id"])
            & (pl.col("ex_date") > before["period_end"][0])
            & (pl.col("ex_date") <= after["period_end"][0])
        )
        expected = float(np.prod(between["split_ratio"].to_numpy()))
        jump = after["value"][0] / before["value"][0]
        assert abs(np.log(jump / expected)) < 0.05  # issuance drift is ~1% a quarter
        checked += 1
    assert checked >= 2


def test_book_to_price_is_plausible():
    f = _market().fundamentals
    assert (
        f.filter(pl.col("field").is_in(["book_equity", "total_assets", "revenue"]))["value"] > 0
    ).all()


# --- the predictable component -----------------------------------------------------------


def test_short_term_reversal_is_present_and_modest():
    ic = _reversal_ic(_market())
    assert 0.01 < ic < 0.08


def test_reversal_disappears_when_switched_off():
    with_signal = _reversal_ic(_market(seed=3))
    without = _reversal_ic(_market(seed=3, reversal_strength=0.0, value_strength=0.0))
    assert with_signal - without > 0.02


# --- config and speed --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_instruments": 1}, "n_instruments"),
        ({"end": dt.date(2021, 1, 1)}, "before start"),
        ({"garch_alpha": 0.2, "garch_beta": 0.85}, "GARCH"),
        ({"late_listing_fraction": 1.5}, "late_listing_fraction"),
        ({"t_dof": 2.0}, "t_dof"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulatorConfig(**kwargs)


def test_too_short_range_is_rejected():
    with pytest.raises(ValueError, match="fewer than 2 trading days"):
        simulate_market(SimulatorConfig(start=dt.date(2022, 1, 8), end=dt.date(2022, 1, 9)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 12),
    seed=st.integers(0, 2**32),
    days=st.integers(5, 400),
    late=st.floats(0.0, 1.0),
    delist=st.floats(0.0, 1.0),
)
def test_any_small_market_passes_quality_rules(n, seed, days, late, delist):
    start = dt.date(2021, 6, 1)
    md = simulate_market(
        SimulatorConfig(
            n_instruments=n,
            seed=seed,
            start=start,
            end=start + dt.timedelta(days=days),
            late_listing_fraction=late,
            delisting_fraction=delist,
        )
    )
    assert check_universe(md.universe) == []
    assert check_market_bars(md.market_bars, md.universe) == []
    assert check_corporate_actions(md.corporate_actions) == []
    assert check_fundamentals(md.fundamentals) == []
    assert current_universe(md.universe).height == n


def test_planted_signal_is_the_known_edge():
    """``planted_signal`` (the benchmark of how much edge a model learns) forecasts the next
    five days' adjusted returns better than plain reversal, matches the market it replays
    (same ids and days), and carries no edge when the simulator plants none."""
    def ic(signal: pl.DataFrame, md: MarketData) -> float:
        bars = _adjusted(md).with_columns(
            next5=pl.col("adj_ret").rolling_sum(5).shift(-5).over("instrument_id"))
        joined = bars.join(signal, on=["date", "instrument_id"]).drop_nulls(["next5"])
        daily = joined.group_by("date").agg(
            ic=pl.corr(pl.col("expected_idio_return"), pl.col("next5"), method="spearman"))
        return float(daily["ic"].mean())

    md = _market(seed=3)
    planted = planted_signal(SimulatorConfig(seed=3))
    assert planted.height == md.market_bars["date"].n_unique() * md.universe["instrument_id"].n_unique()
    known = ic(planted, md)
    assert 0.03 < known < 0.15 and known > _reversal_ic(md)
    flat = SimulatorConfig(seed=3, reversal_strength=0.0, value_strength=0.0)
    assert planted_signal(flat)["expected_idio_return"].abs().max() == 0.0
