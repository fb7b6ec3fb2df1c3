"""The landing-file source: round trips and one test per LandingFileError rule."""

from __future__ import annotations

import datetime as dt
import os
from functools import lru_cache
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_assets.data.files import (
    LandingFileError,
    list_landing_files,
    read_market_bars_file,
    write_market_bars_file,
)
from quant_assets.data.market import landing_bars, latest_deliveries
from quant_assets.data.simulator import MARKET_BARS_SCHEMA, SimulatorConfig, simulate_market

HEADER = "date,instrument_id,open,high,low,close,volume,knowledge_time"


@lru_cache(maxsize=1)
def _bars() -> pl.DataFrame:
    md = simulate_market(SimulatorConfig(n_instruments=8, end=dt.date(2022, 2, 28)))
    return md.market_bars.head(40)


def _raises(path: Path, rule: str, *fragments: str) -> LandingFileError:
    with pytest.raises(LandingFileError) as info:
        read_market_bars_file(path)
    err = info.value
    assert err.rule == rule, str(err)
    assert isinstance(err, ValueError)
    assert str(path) in str(err) and rule in str(err)
    for fragment in fragments:
        assert fragment in str(err), str(err)
    return err


@pytest.mark.parametrize("name", ["bars.parquet", "bars.csv", "bars.pq"])
def test_round_trip_is_exact(tmp_path, name):
    path = write_market_bars_file(_bars(), tmp_path / name)
    back = read_market_bars_file(path)
    assert back.equals(_bars())
    assert list(back.schema.items()) == list(MARKET_BARS_SCHEMA.items())


def test_csv_timezones_are_converted_to_utc_and_columns_may_be_reordered(tmp_path):
    path = tmp_path / "tz.csv"
    path.write_text(
        "instrument_id,date,open,high,low,close,volume,knowledge_time\n"
        "A,2022-01-03,10,11,9,10.5,100,2022-01-03T20:30:00Z\n"
        "B,2022-01-03,10,11,9,10.5,100,2022-01-03 15:30:00-05:00\n"
        "C,2022-01-03,10,11,9,10.5,100,2022-01-03T22:30:00.250+0200\n"
        "D,2022-01-03,10,11,9,10.5,,2022-01-03T20:30:00+00\n"
    )
    df = read_market_bars_file(path)
    assert df.columns == list(MARKET_BARS_SCHEMA)
    assert dict(df.schema) == MARKET_BARS_SCHEMA
    kt = df["knowledge_time"].to_list()
    base = dt.datetime(2022, 1, 3, 20, 30, tzinfo=dt.UTC)
    assert kt == [base, base, base + dt.timedelta(milliseconds=250), base]
    assert df["volume"].to_list() == [100.0, 100.0, 100.0, None]  # empty field -> null


def test_parquet_with_integer_volume_and_other_timezone_is_cast(tmp_path):
    df = _bars().with_columns(
        pl.col("volume").cast(pl.Int64),
        pl.col("knowledge_time").dt.convert_time_zone("America/New_York").dt.cast_time_unit("ns"),
    )
    path = tmp_path / "x.parquet"
    df.write_parquet(path)
    assert read_market_bars_file(path).equals(_bars())


def test_list_landing_files_sorted_and_filtered(tmp_path):
    for name in ["b.csv", "a.parquet", "c.txt", ".hidden.csv", "_tmp.parquet", "d.CSV"]:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub.csv").mkdir()
    assert [p.name for p in list_landing_files(tmp_path)] == ["a.parquet", "b.csv", "d.CSV"]
    assert list_landing_files(tmp_path / "missing") == []
    with pytest.raises(NotADirectoryError):
        list_landing_files(tmp_path / "b.csv")


