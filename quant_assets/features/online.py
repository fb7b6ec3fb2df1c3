"""Online features: one as-of day from live inputs, identical to the stored partition.

A scoring service reads the raw tables as they are now: every row known so far, which for
an as-of day D in the past includes bars after D, late bars, restatements and actions
published after cutoff(D). `features_for_scoring` returns exactly the rows that the
`pit_features` partition of D holds (same values bit for bit, same dtypes, same order),
because both go through `compute_features`, which keeps only what was known at cutoff(D).
The live inputs are first trimmed to D's lookback so that a call reads a few months of
bars, not the whole history; the trim uses the same window as the asset's partition
mapping (`required_lookback_days()` trading days before D).
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from quant_assets import calendar
from quant_assets.features import pit
from quant_assets.features.catalog import required_lookback_days
from quant_assets.features.engine import FeatureConfig, compute_features


def lookback_start(as_of: dt.date) -> dt.date:
    """First bar date that features of `as_of` may read (the partition mapping's start)."""
    return calendar.shift_trading_days(as_of, -required_lookback_days())


def features_for_scoring(
    as_of: dt.date,
    universe: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    fundamentals: pl.DataFrame,
    config: FeatureConfig | None = None,
) -> pl.DataFrame:
    """Features of `as_of` (columns date, instrument_id, one Float64 per feature) from live
    inputs; equal to the `pit_features` partition of `as_of`."""
    cfg = config or FeatureConfig()
    cut = pl.lit(as_of).pipe(pit.cutoff_expr, cfg.cutoff_time)
    bars = (
        pit.with_utc(market_bars, "knowledge_time")
        .filter(pl.col("date").is_between(lookback_start(as_of), as_of))
        .filter(pl.col("knowledge_time") <= cut)
        .collect(engine=pit.ENGINE)
    )
    return compute_features(universe, bars, corporate_actions, fundamentals, [as_of], cfg)
