"""The leakage guard's pure core and online scoring, on a small simulated market."""

from __future__ import annotations

import datetime as dt
import functools

import polars as pl
import pytest

from quant_assets.calendar import trading_days
from quant_assets.data.simulator import SimulatorConfig, simulate_market
from quant_assets.features import (
    FeatureConfig,
    compute_features,
    features_for_scoring,
    guard,
)

SOME = ("return_5d", "volatility_20d", "log_market_cap", "return_5d_sector_rank")
CONFIG = FeatureConfig(features=SOME)
DAYS = trading_days(dt.date(2023, 5, 1), dt.date(2023, 5, 5))


@functools.cache
def market():
    return simulate_market(SimulatorConfig(n_instruments=25, start=dt.date(2023, 1, 2), end=dt.date(2023, 6, 30), seed=3))


def _inputs():
    m = market()
    return m.universe, m.market_bars, m.corporate_actions, m.fundamentals


def test_sample_days_is_seeded_distinct_and_depends_on_the_range():
    days = trading_days(dt.date(2023, 1, 2), dt.date(2023, 12, 29))
    first = guard.sample_days(days, 3, seed=7)
    assert first == guard.sample_days(list(reversed(days)), 3, seed=7)
    assert len(set(first)) == 3 and first == sorted(first) and set(first) <= set(days)
    assert guard.sample_days(days, 3, seed=8) != first
    assert guard.sample_days(days[:-1], 3, seed=7) != first
    assert guard.sample_days(days[:2], 3, seed=7) == days[:2]
    assert guard.sample_days(days, 0, seed=7) == []


def test_truncation_keeps_only_what_was_known_at_the_cutoff():
    _, bars, actions, funds = _inputs()
    day = DAYS[2]
    cut = dt.datetime.combine(day, dt.time(21), tzinfo=dt.UTC)
    b, a, f = guard.truncate_at_cutoff(bars, actions, funds, day, dt.time(21))
    assert b["date"].max() == day and b["knowledge_time"].max() <= cut
    assert a["knowledge_time"].max() <= cut and f["knowledge_time"].max() <= cut
    assert b.height == bars.filter((pl.col("date") <= day) & (pl.col("knowledge_time") <= cut)).height


def test_registry_features_of_a_range_have_no_leak():
    universe, bars, actions, funds = _inputs()
    stored = compute_features(universe, bars, actions, funds, DAYS, CONFIG)
    assert guard.find_leaks(stored, universe, bars, actions, funds, DAYS, CONFIG) == []


def test_a_tampered_value_and_a_missing_row_are_named():
    universe, bars, actions, funds = _inputs()
    stored = compute_features(universe, bars, actions, funds, DAYS, CONFIG)
    day, victim = DAYS[1], stored.filter(pl.col("date") == DAYS[1])["instrument_id"][3]
    tampered = stored.with_columns(
        pl.when((pl.col("date") == day) & (pl.col("instrument_id") == victim))
        .then(pl.col("volatility_20d") * (1 + 1e-15) + 1e-18)
        .otherwise(pl.col("volatility_20d"))
        .alias("volatility_20d")
    )
    leaks = guard.find_leaks(tampered, universe, bars, actions, funds, DAYS, CONFIG)
    assert [(x.day, x.feature, x.instruments) for x in leaks] == [(day, "volatility_20d", (victim,))]
    dropped = stored.filter(~((pl.col("date") == DAYS[3]) & (pl.col("instrument_id") == victim)))
    leaks = guard.find_leaks(dropped, universe, bars, actions, funds, DAYS, CONFIG)
    assert [(x.day, x.feature, x.instruments) for x in leaks] == [(DAYS[3], guard.ROW_SET, (victim,))]
    message = guard.format_leaks(leaks)
    assert DAYS[3].isoformat() in message and victim in message


