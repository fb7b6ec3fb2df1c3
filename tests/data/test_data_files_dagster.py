"""The file source (QUANT_SOURCE=files) through the Dagster assets and the landing sensor:
a bad data directory fails before anything is written (naming file, row and rule, not
retried); reference tables grow by appended versions, never overwritten; the benchmark and
the source's caveats become tables; new bars in the data directory (or a landing file in
its layout) request exactly the new days."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterEventType, DagsterInstance, materialize

from quant_assets.calendar import trading_days
from quant_assets.data.assets import (
    benchmark,
    corporate_actions,
    data_source,
    fundamentals,
    market_bars,
    universe,
)
from quant_assets.data.real_layout import write_real_layout
from quant_assets.warehouse import Warehouse
from resources.io_manager import DeltaIOManager
from resources.market_source import MarketSource
from sensors.landing import evaluate_data_dir, evaluate_landing

pytest.importorskip("skfolio")  # the dev extra ships the real prices

REFERENCE = [universe, corporate_actions, fundamentals, benchmark, data_source]
SYMBOLS = ["AAPL", "JPM", "XOM"]
DAY = "2022-03-01"


def _data_dir(tmp_path: Path, end: dt.date = dt.date(2022, 6, 30)) -> Path:
    folder = tmp_path / "data"
    write_real_layout(folder, start=dt.date(2022, 1, 3), end=end, symbols=SYMBOLS)
    return folder


def _resources(tmp_path: Path, data: Path) -> dict:
    return {
        "io_manager": DeltaIOManager(root=str(tmp_path / "warehouse")),
        "market_source": MarketSource(source="files", data_dir=str(data), start="2022-01-03", end="2023-04-28",
                                      landing_dir=str(tmp_path / "landing")),
    }


def _failure(result) -> str:
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failures, "expected a step failure"
    return failures[0].event_specific_data.error.message


def test_a_bad_data_directory_fails_before_anything_is_written_and_is_not_retried(tmp_path):
    data = _data_dir(tmp_path)
    aapl = data / "bars" / "AAPL.csv"
    # Thanksgiving 2022-11-24 was no session; the 3rd data row of AAPL.csv gets that date
    lines = aapl.read_text().splitlines()
    lines[3] = "2022-11-24" + lines[3][len("2022-01-05"):]
    aapl.write_text("\n".join(lines) + "\n")
    wh = Warehouse(str(tmp_path / "warehouse"))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(REFERENCE, instance=instance, resources=_resources(tmp_path, data), raise_on_error=False)
        assert not result.success
        message = _failure(result)
        assert "bars/AAPL.csv row 3" in message and "trading_day" in message
        # deterministic: failed once, no retry
        assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_RESTARTED]
    for table in ("universe", "corporate_actions", "fundamentals", "benchmark", "data_source"):
        assert not wh.exists([table]), table


def test_reference_tables_append_new_versions_and_keep_the_old(tmp_path):
    data = _data_dir(tmp_path)
    resources = _resources(tmp_path, data)
    wh = Warehouse(str(tmp_path / "warehouse"))
    with DagsterInstance.ephemeral() as instance:
        assert materialize(REFERENCE, instance=instance, resources=resources).success
        first = wh.read(["universe"]).frame
        assert sorted(first["instrument_id"].to_list()) == SYMBOLS and first.height == 3
        # unchanged files: nothing appended
        assert materialize([universe], instance=instance, resources=resources).success
        assert wh.read(["universe"]).frame.height == 3
        # JPM moves sector in the file; a new name is listed
        path = data / "universe.csv"
        text = path.read_text().replace("JPM,Financials", "JPM,Banks")
        path.write_text(text + "MSFT,Information Technology,2022-01-03,\n")
        msft = write_real_layout(tmp_path / "msft", start=dt.date(2022, 1, 3), end=dt.date(2022, 6, 30),
                                 symbols=["MSFT"])
        assert msft["symbols"] == ["MSFT"]
        (data / "bars" / "MSFT.csv").write_bytes((tmp_path / "msft" / "bars" / "MSFT.csv").read_bytes())
        before = dt.datetime.now(dt.UTC)
        assert materialize([universe], instance=instance, resources=resources).success
    stored = wh.read(["universe"]).frame.sort("instrument_id", "knowledge_time")
    # the old versions are still there, byte for byte
    assert first.sort("instrument_id", "knowledge_time").equals(stored.join(first, on=list(first.columns), how="semi", nulls_equal=True)
                                                               .sort("instrument_id", "knowledge_time"))
    jpm = stored.filter(pl.col("instrument_id") == "JPM")
    assert jpm["sector"].to_list() == ["Financials", "Banks"]
    assert jpm["knowledge_time"][1] >= before  # the change is known when it was loaded
    assert stored.filter(pl.col("instrument_id") == "MSFT").height == 1
    # newest first: the first load, then one append (the unchanged rerun wrote nothing)
    assert [h["operationParameters"]["mode"] for h in wh.table(["universe"]).history()] == ["Append", "Overwrite"]


def test_benchmark_and_caveats_become_tables(tmp_path):
    data = _data_dir(tmp_path)
    wh = Warehouse(str(tmp_path / "warehouse"))
    with DagsterInstance.ephemeral() as instance:
        assert materialize(REFERENCE, instance=instance, resources=_resources(tmp_path, data)).success
    index = wh.read(["benchmark"]).frame
    assert index["name"].unique().to_list() == ["S&P 500 index"]
    closes = index["close"].to_numpy()
    assert index["return"][1] == pytest.approx(closes[1] / closes[0] - 1, rel=1e-15)
    about = dict(wh.read(["data_source"]).frame.filter(pl.col("item") != "caveat").iter_rows())
    assert about["source"] == "files" and about["bars_adjusted"] == "true"
    caveats = " ".join(wh.read(["data_source"]).frame.filter(pl.col("item") == "caveat")["value"])
    assert "survivors only" in caveats and "close-only" in caveats and "adjusted" in caveats


def test_close_only_bars_record_the_missing_fields(tmp_path):
    data = _data_dir(tmp_path)
    with DagsterInstance.ephemeral() as instance:
        resources = _resources(tmp_path, data)
        materialize(REFERENCE[:3], instance=instance, resources=resources)
        result = materialize([universe, market_bars], selection=[market_bars], partition_key=DAY,
                             instance=instance, resources=resources)
        assert result.success
        meta = result.asset_materializations_for_node("market_bars")[0].metadata
    assert meta["missing_bar_fields"].value == ["open", "high", "low", "volume"]
    assert meta["source_metadata"].value["bars_adjusted"] is True


def test_new_days_in_the_data_directory_request_exactly_those_days(tmp_path):
    data = _data_dir(tmp_path, end=dt.date(2022, 6, 29))
    resources = _resources(tmp_path, data)
    wh = Warehouse(str(tmp_path / "warehouse"))
    requests, logs, seen = evaluate_data_dir(data, set(), warehouse=wh)
    # nothing stored: the reference run first; bars wait until the universe lists them
    assert [r.job_name for r in requests] == ["reference_data_job"]
    assert any("waiting for the reference run" in line for line in logs)
    with DagsterInstance.ephemeral() as instance:
        assert materialize(REFERENCE, instance=instance, resources=resources).success
        requests, _, seen = evaluate_data_dir(data, seen, warehouse=wh)
        days = [r.partition_key for r in requests]
        assert days == [d.isoformat() for d in trading_days(dt.date(2022, 1, 3), dt.date(2022, 6, 29))]
        assert evaluate_data_dir(data, seen, warehouse=wh)[0] == []  # unchanged: nothing
        materialize([universe, market_bars], selection=[market_bars], partition_key="2022-06-29",
                    instance=instance, resources=resources)
        # stored up to 06-29 (here one day); a new day's file arrives for 06-30
        stored = wh.read(["market_bars"]).frame
        assert stored["date"].unique().to_list() == [dt.date(2022, 6, 29)]
        new_day = tmp_path / "new"
        write_real_layout(new_day, start=dt.date(2022, 6, 30), end=dt.date(2022, 6, 30), symbols=SYMBOLS)
        for symbol in SYMBOLS:
            (data / "bars" / "2022-06-30").mkdir(exist_ok=True)
            (data / "bars" / "2022-06-30" / f"{symbol}.csv").write_bytes((new_day / "bars" / f"{symbol}.csv").read_bytes())
        requests, _, seen = evaluate_data_dir(data, seen, warehouse=wh)
    keys = [r.partition_key for r in requests]
    assert "2022-06-30" in keys and "2022-06-29" not in keys  # the stored day is unchanged
    assert all(r.job_name == "daily_features_job" for r in requests)


def test_a_bad_new_file_in_the_data_directory_starts_nothing_and_names_file_row_and_rule(tmp_path):
    data = _data_dir(tmp_path)
    requests, _, seen = evaluate_data_dir(data, set(), warehouse=None)
    (data / "bars" / "late.csv").write_text("date,instrument_id,close\n2022-07-01,AAPL,-1.0\n")
    requests, logs, seen = evaluate_data_dir(data, seen, warehouse=None)
    assert requests == []
    assert "bars/late.csv row 1" in logs[0] and "price_positive_finite" in logs[0]
    assert evaluate_data_dir(data, seen, warehouse=None) == ([], [], seen)  # logged once


def test_a_directory_rejected_before_its_first_bars_file_requests_its_reference_run_once_fixed(tmp_path):
    # the first look at the directory finds a bad bars file: nothing starts, logged once
    data = _data_dir(tmp_path)
    bad = data / "bars" / "late.csv"
    bad.write_text("date,instrument_id,close\n2022-07-01,AAPL,-1.0\n")
    requests, logs, seen = evaluate_data_dir(data, set(), warehouse=None)
    assert requests == [] and "price_positive_finite" in logs[0]
    assert evaluate_data_dir(data, seen, warehouse=None) == ([], [], seen)
    # fixed (the bad file removed; the reference files never changed): the reference run the
    # directory never had is requested now, then nothing more
    bad.unlink()
    requests, logs, seen = evaluate_data_dir(data, seen, warehouse=None)
    assert [r.job_name for r in requests] == ["reference_data_job"], logs
    assert [r.job_name for r in evaluate_data_dir(data, seen, warehouse=None)[0]] == []


def test_a_landing_file_may_use_the_data_directory_layout(tmp_path):
    from quant_assets.data.sources import read_layout

    data = tmp_path / "data"
    data.mkdir()
    (data / "layout.yaml").write_text(
        "instrument_from_filename: true\ndate_format: '%m/%d/%Y'\ncolumns:\n  bars: {Date: date, Close: close}\n")
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "AAPL.csv").write_text("Date,Close\n3/1/2022,163.2\n")
    # the strict landing contract rejects it; the data directory's layout reads it
    requests, logs, _ = evaluate_landing(landing, set(), as_of=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                                         layout=read_layout(data))
    assert [r.partition_key for r in requests] == ["2022-03-01"], logs
    (landing / "MSFT.csv").write_text("Date,Close\n3/1/2022,295.0\n")
    requests, logs, _ = evaluate_landing(landing, set(), as_of=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert requests == [] and "rejected" in logs[0]


def test_switching_from_the_simulator_replaces_its_rows_once(tmp_path):
    data = _data_dir(tmp_path)
    files = _resources(tmp_path, data)
    simulated = {**files, "market_source": MarketSource(n_instruments=5, seed=7, start="2022-01-03", end="2022-06-30")}
    wh = Warehouse(str(tmp_path / "warehouse"))
    with DagsterInstance.ephemeral() as instance:
        assert materialize([universe], instance=instance, resources=simulated).success
        assert wh.read(["universe"]).frame["instrument_id"].str.starts_with("SIM").all()
        assert materialize([universe], instance=instance, resources=files).success
        assert sorted(wh.read(["universe"]).frame["instrument_id"].to_list()) == SYMBOLS
        assert materialize([universe], instance=instance, resources=files).success  # no change: no write
    history = wh.table(["universe"]).history()
    assert len(history) == 2 and history[0]["quant.source"] == f"files:{data}"
