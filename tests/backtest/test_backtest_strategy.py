"""The month-restartable long-short strategy: chained months == one run, bit for bit."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_assets.backtest.strategy import StrategySpec, StrategyState, run_long_short


def _market(seed: int, n_days: int = 130, n_names: int = 12):
    rng = np.random.default_rng(seed)
    days = pl.date_range(dt.date(2023, 1, 2), dt.date(2023, 12, 29), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5).head(n_days)
    rows, preds = [], []
    for j in range(n_names):
        name = f"I{j:02d}"
        listed = (rng.integers(0, 20), n_days - rng.integers(0, 30) * (j % 3 == 0))
        price = 10.0 * np.cumprod(1 + rng.normal(0, 0.02, n_days))
        for t, d in enumerate(days):
            if listed[0] <= t < listed[1]:
                rows.append((d, name, float(price[t])))
                preds.append((d, name, float(rng.normal())))
    schema = ["date", "instrument_id"]
    prices = pl.DataFrame(rows, schema=[*schema, "tr_close"], orient="row")
    scores = pl.DataFrame(preds, schema=[*schema, "score"], orient="row")
    return days, prices, scores


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), lag=st.sampled_from([0, 1]), scheme=st.sampled_from(["equal", "score"]))
def test_month_by_month_equals_one_run(seed, lag, scheme):
    days, prices, scores = _market(seed)
    spec = StrategySpec(quantile=0.25, scheme=scheme, execution_lag=lag)
    whole, whole_state = run_long_short(scores, prices, spec)
    parts, state = [], None
    for month in range(1, 13):
        in_month = pl.col("date").dt.month() == month
        if prices.filter(in_month).is_empty():
            continue
        daily, state = run_long_short(scores.filter(in_month), prices.filter(in_month), spec, state)
        state = StrategyState.from_json(state.to_json())  # as stored in Delta between months
        parts.append(daily)
    chained = pl.concat(parts)
    assert chained.equals(whole)
    assert state == whole_state


def test_execution_lag_trades_the_next_close():
    days, prices, scores = _market(3)
    lagged, _ = run_long_short(scores, prices, StrategySpec(execution_lag=1))
    same_day, _ = run_long_short(scores, prices, StrategySpec(execution_lag=0))
    assert lagged["turnover"][0] == 0.0  # nothing decided before the first close
    # the book traded at close t is the one decided at close t-1
    assert lagged["n_long"][1:].to_list() == same_day["n_long"][:-1].to_list()
    assert lagged["n_short"][1:].to_list() == same_day["n_short"][:-1].to_list()
    assert same_day["n_long"].sum() > 0


def test_missing_columns_named():
    days, prices, scores = _market(1)
    with pytest.raises(ValueError, match=r"prices lacks columns \['tr_close'\]"):
        run_long_short(scores, prices.drop("tr_close"), StrategySpec())
