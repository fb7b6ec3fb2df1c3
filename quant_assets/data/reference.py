"""Bitemporal reference tables: universe versions, as-of reads and incremental updates.

Conventions
-----------
- The universe is bitemporal like every raw table: one row per (instrument_id,
  knowledge_time) version. ``universe_versions`` turns plain listing rows (no
  knowledge_time) into versions by the documented rule: the listing is known from
  ``listed_from`` 00:00 UTC (a listing is public when it starts); a delisting
  (``listed_until`` set) is a second version known at the close of the last listed session
  (``calendar.session_close``), so no day before it sees the future delisting.
- ``universe_as_of(universe, t)``: the latest version per instrument known at ``t``;
  ``current_universe``: the latest version whatever its time (ex-post uses: backtest
  listings, sector labels of a report).
- ``new_versions`` diffs a stored reference table against freshly read rows and returns
  only the rows to append, stamped with one later knowledge time: a changed row becomes a
  new version, an unchanged one nothing; nothing is ever overwritten or deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from quant_assets.calendar import session_close_expr
from quant_assets.data.schemas import UNIVERSE_SCHEMA, UTC_TIME

UNIVERSE_KEY = ("instrument_id",)
UNIVERSE_VALUES = ("sector", "listed_from", "listed_until")


def universe_versions(listings: pl.DataFrame) -> pl.DataFrame:
    """Contract universe versions from listing rows (module doc).

    Rows that carry a non-null ``knowledge_time`` are kept as they are; the others become one
    listing version, plus a delisting version when ``listed_until`` is set. Sorted by
    (instrument_id, knowledge_time).
    """
    if "knowledge_time" not in listings.columns:
        listings = listings.with_columns(pl.lit(None, UTC_TIME).alias("knowledge_time"))
    listings = listings.with_columns(pl.col("knowledge_time").cast(UTC_TIME))
    dated = listings.filter(pl.col("knowledge_time").is_not_null())
    undated = listings.filter(pl.col("knowledge_time").is_null())
    listed = undated.with_columns(
        pl.lit(None, pl.Date).alias("listed_until"),
        pl.col("listed_from").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("knowledge_time"),
    )
    delisted = undated.filter(pl.col("listed_until").is_not_null()).with_columns(
        session_close_expr(pl.col("listed_until")).alias("knowledge_time")
    )
    out = pl.concat([dated, listed, delisted], how="vertical_relaxed")
    return out.select(list(UNIVERSE_SCHEMA)).cast(UNIVERSE_SCHEMA).sort("instrument_id", "knowledge_time")


def universe_as_of(universe: pl.DataFrame, as_of: dt.datetime) -> pl.DataFrame:
    """The latest version of each instrument known at ``as_of`` (a UTC-aware time)."""
    known = universe.filter(pl.col("knowledge_time") <= pl.lit(as_of).dt.convert_time_zone("UTC"))
    return current_universe(known)


def current_universe(universe: pl.DataFrame) -> pl.DataFrame:
    """The latest version of each instrument (one row per instrument_id, sorted by it)."""
    if "knowledge_time" not in universe.columns:
        return universe.unique("instrument_id", keep="last", maintain_order=True).sort("instrument_id")
    return (
        universe.sort("instrument_id", "knowledge_time", maintain_order=True)
        .unique("instrument_id", keep="last", maintain_order=True)
        .sort("instrument_id")
    )


def universe_changes(universe: pl.DataFrame) -> pl.DataFrame:
    """(ref, knowledge_time) of every version after an instrument's first: ref is the first
    date on which the version's listing interval differs from the previous version's (a
    sector change alone changes no listing: no row). The feature engine treats these like
    late bars: a day before `ref` reads the same listings from either version.
    The first version's ref is its listed_from."""
    far = dt.date(9999, 12, 31)
    versions = universe.sort("instrument_id", "knowledge_time").with_columns(
        pl.col("listed_from").shift(1).over("instrument_id").alias("_lf0"),
        pl.col("listed_until").fill_null(far).shift(1).over("instrument_id").alias("_lu0"),
        pl.col("listed_until").fill_null(far).alias("_lu1"),
    )
    first = pl.col("_lf0").is_null()
    lf_diff = pl.when(pl.col("listed_from") != pl.col("_lf0")).then(pl.min_horizontal("listed_from", "_lf0"))
    # [lf, lu0] vs [lf, lu1] differ from min(lu0, lu1) + 1 on
    lu_diff = pl.when(pl.col("_lu1") != pl.col("_lu0")).then(
        pl.min_horizontal("_lu0", "_lu1") + pl.duration(days=1)
    )
    ref = pl.when(first).then(pl.col("listed_from")).otherwise(pl.min_horizontal(lf_diff, lu_diff))
    return (
        versions.select(ref.alias("ref"), "knowledge_time")
        .drop_nulls("ref")
        .with_columns(pl.col("knowledge_time").cast(UTC_TIME))
    )


def new_versions(
    stored: pl.DataFrame | None,
    incoming: pl.DataFrame,
    key: Sequence[str],
    knowledge_time: dt.datetime,
) -> pl.DataFrame:
    """Rows of ``incoming`` (one current row per key, contract columns) that are new or differ
    from the stored key's latest version, stamped ``knowledge_time`` where they carry none
    (or an earlier one than ``knowledge_time`` would allow: a change seen now was not known
    before now). An incoming row equal to the stored latest version adds nothing.

    ``stored`` None or empty: every incoming row is new (keeping its own knowledge_time
    when it has one). Keys in ``stored`` but absent from ``incoming`` add nothing: a
    reference file that stops listing a row is not evidence that the row was withdrawn.
    """
    key = list(key)
    stamp = pl.lit(knowledge_time).dt.convert_time_zone("UTC").cast(UTC_TIME)
    if stored is None or stored.height == 0:
        return incoming.with_columns(pl.coalesce(pl.col("knowledge_time"), stamp).alias("knowledge_time"))
    values = [c for c in incoming.columns if c not in (*key, "knowledge_time")]
    latest = (
        stored.sort([*key, "knowledge_time"], maintain_order=True)
        .unique(key, keep="last", maintain_order=True)
        .select(*key, *(pl.col(c).alias(f"_stored_{c}") for c in values), pl.col("knowledge_time").alias("_stored_kt"))
    )
    joined = incoming.join(latest, on=key, how="left", nulls_equal=True)
    changed = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"_stored_{c}")) for c in values)
    is_new = pl.col("_stored_kt").is_null()
    fresh = joined.filter(is_new | changed)
    # a changed row is known now; a new one keeps its own time when it has one
    kt = (
        pl.when(is_new)
        .then(pl.coalesce(pl.col("knowledge_time"), stamp))
        .otherwise(pl.max_horizontal(pl.coalesce(pl.col("knowledge_time"), stamp), stamp))
    )
    return fresh.with_columns(kt.alias("knowledge_time")).select(incoming.columns)
