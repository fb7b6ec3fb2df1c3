"""A day's target portfolio: the champion's scores through the backtest's own construction,
scaled by the capital rule.

Pure: polars and the strategy core (no Dagster, no MLflow).

The weights are the ones ``backtest.strategy`` decides at the day's close for that day's
scores (``ScoreBacktest.decided``): the same quantile rule, weighting scheme, gross and net
exposure, per-name cap, sector and beta neutrality as the backtest whose spec is recorded
on its rows (``backtested_spec``), so the live book is the book that was validated. The
backtest trades them at the next close (its execution lag); a turnover limit applies to
that trade, not to the target. ``capital_multiplier`` (``serving.monitor``: 0.5 while the
realised 21-day Sharpe is beyond 2 sd of the backtest's) scales every weight: the book keeps
its shape and neutrality at a smaller size.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from quant_assets.backtest.strategy import StrategySpec, backtest_scores, book_inputs

COLUMNS = ("date", "instrument_id", "score", "weight", "capital_multiplier", "target_weight")


def target_weights(
    scores: pl.DataFrame,
    prices: pl.DataFrame,
    spec: StrategySpec,
    day: dt.date,
    capital_multiplier: float,
    *,
    universe: pl.DataFrame | None = None,
    market_bars: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per name the book holds after ``day``'s close (``COLUMNS``), sorted by name.

    ``scores``: (date, instrument_id, score) of ``day``; ``prices``: total-return closes
    (date, instrument_id, tr_close) of ``day`` and, for a beta-neutral spec, the days before
    it; ``universe`` gives the sectors of a sector-neutral spec, ``market_bars`` the traded
    value of a spec with market impact (``book_inputs``)."""
    if not 0.0 <= capital_multiplier <= 1.0:
        raise ValueError(f"capital_multiplier={capital_multiplier} must be in [0, 1]")
    day_scores = scores.filter(pl.col("date") == day)
    if day_scores.is_empty():
        raise ValueError(f"target weights {day}: no scores for the day")
    priced, sectors = book_inputs(spec, prices, universe, market_bars)
    today = priced.filter(pl.col("date") == day)
    if today.is_empty():
        raise ValueError(f"target weights {day}: no prices for the day")
    run = backtest_scores(
        day_scores, today, spec, sectors=sectors, history=priced.filter(pl.col("date") < day)
    )
    decided = run.decided[-1]
    held = np.flatnonzero(decided != 0.0)
    names = [run.instruments[i] for i in held]
    frame = pl.DataFrame({
        "date": pl.Series([day] * len(names), dtype=pl.Date),
        "instrument_id": pl.Series(names, dtype=pl.String),
        "weight": pl.Series(decided[held], dtype=pl.Float64),
    }).join(day_scores.select("instrument_id", "score"), on="instrument_id", how="left")
    return frame.with_columns(
        capital_multiplier=pl.lit(float(capital_multiplier), dtype=pl.Float64),
        target_weight=pl.col("weight") * float(capital_multiplier),
    ).select(COLUMNS).sort("instrument_id")
