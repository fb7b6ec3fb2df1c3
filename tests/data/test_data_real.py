"""The real prices bundled in skfolio's wheel, read without importing skfolio."""

import datetime as dt
import subprocess
import sys

import polars as pl

from quant_assets.data import real
from quant_assets.validation import stats
from quant_assets.validation.regimes import equal_weight_returns, instrument_returns


def test_prices_are_long_frames_of_the_20_stocks():
    prices = real.load_sp500_prices()
    assert prices.schema == pl.Schema({"date": pl.Date, "instrument_id": pl.Utf8, "close": pl.Float64})
    assert prices["instrument_id"].n_unique() == 20
    assert set(prices["instrument_id"].unique()) == set(real.SECTORS)
    assert prices["date"].min() == dt.date(1990, 1, 2) and prices["date"].max() == dt.date(2022, 12, 28)
    assert prices.select(pl.struct("date", "instrument_id").is_duplicated().any()).item() is False
    assert (prices["close"] > 0).all()
    assert prices.equals(prices.sort("date", "instrument_id"))
    index = real.load_sp500_index()
    assert index.columns == ["date", "close"] and index.height == prices["date"].n_unique()
    # S&P 500 close of 2008-10-10 (a well-known level, about 899)
    level = index.filter(pl.col("date") == dt.date(2008, 10, 10))["close"].item()
    assert 850 < level < 950
    assert real.sectors_frame().height == 20


def test_loading_does_not_import_skfolio():
    code = (
        "import sys; from quant_assets.data import real; real.load_sp500_prices(); "
        "real.load_sp500_index(); print('skfolio' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_known_crashes_show_in_the_real_data():
    index = real.load_sp500_index().with_columns(instrument_id=pl.lit("SPX"))
    spx = instrument_returns(index)
    gfc = spx.filter(pl.col("date").is_between(dt.date(2008, 9, 1), dt.date(2009, 3, 31)))["ret"]
    covid = spx.filter(pl.col("date").is_between(dt.date(2020, 2, 1), dt.date(2020, 4, 30)))["ret"]
    assert stats.max_drawdown(gfc.to_numpy()) < -0.40  # peak-to-trough about -47%
    assert stats.max_drawdown(covid.to_numpy()) < -0.30  # about -34%
    ew = equal_weight_returns(real.load_sp500_prices())
    assert ew.height > 8000


def test_missing_package_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(real.importlib.util, "find_spec", lambda name: None)
    try:
        real.data_dir()
    except real.RealDataUnavailable as exc:
        assert "skfolio" in str(exc)
    else:
        raise AssertionError("expected RealDataUnavailable")
