"""What the raw data assets read, by source: the seeded simulator (embedded default) or, for
``market_bars``, Parquet/CSV files in the landing folder.

Pure (no Dagster): ``resources/market_source.py`` only carries the configuration; the
``data`` assets call these with it.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import polars as pl

from quant_assets.data.files import list_landing_files, read_market_bars_file
from quant_assets.data.simulator import MarketData, SimulatorConfig, simulate_market

SOURCES = ("simulator", "landing")


@lru_cache(maxsize=4)
def simulated_market(n_instruments: int, seed: int, start: str, end: str) -> MarketData:
    """The simulated market of a configuration, once per process: every raw asset of a run
    slices the same simulation."""
    return simulate_market(
        SimulatorConfig(
            n_instruments=n_instruments,
            seed=seed,
            start=dt.date.fromisoformat(start),
            end=dt.date.fromisoformat(end),
        )
    )


def simulated_for(source) -> MarketData:
    """The simulation a market-source configuration (``n_instruments``, ``seed``, ``start``,
    ``end``, as the ``market_source`` resource carries them) describes."""
    return simulated_market(source.n_instruments, source.seed, source.start, source.end)


def landing_bars(landing_dir: str) -> pl.DataFrame:
    """Every landing file's bars (each read and checked by ``files.read_market_bars_file``)."""
    files = list_landing_files(landing_dir)
    if not files:
        raise ValueError(f"landing folder {landing_dir!r} has no market_bars files")
    return pl.concat([read_market_bars_file(f) for f in files], how="vertical")


def bars_between(bars: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Bars with start <= date < end, sorted by (date, instrument_id)."""
    return bars.filter((pl.col("date") >= start) & (pl.col("date") < end)).sort(
        "date", "instrument_id"
    )
