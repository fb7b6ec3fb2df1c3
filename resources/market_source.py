"""Where raw market data come from: the seeded simulator (embedded default) or, for
``market_bars``, Parquet/CSV files in the landing folder."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import polars as pl
from dagster import ConfigurableResource
from pydantic import Field

from quant_assets.data.files import list_landing_files, read_market_bars_file
from quant_assets.data.simulator import MarketData, SimulatorConfig, simulate_market


@lru_cache(maxsize=4)
def _simulate(n_instruments: int, seed: int, start: str, end: str) -> MarketData:
    # One simulation per process and configuration: every raw asset of a run slices it.
    return simulate_market(
        SimulatorConfig(
            n_instruments=n_instruments,
            seed=seed,
            start=dt.date.fromisoformat(start),
            end=dt.date.fromisoformat(end),
        )
    )


class MarketSource(ConfigurableResource):
    source: str = Field(default="simulator", description="'simulator' or 'landing'")
    n_instruments: int = 100
    seed: int = 7
    start: str = Field(description="first simulated day, ISO date")
    end: str = Field(description="last simulated day, ISO date")
    landing_dir: str = ""

    def load(self) -> MarketData:
        return _simulate(self.n_instruments, self.seed, self.start, self.end)

    def market_bars(self, start: dt.date, end: dt.date, source: str = "") -> pl.DataFrame:
        """Bars with start <= date < end, from `source` (default: this resource's)."""
        source = source or self.source
        if source == "simulator":
            bars = self.load().market_bars
        elif source == "landing":
            files = list_landing_files(self.landing_dir)
            if not files:
                raise ValueError(f"landing folder {self.landing_dir!r} has no market_bars files")
            bars = pl.concat([read_market_bars_file(f) for f in files], how="vertical")
        else:
            raise ValueError(f"market source {source!r} must be 'simulator' or 'landing'")
        return bars.filter((pl.col("date") >= start) & (pl.col("date") < end)).sort(
            "date", "instrument_id"
        )
