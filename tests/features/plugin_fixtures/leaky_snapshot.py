"""A plug-in with a look-ahead bug the definition checks cannot see and the blocking leak
check must catch: within a multi-day batch the cross-section of D holds later days too,
and shift(-1) over the instrument reads the next day's close."""

import polars as pl

from quant_assets.features import Feature

FEATURES = [
    Feature("peek_next_close", "leaky", "next day's close / close - 1 (look-ahead)", 1,
            expr=pl.col("close").shift(-1).over("instrument_id") / pl.col("close") - 1.0, kind="snapshot"),
]
