"""Where raw market data come from: the configuration of the source (the seeded simulator by
default, a data directory in the documented layout with ``QUANT_SOURCE=files``, or the
landing folder for ``market_bars``). What is read with it is ``quant_assets/data/market.py``:
the resource carries settings only."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field


class MarketSource(ConfigurableResource):
    source: str = Field(default="simulator", description="'simulator', 'files' or 'landing'")
    n_instruments: int = 100
    seed: int = 7
    start: str = Field(description="first simulated day, ISO date")
    end: str = Field(description="last simulated day, ISO date")
    landing_dir: str = ""
    data_dir: str = Field(default="", description="QUANT_DATA_DIR: the folder of the 'files' source")