def test_a_feature_reading_the_next_day_is_caught(plugins):
    plugins("leaky_snapshot")  # peek_next_close: shift(-1) over the instrument in the cross-section
    universe, bars, actions, funds = _inputs()
    config = FeatureConfig(features=(*SOME, "peek_next_close"))
    stored = compute_features(universe, bars, actions, funds, DAYS, config)
    leaks = guard.find_leaks(stored, universe, bars, actions, funds, DAYS, config)
    # every day but the batch's last sees a next day; only the leaky feature differs
    assert {x.feature for x in leaks} == {"peek_next_close"}
    assert sorted({x.day for x in leaks}) == DAYS[:-1]
    assert "peek_next_close" in guard.format_leaks(leaks)


@pytest.mark.parametrize("day", [DAYS[0], DAYS[-1]])
def test_scoring_from_live_inputs_equals_the_batch_computation(day):
    universe, bars, actions, funds = _inputs()
    # the live tables hold rows published long after the day's cutoff
    assert bars["date"].max() > day + dt.timedelta(days=30)
    batch = compute_features(universe, bars, actions, funds, DAYS).filter(pl.col("date") == day)
    online = features_for_scoring(day, universe, bars, actions, funds)
    assert online.schema == batch.schema and online.equals(batch)


def test_a_series_expression_that_reads_the_next_row_is_caught(plugins):
    # Series features of a year's days are evaluated once on the year's context (pit.py);
    # a non-causal expression (shift(-1)) then reads the next market day inside a batch.
    # Computed alone, the day has no next row: the guard recomputes it so and flags it.
    plugins("leaky_series")  # peek_series: close.shift(-1) / close - 1
    universe, bars, actions, funds = _inputs()
    config = FeatureConfig(features=("return_5d", "peek_series"))
    stored = compute_features(universe, bars, actions, funds, DAYS, config)
    assert stored.height > 50 and stored["peek_series"].null_count() < stored.height
    leaks = guard.find_leaks(stored, universe, bars, actions, funds, DAYS[:3], config)
    assert {leak.feature for leak in leaks} == {"peek_series"}
    # the last day of the batch has no next row either way: nothing to flag there
    assert guard.find_leaks(stored, universe, bars, actions, funds, [DAYS[-1]], config) == []


def test_a_sample_of_instruments_is_recomputed_exactly_and_still_catches_a_leak(plugins):
    universe, bars, actions, funds = _inputs()
    stored = compute_features(universe, bars, actions, funds, DAYS)
    assert guard.find_leaks(stored, universe, bars, actions, funds, DAYS[:2], instruments=5, seed=3) == []
    plugins("leaky_series")
    config = FeatureConfig(features=("return_5d", "peek_series"))
    leaky = compute_features(universe, bars, actions, funds, DAYS, config)
    leaks = guard.find_leaks(leaky, universe, bars, actions, funds, DAYS[:1], config, instruments=5, seed=3)
    assert [leak.feature for leak in leaks] == ["peek_series"]
    assert len(leaks[0].instruments) <= 5


def test_the_guard_recomputes_with_the_universe_as_known_at_the_cutoff():
    # the universe is bitemporal: a version published after cutoff(D) must not reach the
    # recomputation, one published at the cutoff must
    from quant_assets.calendar import cutoff
    from quant_assets.features.guard import universe_at_cutoff

    day = dt.date(2022, 6, 1)
    rule = FeatureConfig().cutoff_time
    limit = cutoff(day, rule)
    rows = [("A", "S", dt.date(2020, 1, 2), None, limit),
            ("A", "S", dt.date(2020, 1, 2), day, limit + dt.timedelta(microseconds=1))]
    universe = pl.DataFrame(rows, schema={"instrument_id": pl.String, "sector": pl.String, "listed_from": pl.Date,
                                          "listed_until": pl.Date, "knowledge_time": pl.Datetime("us", "UTC")},
                            orient="row")
    assert universe_at_cutoff(universe, day, rule)["listed_until"].to_list() == [None]
    assert universe_at_cutoff(universe, day + dt.timedelta(days=1), rule).height == 2
