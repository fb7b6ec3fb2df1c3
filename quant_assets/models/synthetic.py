"""A simulated research panel for model tests and benchmarks: the market simulator's raw
tables plus the real point-in-time features and labels computed from them, and a writer
that stores them in a warehouse exactly as the data and feature assets do (Delta tables,
daily tables written by a date window), so that the model assets can run on top.

No Dagster, no MLflow.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import polars as pl

from quant_assets.calendar import shift_trading_days, trading_days
from quant_assets.data.simulator import SimulatorConfig, simulate_market
from quant_assets.features import compute_features, compute_labels
from quant_assets.warehouse import PartitionWindow, Warehouse


class Panel(NamedTuple):
    universe: pl.DataFrame
    market_bars: pl.DataFrame
    corporate_actions: pl.DataFrame
    fundamentals: pl.DataFrame
    pit_features: pl.DataFrame
    labels: pl.DataFrame


def simulated_panel(
    n_instruments: int = 30,
    start: dt.date = dt.date(2022, 1, 3),
    end: dt.date = dt.date(2023, 4, 28),
    seed: int = 7,
    horizon: int = 5,
) -> Panel:
    """Simulated market + features of every trading day + labels of the days whose horizon
    ends inside the range (as `labels_job` builds them)."""
    market = simulate_market(
        SimulatorConfig(n_instruments=n_instruments, start=start, end=end, seed=seed)
    )
    days = trading_days(start, end)
    features = compute_features(
        market.universe, market.market_bars, market.corporate_actions, market.fundamentals, days
    )
    last_label_day = shift_trading_days(days[-1], -horizon)
    labels = compute_labels(
        market.market_bars,
        market.corporate_actions,
        [d for d in days if d <= last_label_day],
        horizon,
    )
    return Panel(*market, pit_features=features, labels=labels)


DAILY_TABLES = ("market_bars", "pit_features", "labels")
WHOLE_TABLES = ("universe", "corporate_actions", "fundamentals")


def write_panel(warehouse: Warehouse, panel: Panel) -> dict[str, int]:
    """Write every table of `panel`; returns the Delta version of each write."""
    versions = {}
    for name in WHOLE_TABLES:
        versions[name] = warehouse.write([name], getattr(panel, name)).version
    for name in DAILY_TABLES:
        frame = getattr(panel, name)
        window = PartitionWindow(
            "date", frame["date"].min(), frame["date"].max() + dt.timedelta(days=1)
        )
        versions[name] = warehouse.write([name], frame, window).version
    return versions