def test_writer_rejects_bad_frames_and_suffixes(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_market_bars_file(_bars(), tmp_path / "x.json")
    with pytest.raises(ValueError, match="contract"):
        write_market_bars_file(_bars().drop("volume"), tmp_path / "x.csv")


# --- one test per LandingFileError rule -------------------------------------------------


def test_file_type(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text(HEADER)
    _raises(path, "file_type", ".txt")


def test_missing_file_is_unreadable(tmp_path):
    _raises(tmp_path / "nope.csv", "unreadable")


def test_zero_byte_file_is_empty(tmp_path):
    for name in ("e.csv", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        _raises(tmp_path / name, "empty", "0 bytes")


def test_header_only_is_empty(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text(HEADER + "\n")
    _raises(path, "empty", "no rows")
    pq = tmp_path / "h.parquet"
    _bars().clear().write_parquet(pq)
    _raises(pq, "empty")


def test_truncated_parquet_is_unreadable(tmp_path):
    good = write_market_bars_file(_bars(), tmp_path / "g.parquet")
    data = good.read_bytes()
    bad = tmp_path / "t.parquet"
    bad.write_bytes(data[: len(data) // 2])
    _raises(bad, "unreadable", "Parquet")


def test_garbage_parquet_is_unreadable(tmp_path):
    bad = tmp_path / "g.parquet"
    bad.write_text("this is not parquet")
    _raises(bad, "unreadable")


def test_truncated_csv(tmp_path):
    good = write_market_bars_file(_bars(), tmp_path / "g.csv")
    text = good.read_text()
    bad = tmp_path / "t.csv"
    bad.write_text(text[: len(text) - 60])  # cuts the last row in the middle
    _raises(bad, "truncated", f"row {_bars().height}")


def test_wrong_delimiter(tmp_path):
    good = write_market_bars_file(_bars(), tmp_path / "g.csv")
    bad = tmp_path / "semi.csv"
    bad.write_text(good.read_text().replace(",", ";"))
    _raises(bad, "delimiter", "';'")


def test_missing_column(tmp_path):
    path = tmp_path / "m.csv"
    _bars().drop("volume").write_csv(path)
    _raises(path, "columns", "missing columns ['volume']")
    pq = tmp_path / "m.parquet"
    _bars().drop("high").write_parquet(pq)
    _raises(pq, "columns", "missing columns ['high']")


def test_extra_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(HEADER + ",venue\n2022-01-03,A,1,1,1,1,1,2022-01-03T20:30:00Z,X\n")
    _raises(path, "columns", "unexpected columns ['venue']")


def test_unparseable_values_name_rows_and_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        HEADER + "\n"
        "2022-01-03,A,10,11,9,10.5,100,2022-01-03T20:30:00Z\n"
        "03/01/2022,A,10,11,9,ten,100,2022-01-03T20:30:00Z\n"
        "2022-01-04,A,10,11,9,10.5,100,yesterday\n"
    )
    err = _raises(path, "dtype", "date", "row 2: '03/01/2022'", "close", "'ten'", "knowledge_time")
    assert "row 3: 'yesterday'" in str(err)


def test_wrong_parquet_dtype(tmp_path):
    path = tmp_path / "d.parquet"
    _bars().with_columns(pl.col("date").cast(pl.String)).write_parquet(path)
    _raises(path, "dtype", "date is String")


def test_timezone_naive_csv(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text(
        HEADER + "\n"
        "2022-01-03,A,10,11,9,10.5,100,2022-01-03T20:30:00Z\n"
        "2022-01-03,B,10,11,9,10.5,100,2022-01-03T20:30:00\n"
    )
    _raises(path, "timezone", "row 2", "without a timezone")


def test_timezone_naive_parquet(tmp_path):
    path = tmp_path / "n.parquet"
    _bars().with_columns(pl.col("knowledge_time").dt.replace_time_zone(None)).write_parquet(path)
    _raises(path, "timezone", "knowledge_time")


# ---- a bar delivered more than once: market.latest_deliveries -----------------------------

_KEYS = st.tuples(st.integers(0, 2), st.integers(1, 3))  # (day, instrument)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(_KEYS, st.integers(0, 2), min_size=1, max_size=6), min_size=1, max_size=4))
def test_each_bar_comes_from_the_delivery_that_knows_it_latest_then_arrived_last(deliveries):
    """Property: every key delivered appears once, from the delivery with the latest
    knowledge_time for it, of equal times the later arrival; no other row is dropped."""
    day0, t0 = dt.date(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    frames = [
        pl.DataFrame(
            {"date": [day0 + dt.timedelta(days=d) for d, _ in rows],
             "instrument_id": [i for _, i in rows],
             "delivery": [n] * len(rows),
             "knowledge_time": [t0 + dt.timedelta(hours=rows[k]) for k in rows]},
            schema={"date": pl.Date, "instrument_id": pl.Int64, "delivery": pl.Int64,
                    "knowledge_time": pl.Datetime("us", "UTC")},
        )
        for n, rows in enumerate(deliveries)
    ]
    got = latest_deliveries(frames)
    expected = {}
    for n, rows in enumerate(deliveries):
        for key, hours in rows.items():
            if key not in expected or (hours, n) >= expected[key]:
                expected[key] = (hours, n)
    keys = [((d - day0).days, i) for d, i in zip(got["date"], got["instrument_id"], strict=True)]
    assert sorted(keys) == sorted(expected)  # each key once
    for key, n in zip(keys, got["delivery"], strict=True):
        assert n == expected[key][1], (key, n, expected[key])


def test_duplicates_within_one_delivery_are_kept_for_the_duplicate_key_rule():
    one = _bars().head(2)
    twice_in_one = pl.concat([one, one.head(1)])
    got = latest_deliveries([one, twice_in_one])
    assert got.equals(twice_in_one)


def test_landing_bars_orders_deliveries_by_arrival_not_name(tmp_path):
    day = _bars().filter(pl.col("date") == _bars()["date"].min())
    corrected = day.with_columns(pl.col("open", "high", "low", "close") * 1.002)
    write_market_bars_file(day, tmp_path / "b_first.parquet")
    write_market_bars_file(corrected, tmp_path / "a_second.parquet")
    os.utime(tmp_path / "b_first.parquet", ns=(10**18, 10**18))
    os.utime(tmp_path / "a_second.parquet", ns=(10**18 + 1, 10**18 + 1))
    assert landing_bars(str(tmp_path)).equals(corrected)
