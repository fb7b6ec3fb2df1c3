"""Which built-in features a data source cannot support, and why.

A close-only price file (no open/high/low/volume) or a folder without fundamentals is
common. The engine never substitutes a missing field (an open is not "the previous close",
a volume is not 1): a feature whose inputs include a missing field is null for every row,
and the run's metadata should say which and why. This module derives that list from the
feature expressions themselves (``polars.Expr.meta.root_names``), so a new feature is
covered without editing a table here.

Input columns of the feature context and the raw field each comes from:
- ``open``, ``high``, ``low``, ``volume``: the bar fields of the same name (``traded_volume``
  is the as-traded volume);
- ``close``, ``traded_close``, ``ret``, ``market_ret``: the close (always present);
- fundamentals: ``<field>``, ``<field>_ttm``, ``<field>_year_ago`` come from the
  fundamentals field ``<field>``;
- a snapshot feature built on other features inherits their missing inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from quant_assets.features import pit
from quant_assets.features.catalog import active_features

# context column -> the raw bar field it is computed from
_BAR_INPUTS = {
    "open": "open",
    "high": "high",
    "low": "low",
    "volume": "volume",
    "traded_volume": "volume",
    "close": "close",
    "traded_close": "close",
    "ret": "close",
    "market_ret": "close",
}
OPTIONAL_BAR_FIELDS = ("open", "high", "low", "volume")
# Features that read an as-traded price level (market cap, dollar volume): with back-adjusted
# bars the level embeds splits and dividends that happened later, so these are not point in
# time even though they are computed.
_PRICE_LEVEL_INPUTS = {"traded_close", "traded_volume", "close"}


def _raw_inputs(column: str) -> tuple[str, str] | None:
    """('bars', field) or ('fundamentals', field) for a context column, None otherwise."""
    if column in _BAR_INPUTS:
        return "bars", _BAR_INPUTS[column]
    for suffix in ("_ttm", "_year_ago", ""):
        base = column.removesuffix(suffix) if suffix else column
        if (suffix == "" or column.endswith(suffix)) and base in pit.FUNDAMENTAL_FIELDS:
            return "fundamentals", base
    return None


def feature_inputs() -> dict[str, set[tuple[str, str]]]:
    """feature name -> the raw (table, field) pairs it reads, dependencies included."""
    registry = active_features()
    out: dict[str, set[tuple[str, str]]] = {}
    for name, feature in registry.items():  # registry order: dependencies come first
        needed: set[tuple[str, str]] = set()
        for column in feature.build().meta.root_names():
            if column in out:
                needed |= out[column]
            elif (raw := _raw_inputs(column)) is not None:
                needed.add(raw)
        for dependency in feature.depends_on:
            needed |= out.get(dependency, set())
        out[name] = needed
    return out


def null_features(
    missing_bar_fields: Iterable[str] = (),
    missing_fundamental_fields: Iterable[str] = (),
) -> dict[str, str]:
    """feature name -> why it is null for every row, given the fields a source lacks
    (e.g. ``null_features(["open", "high", "low", "volume"])`` for close-only bars;
    all of ``pit.FUNDAMENTAL_FIELDS`` when there is no fundamentals file)."""
    bars = set(missing_bar_fields)
    funds = set(missing_fundamental_fields)
    unknown = bars - set(OPTIONAL_BAR_FIELDS)
    if unknown:
        raise ValueError(f"only {OPTIONAL_BAR_FIELDS} may be missing from bars, not {sorted(unknown)}")
    out: dict[str, str] = {}
    for name, inputs in feature_inputs().items():
        lacking = sorted(
            f"{table}.{field}" for table, field in inputs
            if (table == "bars" and field in bars) or (table == "fundamentals" and field in funds)
        )
        if lacking:
            out[name] = "needs " + ", ".join(lacking) + ", which the source does not provide"
    return out


def price_level_features() -> dict[str, str]:
    """Features that read an as-traded price or volume level: with back-adjusted bars
    (``bars_adjusted: true``) they are computed, but the level embeds later corporate
    actions, so they are not point in time (returns and ratios of closes are unaffected)."""
    out: dict[str, str] = {}
    for name, feature in active_features().items():  # registry order: dependencies come first
        roots = set(feature.build().meta.root_names())
        reads_level = (feature.kind == "snapshot" and "close" in roots) or roots & {"traded_close", "traded_volume"}
        if reads_level or any(d in out for d in feature.depends_on):
            out[name] = "reads a price/volume level; back-adjusted bars make it look-ahead"
    return out


def missing_fields(market_bars: pl.DataFrame, fundamentals: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(optional bar fields null in every bar, fundamentals fields without a row) of the
    tables a run read: what ``null_features`` needs, taken from the data itself."""
    bars = [] if market_bars.height == 0 else [
        f for f in OPTIONAL_BAR_FIELDS
        if f not in market_bars.columns or market_bars[f].null_count() == market_bars.height
    ]
    present = set(fundamentals["field"].unique().to_list()) if "field" in fundamentals.columns else set()
    return bars, [f for f in pit.FUNDAMENTAL_FIELDS if f not in present]


def availability_metadata(market_bars: pl.DataFrame, fundamentals: pl.DataFrame, bars_adjusted: bool) -> dict:
    """What a feature run's metadata says about its inputs: ``null_features`` (feature ->
    why it is null for every row) and, for adjusted bars, ``not_point_in_time`` (feature ->
    why its value embeds later corporate actions; those already null are left out)."""
    bars, funds = missing_fields(market_bars, fundamentals)
    null = null_features(bars, funds)
    levels = {k: v for k, v in price_level_features().items() if k not in null} if bars_adjusted else {}
    return {"missing_bar_fields": bars, "missing_fundamental_fields": funds,
            "null_features": null, "not_point_in_time": levels}
