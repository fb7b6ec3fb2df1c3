"""Synthetic feature + label frames with a known linear signal, for the model tests."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from quant_assets.calendar import shift_trading_days, trading_days

FEATURES = ["f_signal", "f_noise1", "f_noise2", "f_noise3"]


def synthetic_frames(
    start: dt.date = dt.date(2021, 1, 4),
    end: dt.date = dt.date(2022, 12, 30),
    n_instruments: int = 40,
    horizon: int = 5,
    signal: float = 0.3,
    seed: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(features, labels) per the data contract; fwd_return = signal * f_signal + noise."""
    rng = np.random.default_rng(seed)
    days = trading_days(start, end)
    ids = [f"I{i:03d}" for i in range(n_instruments)]
    n = len(days) * n_instruments
    date_col = np.repeat(np.array(days, dtype="datetime64[D]"), n_instruments)
    inst_col = np.tile(np.array(ids), len(days))
    feats = {name: rng.standard_normal(n) for name in FEATURES}
    feats["f_noise3"][rng.random(n) < 0.05] = np.nan  # LightGBM handles missing values
    fwd = signal * feats["f_signal"] + rng.standard_normal(n)
    features = pl.DataFrame(
        {"date": date_col, "instrument_id": inst_col, **feats},
        schema_overrides={"date": pl.Date},
    ).with_columns(pl.col(FEATURES).cast(pl.Float64).fill_nan(None))
    t1 = {d: shift_trading_days(d, horizon) for d in days}
    labels = (
        pl.DataFrame(
            {"date": date_col, "instrument_id": inst_col, "fwd_return": fwd},
            schema_overrides={"date": pl.Date},
        )
        .with_columns(
            t0=pl.col("date"),
            t1=pl.col("date").replace_strict(t1, return_dtype=pl.Date),
        )
        .with_columns(
            fwd_return_demeaned=pl.col("fwd_return") - pl.col("fwd_return").mean().over("date"),
            fwd_return_rank=(
                (pl.col("fwd_return").rank().over("date") - 1)
                / (pl.col("fwd_return").count().over("date") - 1)
            ),
        )
        .select(
            "date",
            "instrument_id",
            "t0",
            "t1",
            "fwd_return",
            "fwd_return_demeaned",
            "fwd_return_rank",
        )
    )
    return features, labels


@pytest.fixture(scope="session")
def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    return synthetic_frames()
