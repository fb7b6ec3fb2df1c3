"""The month-by-month strategy grid (pure core of ``strategy_grid``): warm-up, per-instrument
series, trial rows and the returns matrix for the validation statistics."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from quant_assets.backtest import breakout_grid, zmr_grid
from quant_assets.backtest.monthly_grid import GridSpec, evaluate_month
from quant_assets.validation.stats import pbo_cscv

SPEC = GridSpec(lookbacks=(5, 12), zmr_entry=(0.5, 1.0), zmr_exit=(0.0,), zmr_stop=(3.0,),
                breakout_entry=(0.8,), breakout_exit=(0.0, 1.0), breakout_stop=(0.05,))
MONTH, END = dt.date(2023, 3, 1), dt.date(2023, 4, 1)


def prices_frame() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    days = pl.date_range(dt.date(2022, 12, 1), dt.date(2023, 4, 30), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5)
    frames = []
    for name in ["A", "B", "C"]:
        close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.02, days.len())))
        frame = pl.DataFrame({"date": days, "instrument_id": name, "tr_close": close})
        if name == "C":  # listed on 2023-03-06: no warm-up before its first month
            frame = frame.filter(pl.col("date") >= dt.date(2023, 3, 6))
        frames.append(frame)
    return pl.concat(frames)


def test_rows_equal_the_grid_run_on_warm_up_plus_month():
    prices = prices_frame()
    rows = evaluate_month(prices, MONTH, END, SPEC, ["A", "B", "C"])
    assert rows.height == 3 * SPEC.n_trials == 3 * (4 + 4)
    assert rows["date"].unique().to_list() == [MONTH]
    for name, warm in (("A", SPEC.warmup), ("C", 0)):
        series = prices.filter(pl.col("instrument_id") == name, pl.col("date") < END).sort("date")
        before = series.filter(pl.col("date") < MONTH).tail(warm)
        close = pl.concat([before, series.filter(pl.col("date") >= MONTH)])["tr_close"].to_numpy()
        start = max(1, before.height)
        for family, grid in (("zmr", zmr_grid), ("breakout", breakout_grid)):
            expected = grid(close, **SPEC.params(family), cost_bps=5.0, bars_per_year=252.0, start=start)
            got = rows.filter(pl.col("instrument_id") == name, pl.col("family") == family).sort("param_id")
            assert np.array_equal(got["sharpe"].to_numpy(), expected.sharpe)
            assert np.array_equal(got["n_trades"].to_numpy(), expected.n_trades)
            assert (got["n_returns"] == close.shape[0] - start).all()
    # only the month's bars are evaluated: n_returns is the month's trading days (A, B)
    assert rows.filter(pl.col("instrument_id") == "A")["n_returns"][0] == 23
    # instrument order / extra instruments do not change an instrument's rows
    alone = evaluate_month(prices, MONTH, END, SPEC, ["B"])
    assert alone.equals(rows.filter(pl.col("instrument_id") == "B"))


def test_returns_matrix_feeds_pbo_and_matches_the_rows():
    prices = prices_frame()
    rows, matrix, days = evaluate_month(prices, MONTH, END, SPEC, ["A", "B", "C"], with_returns=True)
    assert matrix.shape == (len(days), SPEC.n_trials) and days[0] >= MONTH
    assert rows.equals(evaluate_month(prices, MONTH, END, SPEC, ["A", "B", "C"]))
    # a single instrument: compounding its column gives its row's total return
    one, m1, _ = evaluate_month(prices, MONTH, END, SPEC, ["A"], with_returns=True)
    assert np.allclose(np.prod(1.0 + m1, axis=0) - 1.0, one["total_return"].to_numpy(), rtol=1e-12)
    result = pbo_cscv(np.tile(matrix, (4, 1)), n_splits=4)
    assert 0.0 <= result.pbo <= 1.0


def test_bad_spec_and_empty_month():
    with pytest.raises(ValueError, match="families"):
        GridSpec(families=("momentum",))
    with pytest.raises(ValueError, match="no instrument has bars"):
        evaluate_month(prices_frame(), dt.date(2024, 1, 1), dt.date(2024, 2, 1), SPEC, ["A"])
