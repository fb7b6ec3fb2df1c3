"""Real daily prices bundled with skfolio's wheel, as polars frames.

Source: ``skfolio/datasets/data/sp500_dataset.csv.gz`` (adjusted closes of 20 S&P 500
constituents, 1990-01-02 .. 2022-12-28) and ``sp500_index.csv.gz`` (the S&P 500 index over the
same days), shipped inside the skfolio wheel (BSD-3-Clause; skfolio documents them as stale
data for testing and examples only). They cover 2008, 2015, 2018, 2020 and 2022, so the stress
windows of the validation report can be evaluated on real market history.

The files are located with ``importlib.util.find_spec`` and read with polars: importing
``skfolio`` itself would pull in scikit-learn, scipy.optimize, cvxpy and pandas for two CSVs.
Note the 20 names are today's survivors (AAPL, MSFT, ...): fine for stress windows and
factor checks, not for an unbiased backtest.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import polars as pl

SOURCE = "skfolio wheel: skfolio/datasets/data/sp500_dataset.csv.gz, sp500_index.csv.gz"
STOCKS_FILE = "sp500_dataset.csv.gz"
INDEX_FILE = "sp500_index.csv.gz"

# GICS sectors of the 20 bundled constituents (as classified today; GE is Industrials,
# RRC Energy). Used for sector factors.
SECTORS = {
    "AAPL": "Information Technology", "AMD": "Information Technology",
    "MSFT": "Information Technology", "BAC": "Financials", "JPM": "Financials",
    "BBY": "Consumer Discretionary", "HD": "Consumer Discretionary", "CVX": "Energy",
    "XOM": "Energy", "RRC": "Energy", "GE": "Industrials", "JNJ": "Health Care",
    "LLY": "Health Care", "MRK": "Health Care", "PFE": "Health Care", "UNH": "Health Care",
    "KO": "Consumer Staples", "PEP": "Consumer Staples", "PG": "Consumer Staples",
    "WMT": "Consumer Staples",
}


class RealDataUnavailable(RuntimeError):
    """skfolio (the wheel that carries the files) is not installed."""


def data_dir() -> Path:
    """Folder of skfolio's bundled datasets, found without importing skfolio."""
    spec = importlib.util.find_spec("skfolio")
    if spec is None or not spec.submodule_search_locations:
        raise RealDataUnavailable(
            "the real S&P 500 prices come from the skfolio wheel, a dependency of "
            "quant-assets: reinstall the package (pip install -e .)"
        )
    for root in spec.submodule_search_locations:
        folder = Path(root) / "datasets" / "data"
        if (folder / STOCKS_FILE).is_file() and (folder / INDEX_FILE).is_file():
            return folder
    raise RealDataUnavailable(
        f"skfolio is installed at {list(spec.submodule_search_locations)} but "
        f"datasets/data/{STOCKS_FILE} is missing (a different skfolio build?)"
    )


def _read_wide(name: str) -> pl.DataFrame:
    frame = pl.read_csv(data_dir() / name, try_parse_dates=False)
    return frame.with_columns(pl.col("Date").str.to_date("%Y-%m-%d").alias("date")).drop("Date")


@lru_cache(maxsize=1)
def _stock_prices() -> pl.DataFrame:
    wide = _read_wide(STOCKS_FILE)
    return (
        wide.unpivot(index="date", variable_name="instrument_id", value_name="close")
        .with_columns(pl.col("close").cast(pl.Float64))
        .drop_nulls("close")
        .sort("date", "instrument_id")
    )


def load_sp500_prices() -> pl.DataFrame:
    """Long frame (date Date, instrument_id Utf8, close Float64): adjusted closes of the 20
    bundled S&P 500 constituents, sorted by date then instrument."""
    return _stock_prices().clone()


def load_sp500_index() -> pl.DataFrame:
    """Frame (date Date, close Float64): the S&P 500 index level, sorted by date."""
    wide = _read_wide(INDEX_FILE)
    return wide.select("date", pl.col("SP500").cast(pl.Float64).alias("close")).sort("date")


def sectors_frame() -> pl.DataFrame:
    """(instrument_id, sector) of the bundled constituents."""
    return pl.DataFrame(
        {"instrument_id": list(SECTORS), "sector": list(SECTORS.values())}
    ).sort("instrument_id")
