"""The raw-table contracts (ARCHITECTURE.md): column names, order and polars dtypes.

Times are ``Datetime("us", "UTC")``. Every table is bitemporal: ``knowledge_time`` is when a
row became available; a correction is a new row with a later knowledge_time.
"""

from __future__ import annotations

import polars as pl

UTC_TIME = pl.Datetime("us", "UTC")

UNIVERSE_SCHEMA: dict[str, pl.DataType] = {
    "instrument_id": pl.String(),
    "sector": pl.String(),
    "listed_from": pl.Date(),
    "listed_until": pl.Date(),
    "knowledge_time": UTC_TIME,
}
MARKET_BARS_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date(),
    "instrument_id": pl.String(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "knowledge_time": UTC_TIME,
}
CORPORATE_ACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "instrument_id": pl.String(),
    "ex_date": pl.Date(),
    "split_ratio": pl.Float64(),
    "cash_dividend": pl.Float64(),
    "knowledge_time": UTC_TIME,
}
FUNDAMENTALS_SCHEMA: dict[str, pl.DataType] = {
    "instrument_id": pl.String(),
    "field": pl.String(),
    "period_end": pl.Date(),
    "value": pl.Float64(),
    "knowledge_time": UTC_TIME,
}

# A benchmark index level (optional, file source only): used ex post by the validation
# report (an index is a reference series, not an input of any feature).
BENCHMARK_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date(),
    "close": pl.Float64(),
}

# each raw table's contract by asset name (the column schemas the Dagster catalogue shows)
RAW_TABLE_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "universe": UNIVERSE_SCHEMA,
    "market_bars": MARKET_BARS_SCHEMA,
    "corporate_actions": CORPORATE_ACTIONS_SCHEMA,
    "fundamentals": FUNDAMENTALS_SCHEMA,
}
