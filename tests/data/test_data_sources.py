"""The file source (QUANT_SOURCE=files): round trips, real-export mapping, every rejection,
knowledge-time rules and bitemporal reference updates."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

import polars as pl
import pytest

from quant_assets.calendar import session_close
from quant_assets.data.reference import current_universe
from quant_assets.data.simulator import SimulatorConfig, simulate_market
from quant_assets.data.sources import (
    SURVIVORSHIP_WARNING,
    SourceFileError,
    SourceRejected,
    load_data_dir,
    read_layout,
    reference_updates,
    write_data_dir,
)

UTC = dt.UTC
KEYS = {
    "universe": ["instrument_id", "knowledge_time"],
    "market_bars": ["date", "instrument_id"],
    "corporate_actions": ["instrument_id", "ex_date", "knowledge_time"],
    "fundamentals": ["instrument_id", "period_end", "field", "knowledge_time"],
}
NOW = dt.datetime(2026, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=1)
def _market():
    return simulate_market(SimulatorConfig(n_instruments=8, start=dt.date(2022, 1, 3), end=dt.date(2022, 12, 30),
                                           delisting_fraction=0.3))


def _rejected(folder: Path) -> SourceRejected:
    with pytest.raises(SourceRejected) as info:
        load_data_dir(folder, as_of=NOW)
    return info.value


def _rules(exc: SourceRejected) -> list[str]:
    return [p.rule for p in exc.problems]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("split", ["symbol", "year", "single"])
def test_round_trip_of_every_table(tmp_path, fmt, split):
    market = _market()
    write_data_dir(tmp_path, market, fmt=fmt, bars_split=split)
    loaded = load_data_dir(tmp_path, as_of=NOW)
    for name, key in KEYS.items():
        want, got = getattr(market, name).sort(key), getattr(loaded.tables, name).sort(key)
        assert got.schema == want.schema, name
        assert got.equals(want), name
    assert loaded.missing_bar_fields == () and loaded.missing_tables == () and not loaded.universe_derived


def test_close_only_bars_keep_nulls_and_say_which_features_are_null(tmp_path):
    from quant_assets.features.availability import OPTIONAL_BAR_FIELDS, null_features
    from quant_assets.features.engine import FeatureConfig, compute_features

    market = _market()
    write_data_dir(tmp_path, market, drop_bar_columns=OPTIONAL_BAR_FIELDS)
    loaded = load_data_dir(tmp_path, as_of=NOW)
    bars = loaded.tables.market_bars
    assert loaded.missing_bar_fields == OPTIONAL_BAR_FIELDS
    assert all(bars[c].null_count() == bars.height for c in OPTIONAL_BAR_FIELDS)  # never substituted
    assert bars["close"].equals(market.market_bars.sort("date", "instrument_id")["close"])
    days = [dt.date(2022, 12, 29), dt.date(2022, 12, 30)]
    features = compute_features(loaded.tables.universe, bars, loaded.tables.corporate_actions,
                                loaded.tables.fundamentals, days, FeatureConfig())
    expected_null = null_features(loaded.missing_bar_fields)
    assert {"candle_body_1d", "high_low_range_1d", "volume_ratio_20d", "log_dollar_volume_20d"} <= set(expected_null)
    for name in features.columns[2:]:
        all_null = features[name].null_count() == features.height
        assert all_null == (name in expected_null), name


def test_yahoo_style_export_is_rejected_with_a_hint_then_accepted_through_layout_yaml(tmp_path):
    bars = tmp_path / "bars"
    bars.mkdir()
    (bars / "AAPL.csv").write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "1/3/2022,177.83,182.88,177.71,182.01,179.95,104487900\n"
        "1/4/2022,182.63,182.94,179.12,179.70,177.66,99310400\n"
    )
    with pytest.raises(SourceFileError) as info:
        load_data_dir(tmp_path, as_of=NOW)
    message = str(info.value)
    assert "bars/AAPL.csv" in message and "'columns'" in message
    assert "'Date'" in message and "did you mean 'date'" in message and "Adj Close" in message
    (tmp_path / "layout.yaml").write_text(
        "bars_adjusted: true\ninstrument_from_filename: true\n"
        "columns:\n  bars: {Date: date, Open: open, High: high, Low: low, 'Adj Close': close, Close: null, Volume: volume}\n"
    )
    with pytest.raises(SourceFileError) as info:  # the dates are M/D/YYYY
        load_data_dir(tmp_path, as_of=NOW)
    assert "row 1: '1/3/2022'" in str(info.value) and "date_format: '%m/%d/%Y'" in str(info.value)
    with (tmp_path / "layout.yaml").open("a") as handle:
        handle.write("date_format: '%m/%d/%Y'\n")
    # an adjusted close beside unadjusted open/high/low is inconsistent (the rule sees it)
    with pytest.warns(UserWarning, match="survivorship"), pytest.raises(SourceRejected) as rejected:
        load_data_dir(tmp_path, as_of=NOW)
    assert rejected.value.problems[0].rule == "ohlc_consistency"
    assert rejected.value.problems[0].locations == ("bars/AAPL.csv row 2",)
    (tmp_path / "layout.yaml").write_text(
        "bars_adjusted: true\ninstrument_from_filename: true\ndate_format: '%m/%d/%Y'\n"
        "columns:\n  bars: {Date: date, Open: null, High: null, Low: null, 'Adj Close': close, Close: null, Volume: volume}\n"
    )
    with pytest.warns(UserWarning, match="survivorship"):
        loaded = load_data_dir(tmp_path, as_of=NOW)
    bars_out = loaded.tables.market_bars
    assert bars_out["close"].to_list() == [179.95, 177.66]  # the adjusted close, as mapped
    assert bars_out["instrument_id"].to_list() == ["AAPL", "AAPL"]
    assert bars_out["knowledge_time"].to_list() == [session_close(dt.date(2022, 1, 3)), session_close(dt.date(2022, 1, 4))]
    assert loaded.universe_derived and SURVIVORSHIP_WARNING in loaded.warnings
    assert loaded.metadata()["bars_adjusted"] is True


def test_layout_yaml_errors_name_the_key(tmp_path):
    (tmp_path / "layout.yaml").write_text("bars_adjustd: true\n")
    with pytest.raises(SourceFileError, match="unknown keys \\['bars_adjustd'\\]"):
        read_layout(tmp_path)
    (tmp_path / "layout.yaml").write_text("columns:\n  bars: {Px: price}\n")
    with pytest.raises(SourceFileError, match="columns.bars.Px: 'price' is not a market_bars column"):
        read_layout(tmp_path)


def _written(tmp_path: Path, **kwargs) -> Path:
    write_data_dir(tmp_path, _market(), fmt="csv", **kwargs)
    return tmp_path


def _edit_csv(path: Path, edit) -> None:
    frame = pl.read_csv(path, infer_schema=False)
    edit(frame).write_csv(path)


def test_bar_on_a_closed_day_is_rejected_naming_file_row_and_rule(tmp_path):
    folder = _written(tmp_path)
    path = folder / "bars" / "SIM0001.csv"
    # move the bar of 2022-11-25 to Thanksgiving, 2022-11-24
    _edit_csv(path, lambda f: f.with_columns(pl.col("date").replace("2022-11-25", "2022-11-24")))
    row = pl.read_csv(path, infer_schema=False)["date"].to_list().index("2022-11-24") + 1
    exc = _rejected(folder)
    problem = next(p for p in exc.problems if p.rule == "trading_day")
    assert f"bars/SIM0001.csv row {row}" in problem.locations
    assert "[trading_day]" in str(exc)


def test_symbol_missing_from_the_universe_is_named(tmp_path):
    folder = _written(tmp_path)
    universe = pl.read_csv(folder / "universe.csv", infer_schema=False)
    universe.filter(pl.col("instrument_id") != "SIM0003").write_csv(folder / "universe.csv")
    exc = _rejected(folder)
    problem = next(p for p in exc.problems if p.rule == "unknown_instrument")
    assert "['SIM0003']" in problem.message and problem.locations[0].startswith("bars/SIM0003.csv row 1")


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("-3")).otherwise("close").alias("close")),
         "price_positive_finite"),
        (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("2099-01-01T00:00:00Z"))
                                  .otherwise("knowledge_time").alias("knowledge_time")), "knowledge_time_future"),
        (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.col("close").cast(pl.Float64) * 10)
                                  .otherwise(pl.col("close").cast(pl.Float64)).alias("close")), "price_jump"),
        (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.col("close").cast(pl.Float64) * 0.5)
                                  .otherwise(pl.col("high").cast(pl.Float64)).alias("high")), "ohlc_consistency"),
        (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("2021-01-01T00:00:00Z"))
                                  .otherwise("knowledge_time").alias("knowledge_time")), "knowledge_time_before_date"),
    ],
)
def test_bad_rows_are_rejected_naming_file_row_and_rule(tmp_path, edit, rule):
    folder = _written(tmp_path)
    _edit_csv(folder / "bars" / "SIM0002.csv", edit)
    exc = _rejected(folder)
    assert rule in _rules(exc)
    problem = next(p for p in exc.problems if p.rule == rule)
    assert "bars/SIM0002.csv row 5" in problem.locations


def test_duplicates_across_files_name_both_files(tmp_path):
    folder = _written(tmp_path, bars_split="year")
    first = pl.read_csv(folder / "bars" / "2022.csv", infer_schema=False).head(1)
    first.write_csv(folder / "bars" / "extra.csv")
    exc = _rejected(folder)
    problem = next(p for p in exc.problems if p.rule == "duplicate_key")
    assert {"bars/2022.csv row 1", "bars/extra.csv row 1"} <= set(problem.locations)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("date,instrument_id,open\n2022-01-03,A,1\n", "missing required columns ['close']"),
     ("date,instrument_id,close,venue\n2022-01-03,A,1,X\n", "unexpected column 'venue'"),
     ("date;instrument_id;close\n2022-01-03;A;1\n", "'delimiter'"),
     ("date,instrument_id,close\n2022-01-03,A,ten\n", "row 1: 'ten'")],
)
def test_unreadable_bar_files_name_file_and_rule(tmp_path, header, expected):
    (tmp_path / "bars").mkdir()
    (tmp_path / "bars" / "x.csv").write_text(header)
    with pytest.raises(SourceFileError) as info:
        load_data_dir(tmp_path, as_of=NOW)
    assert "bars/x.csv" in str(info.value) and expected in str(info.value)


def test_fundamentals_without_knowledge_time_need_an_explicit_filing_lag(tmp_path):
    folder = _written(tmp_path)
    _edit_csv(folder / "fundamentals.csv", lambda f: f.with_columns(pl.lit(None, pl.String).alias("knowledge_time")))
    exc = _rejected(folder)
    assert _rules(exc) == ["filing_lag_missing"]
    assert exc.problems[0].locations[0] == "fundamentals.csv row 1"
    (folder / "layout.yaml").write_text("fundamentals_filing_lag_days: 45\n")
    # restatements without their own times would share the rule's time: duplicates
    assert "duplicate_key" in _rules(_rejected(folder))
    _edit_csv(folder / "fundamentals.csv",
              lambda f: f.unique(["instrument_id", "field", "period_end"], keep="first", maintain_order=True))
    loaded = load_data_dir(folder, as_of=NOW)
    row = loaded.tables.fundamentals.row(0, named=True)
    filed = row["period_end"] + dt.timedelta(days=45)
    while True:  # the first session on or after period_end + 45 days, at its close
        try:
            expected = session_close(filed)
            break
        except ValueError:
            filed += dt.timedelta(days=1)
    assert row["knowledge_time"] == expected


def test_actions_without_announcement_are_known_at_the_close_before_the_ex_date(tmp_path):
    folder = _written(tmp_path)
    _edit_csv(folder / "corporate_actions.csv",
              lambda f: f.drop("knowledge_time").unique(["instrument_id", "ex_date"], keep="last", maintain_order=True))
    loaded = load_data_dir(folder, as_of=NOW)
    actions = loaded.tables.corporate_actions
    assert actions.height > 0
    for ex, known in actions.select("ex_date", "knowledge_time").rows():
        before = ex - dt.timedelta(days=1)
        while True:
            try:
                assert known == session_close(before)
                break
            except ValueError:
                before -= dt.timedelta(days=1)


def test_adjusted_bars_with_corporate_actions_would_adjust_twice(tmp_path):
    folder = _written(tmp_path, layout={"bars_adjusted": True})
    exc = _rejected(folder)
    assert _rules(exc)[0] == "adjusted_twice"
    assert exc.problems[0].locations[0] == "corporate_actions.csv row 1"


def test_reference_tables_update_by_appending_versions(tmp_path):
    folder = _written(tmp_path)
    first = load_data_dir(folder, as_of=NOW)
    stored = {t: getattr(first.tables, t) for t in ("universe", "corporate_actions", "fundamentals")}
    assert reference_updates({}, first, NOW)["universe"].equals(stored["universe"])
    # the same files again: nothing to append
    again = reference_updates(stored, load_data_dir(folder, as_of=NOW), NOW)
    assert all(frame.height == 0 for frame in again.values())
    # a changed sector and a new delisting, in a file without knowledge times
    listings = current_universe(stored["universe"]).drop("knowledge_time")
    alive = listings.filter(pl.col("listed_until").is_null())["instrument_id"].to_list()
    changed = listings.with_columns(
        pl.when(pl.col("instrument_id") == alive[0]).then(pl.lit("S99")).otherwise("sector").alias("sector"),
        pl.when(pl.col("instrument_id") == alive[1]).then(pl.lit(dt.date(2022, 12, 30))).otherwise("listed_until")
        .alias("listed_until"),
    )
    changed.write_csv(folder / "universe.csv")
    later = NOW + dt.timedelta(days=1)
    new = reference_updates(stored, load_data_dir(folder, as_of=later), later)
    rows = new["universe"].sort("instrument_id")
    assert rows["instrument_id"].to_list() == sorted(alive[:2])
    assert (rows["knowledge_time"] == later).all()  # known when it arrived, never back-dated
    assert new["corporate_actions"].height == 0 and new["fundamentals"].height == 0
    merged = pl.concat([stored["universe"], new["universe"]])
    assert merged.height == stored["universe"].height + 2  # appended, nothing overwritten
    assert current_universe(merged).filter(pl.col("instrument_id") == alive[0])["sector"].item() == "S99"


def test_real_prices_from_the_skfolio_wheel_load_through_the_file_source(tmp_path):
    pytest.importorskip("skfolio")  # the dev extra ships the data
    from quant_assets.data.real_layout import CAVEATS, write_real_layout

    summary = write_real_layout(tmp_path, start=dt.date(2021, 1, 4), end=dt.date(2022, 12, 28),
                                symbols=["AAPL", "JPM", "XOM"])
    assert summary["symbols"] == ["AAPL", "JPM", "XOM"]
    loaded = load_data_dir(tmp_path, as_of=NOW)
    meta = loaded.metadata()
    assert meta["bars_adjusted"] is True and meta["missing_bar_fields"] == ["open", "high", "low", "volume"]
    assert meta["missing_tables"] == ["corporate_actions", "fundamentals"]
    bars = loaded.tables.market_bars
    assert bars.height == 3 * 501  # NYSE sessions 2021-01-04..2022-12-28, every name every day
    assert (tmp_path / "benchmark.csv").is_file() and all(c in (tmp_path / "SOURCE.md").read_text() for c in CAVEATS)
