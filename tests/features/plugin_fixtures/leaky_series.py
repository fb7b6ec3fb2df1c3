"""A plug-in series feature that reads the next row of its context (shift(-1)): inside a
batch that row is the next market day; the leak check finds it."""

import polars as pl

from quant_assets.features import Feature

FEATURES = [
    Feature("peek_series", "leaky", "next close / close - 1", 2, expr=pl.col("close").shift(-1) / pl.col("close") - 1.0),
]
