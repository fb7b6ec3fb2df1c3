"""Registry versions, compute_features output contract, determinism and honest windows."""

from __future__ import annotations

import datetime as dt
import functools

import polars as pl
import pytest

from quant_assets.calendar import cutoff, shift_trading_days, trading_days
from quant_assets.data.simulator import SimulatorConfig, simulate_market
from quant_assets.features import (
    Feature,
    FeatureConfig,
    active_features,
    compute_features,
    feature_versions,
    features_code_version,
    required_lookback_days,
)
from quant_assets.features.pit import pit_universe


def momentum(days: int) -> pl.Expr:
    return pl.col("close") / pl.col("close").shift(days) - 1.0


def momentum_changed(days: int) -> pl.Expr:
    return pl.col("close") / pl.col("close").shift(days + 1) - 1.0


def test_version_tracks_the_definition_not_the_words():
    base = Feature("m", "momentum", "words", 6, momentum, (("days", 5),))
    assert base.version == Feature("m2", "other", "other words", 6, momentum, (("days", 5),)).version
    assert base.version != Feature("m", "momentum", "words", 6, momentum_changed, (("days", 5),)).version
    assert base.version != Feature("m", "momentum", "words", 6, momentum, (("days", 4),)).version
    assert base.version != Feature("m", "momentum", "words", 7, momentum, (("days", 5),)).version
    e1 = Feature("e", "f", "d", 1, expr=pl.col("close") * 2)
    e2 = Feature("e", "f", "d", 1, expr=pl.col("close") * 3)
    assert e1.version != e2.version and len(e1.version) == 12
    with pytest.raises(ValueError, match="exactly one"):
        Feature("x", "f", "d", 1)
    with pytest.raises(ValueError, match="shadows"):
        Feature("close", "f", "d", 1, expr=pl.col("open"))


def test_registry_contents():
    assert len(active_features()) >= 60
    assert list(feature_versions()) == list(active_features())
    assert all(len(v) == 12 for v in feature_versions().values())
    assert len(set(feature_versions().values())) == len(active_features())  # no two identical definitions
    assert features_code_version() == features_code_version()
    assert required_lookback_days() > max(f.window for f in active_features().values())
    for f in active_features().values():
        assert set(f.depends_on) <= set(active_features())


@functools.lru_cache(maxsize=1)
def market():
    return simulate_market(SimulatorConfig(n_instruments=12, start=dt.date(2022, 1, 3), end=dt.date(2022, 12, 30),
                                           seed=5))


def run(dates, config=None, bars=None):
    m = market()
    return compute_features(m.universe, m.market_bars if bars is None else bars, m.corporate_actions,
                            m.fundamentals, dates, config)


DAYS = trading_days(dt.date(2022, 11, 1), dt.date(2022, 11, 30))


def test_output_schema_rows_and_order():
    out = run(DAYS[:5])
    assert out.columns == ["date", "instrument_id", *active_features()]
    assert out.schema["date"] == pl.Date and out.schema["instrument_id"] == pl.String
    assert all(out.schema[n] == pl.Float64 for n in active_features())
    assert out.equals(out.sort("date", "instrument_id"))
    m = market()
    members = pit_universe(m.universe, m.market_bars, DAYS[:5])
    assert out.select("date", "instrument_id").rows() == members.select("as_of", "instrument_id").rows()
    # every feature is mostly known ten months in (fundamentals need four quarters)
    known = out.select(pl.exclude("date", "instrument_id").is_not_null().mean()).row(0)
    assert min(known) > 0.1 and sorted(known)[len(known) // 2] > 0.9  # yoy growth needs 5 quarters


def test_deterministic_and_independent_of_batching_and_subset():
    full = run(DAYS)
    assert full.equals(run(DAYS))
    assert full.equals(run(pl.Series(list(reversed(DAYS))), FeatureConfig(batch_days=1)))
    single = run([DAYS[7]])
    assert single.equals(full.filter(pl.col("date") == DAYS[7]))
    # a subset of instruments: their rows exactly (sector ranks still see every instrument)
    some = tuple(sorted(full["instrument_id"].unique().to_list())[::3])
    assert run(DAYS, FeatureConfig(instruments=some)).equals(full.filter(pl.col("instrument_id").is_in(list(some))))
    subset = run(DAYS, FeatureConfig(features=("book_to_price_sector_rank", "return_5d")))
    assert subset.columns == ["date", "instrument_id", "return_5d", "book_to_price_sector_rank"]
    assert subset.equals(full.select(subset.columns))
    with pytest.raises(ValueError, match="unknown features"):
        run(DAYS[:1], FeatureConfig(features=("no_such_feature",)))


def test_rows_after_the_cutoff_and_after_d_are_ignored():
    m = market()
    day = DAYS[10]
    base = run([day])
    future = m.market_bars.filter(pl.col("knowledge_time") <= cutoff(day))
    assert base.equals(run([day], bars=future))


def test_windows_are_honest_and_short_history_is_null():
    """With exactly `window` market days of bars a series feature is already known (same
    value as with long history); with one day fewer it is null."""
    m = market()
    day = DAYS[-1]
    full = run([day])
    series = [f for f in active_features().values() if f.kind == "series"]
    for window in sorted({f.window for f in series}):
        names = [f.name for f in series if f.window == window]
        enough = run([day], FeatureConfig(features=tuple(names)),
                     bars=m.market_bars.filter(pl.col("date") >= shift_trading_days(day, -(window - 1))))
        for name in names:
            got, want = (f[name].fill_null(float("nan")).to_list() for f in (enough, full))
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True), name
        if window > 1:
            short = run([day], FeatureConfig(features=tuple(names)),
                        bars=m.market_bars.filter(pl.col("date") >= shift_trading_days(day, -(window - 2))))
            assert short.select(names).null_count().row(0) == (short.height,) * len(names)
