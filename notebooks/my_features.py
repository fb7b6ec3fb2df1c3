"""A researcher's feature module (feature_plugin.ipynb): the public API of the built-in
library, kept outside the package. Name it in QUANT_FEATURE_MODULES (with this folder on
PYTHONPATH) and the platform computes it as a column of pit_features, leak-checked, versioned."""

import polars as pl

from quant_assets.features import Feature


def gap_up_share(days: int) -> pl.Expr:
    """Share of the last `days` sessions that opened above the previous close."""
    gap_up = (pl.col("open") > pl.col("close").shift(1)).cast(pl.Float64)
    return gap_up.rolling_mean(days, min_samples=days)


def range_expansion(days: int) -> pl.Expr:
    """Today's high-low range over its mean of the last `days` sessions."""
    day_range = (pl.col("high") - pl.col("low")) / pl.col("close")
    return day_range / day_range.rolling_mean(days, min_samples=days)


def rank_in_day(column: str) -> pl.Expr:
    """Percentile rank in the day's cross-section: 0 lowest, 1 highest."""
    x = pl.col(column)
    return (x.rank("average").over("date") - 1.0) / (x.count().over("date") - 1.0)


FEATURES = [
    # series: one instrument's point-in-time context; window = market days read, D included
    Feature("gap_up_share_20d", "gaps", "share of gap-up opens in 20 sessions", window=21,
            expr_builder=gap_up_share, params={"days": 20}),
    Feature("range_expansion_10d", "range", "day's range / its 10-session mean", window=10,
            expr_builder=range_expansion, params={"days": 10}),
    # snapshot: the day's cross-section; the built-in features it reads are in depends_on
    Feature("value_momentum_rank", "combo", "mean rank of book_to_price and return_60d",
            window=61, kind="snapshot", depends_on=("book_to_price", "return_60d"),
            expr=(rank_in_day("book_to_price") + rank_in_day("return_60d")) / 2.0),
]
