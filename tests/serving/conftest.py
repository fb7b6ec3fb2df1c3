"""A small real world for the serving tests, built once per session (worker):

- the seeded simulator's raw tables, point-in-time features and labels of the test range
  (tests/conftest.py), written straight to a Delta warehouse under a temporary QUANT_HOME
  with the pure feature/label functions (the golden-flow tests cover those assets);
- then the real model chains of both families (``lgbm_model``, ``oos_predictions``,
  ``backtest``; ``seq_model``, ``seq_predictions``, ``seq_backtest``) over 2023-01 .. 2023-02
  through Dagster, with a SQLite MLflow: two registered versions of ``quant-assets-lgbm``
  and two of ``quant-assets-seq``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

MONTHS = ("2023-01-01", "2023-02-01")


@dataclass
class World:
    home: Path
    settings: Any
    resources: dict[str, Any]
    warehouse: Any
    client: Any
    versions: dict[str, int]  # "2023-01" -> registered version (LightGBM)
    assets: list[Any]
    seq_versions: dict[str, int] | None = None  # "2023-01" -> registered version (GRU)


def settings_for(home: Path):
    from quant_assets.settings import Settings

    old = os.environ.get("QUANT_HOME")
    os.environ["QUANT_HOME"] = str(home)
    try:
        return Settings.from_env()
    finally:
        os.environ["QUANT_HOME"] = old if old is not None else ""


def all_assets() -> list[Any]:
    from dagster import load_assets_from_modules

    from quant_assets.backtest import assets as backtest_assets
    from quant_assets.data import assets as data_assets
    from quant_assets.features import assets as feature_assets
    from quant_assets.models import assets as model_assets
    from quant_assets.serving import assets as serving_assets

    return list(load_assets_from_modules(
        [data_assets, feature_assets, model_assets, backtest_assets, serving_assets]
    ))


def write_raw_world(settings) -> None:
    from quant_assets import calendar
    from quant_assets.data.simulator import SimulatorConfig, simulate_market
    from quant_assets.features import FeatureConfig, compute_features, compute_labels
    from quant_assets.warehouse import PartitionWindow, Warehouse

    wh = Warehouse(settings.warehouse_uri)
    md = simulate_market(SimulatorConfig(
        n_instruments=settings.n_instruments, seed=settings.seed,
        start=settings.start_date, end=settings.end_date,
    ))
    days = calendar.trading_days(settings.start_date, settings.end_date)
    window = PartitionWindow("date", days[0], days[-1] + dt.timedelta(days=1))
    for name in ("universe", "corporate_actions", "fundamentals"):
        wh.write([name], getattr(md, name))
    wh.write(["market_bars"], md.market_bars, window)
    features = compute_features(md.universe, md.market_bars, md.corporate_actions,
                                md.fundamentals, days, FeatureConfig(cutoff_time=settings.cutoff_time))
    wh.write(["pit_features"], features, window)
    label_days = days[: -settings.label_horizon]
    wh.write(["labels"], compute_labels(md.market_bars, md.corporate_actions, label_days,
                                        horizon=settings.label_horizon), window)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from dagster import DagsterInstance, materialize
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from quant_assets.backtest.assets import backtest, seq_backtest
    from quant_assets.models.assets import (
        lgbm_model,
        oos_predictions,
        seq_model,
        seq_predictions,
    )
    from quant_assets.warehouse import Warehouse
    from resources import build_resources

    home = tmp_path_factory.mktemp("serving-world")
    settings = settings_for(home)
    write_raw_world(settings)
    resources = build_resources(settings)
    assets = all_assets()
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            assets,
            selection=[lgbm_model, oos_predictions, backtest, seq_model, seq_predictions, seq_backtest],
            tags={ASSET_PARTITION_RANGE_START_TAG: MONTHS[0], ASSET_PARTITION_RANGE_END_TAG: MONTHS[-1]},
            resources=resources,
            instance=instance,
        )
        assert result.success
    wh = Warehouse(settings.warehouse_uri)
    models = wh.read(["lgbm_model"]).frame
    versions = {
        r["date"].strftime("%Y-%m"): int(r["registered_version"]) for r in models.iter_rows(named=True)
    }
    assert sorted(versions) == ["2023-01", "2023-02"], versions
    seq_versions = {
        r["date"].strftime("%Y-%m"): int(r["registered_version"])
        for r in wh.read(["seq_model"]).frame.iter_rows(named=True)
    }
    return World(home, settings, resources, wh, resources["tracking"].client(), versions, assets,
                 seq_versions)


def day_rows(frame: pl.DataFrame, day: str) -> pl.DataFrame:
    rows = frame.filter(pl.col("date") == dt.date.fromisoformat(day))
    return rows.sort("instrument_id") if "instrument_id" in rows.columns else rows
