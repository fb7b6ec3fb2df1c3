"""What the Dagster catalogue says about each table asset: its owners, and its columns as a
``TableSchema`` (the ``dagster/column_schema`` metadata the UI shows as the asset's columns).

Owners are one team per group of the flow (``owners_of``). A column schema comes from a
declared contract where one exists (the raw tables, ``pit_features``' feature catalogue),
attached to the definition so the UI lists the columns before anything is built; the IO
manager also records the schema of every table it writes (``schema_of``), so the other
tables show the columns they really have.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
from dagster import TableColumn, TableSchema

COLUMN_SCHEMA = "dagster/column_schema"

# one owning team per group of the flow; Dagster owners are e-mails or "team:<name>"
_OWNERS = {
    "market_data": "team:data-engineering",
    "features": "team:quant-research",
    "models": "team:quant-research",
    "backtest": "team:quant-research",
    "sweeps": "team:quant-research",
    "validation": "team:model-risk",
    "serving": "team:trading-platform",
}


def owners_of(group: str) -> list[str]:
    """The owners of a group's assets (a KeyError for a group without an owner)."""
    return [_OWNERS[group]]


def _type_name(dtype: pl.DataType) -> str:
    return str(dtype).lower()


def column_schema(
    columns: Mapping[str, pl.DataType], descriptions: Mapping[str, str] | None = None
) -> TableSchema:
    """A TableSchema from column name -> polars dtype, with optional descriptions."""
    descriptions = descriptions or {}
    return TableSchema(
        columns=[
            TableColumn(name, _type_name(dtype), description=descriptions.get(name))
            for name, dtype in columns.items()
        ]
    )


def schema_of(frame: pl.DataFrame) -> TableSchema:
    """The TableSchema of a frame that is written (its columns and dtypes)."""
    return column_schema(dict(frame.schema))
