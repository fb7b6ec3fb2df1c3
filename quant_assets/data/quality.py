"""Data-quality rules for the raw tables, used by the blocking asset checks.

Conventions
-----------
- Each ``check_*`` function takes a polars frame and returns a list of ``Violation``;
  an empty list means the frame passes. Rules never raise on bad data (only
  ``check_market_bars`` raises ValueError when its `universe` argument breaks its contract).
- A schema violation (missing column or wrong dtype) stops the row rules, which would
  otherwise fail on the missing/mistyped columns; extra or reordered columns are reported
  and the row rules still run.
- ``examples`` holds up to 5 offending rows, reduced to their key columns (plus the values
  that broke the rule), as plain Python dicts.
- "Not before its date" compares a UTC knowledge_time with the date at 00:00 UTC.
- Nulls fail the value rules (a null price is not a finite positive price).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from quant_assets.calendar import holiday_list
from quant_assets.data.simulator import (
    CORPORATE_ACTIONS_SCHEMA,
    FUNDAMENTALS_SCHEMA,
    MARKET_BARS_SCHEMA,
    UNIVERSE_SCHEMA,
)

MAX_EXAMPLES = 5

# One line per rule: the description of the blocking asset check of that name.
RULE_DOCS: dict[str, str] = {
    "knowledge_time_future": "No bar is known after the time of the check (now, UTC).",
    "bars_present": "A trading-day partition run found bars (an empty day is never written).",
    "schema": "Columns, dtypes and column order exactly as the raw-table contract.",
    "null_key": "Key columns are never null.",
    "duplicate_key": "No two rows share the table's key.",
    "price_positive_finite": "open, high, low and close are finite and > 0.",
    "ohlc_consistency": "low <= min(open, close) and max(open, close) <= high.",
    "volume_non_negative": "volume is finite and >= 0.",
    "knowledge_time_present": "knowledge_time is not null.",
    "knowledge_time_before_date": "A bar is not known before its date (00:00 UTC).",
    "trading_day": "Bars fall on trading days of the calendar.",
    "unknown_instrument": "Every instrument_id is in the universe.",
    "outside_listing": "Bars fall inside the instrument's listing interval.",
    "listing_interval": "listed_until is not before listed_from.",
    "split_ratio_positive_finite": "split_ratio is finite and > 0 (1.0 when no split).",
    "cash_dividend_non_negative": "cash_dividend is finite and >= 0 (0.0 when none).",
    "value_finite": "Fundamental values are finite.",
    "knowledge_time_before_period_end": "Fundamentals are not published before the period ends.",
}

# The rules each check_* function can report, in the order it evaluates them.
RULES_BY_TABLE: dict[str, tuple[str, ...]] = {
    "market_bars": (
        "schema",
        "null_key",
        "duplicate_key",
        "price_positive_finite",
        "ohlc_consistency",
        "volume_non_negative",
        "knowledge_time_present",
        "knowledge_time_before_date",
        "trading_day",
        "unknown_instrument",
        "outside_listing",
        "knowledge_time_future",
        "bars_present",
    ),
    "universe": ("schema", "null_key", "duplicate_key", "listing_interval"),
    "corporate_actions": (
        "schema",
        "null_key",
        "knowledge_time_present",
        "duplicate_key",
        "split_ratio_positive_finite",
        "cash_dividend_non_negative",
    ),
    "fundamentals": (
        "schema",
        "null_key",
        "knowledge_time_present",
        "duplicate_key",
        "value_finite",
        "knowledge_time_before_period_end",
    ),
}


@dataclass(frozen=True)
class Violation:
    rule: str
    n_rows: int
    examples: list[dict]
    message: str


def _violation(
    table: str,
    rule: str,
    bad: pl.DataFrame,
    columns: Sequence[str],
    what: str,
) -> Violation:
    examples = bad.select(list(columns)).head(MAX_EXAMPLES).to_dicts()
    shown = "; ".join(", ".join(f"{k}={v}" for k, v in row.items()) for row in examples)
    message = f"{table}: rule '{rule}' failed on {bad.height} row(s): {what}. Examples: {shown}"
    return Violation(rule=rule, n_rows=bad.height, examples=examples, message=message)


def _rule(
    df: pl.DataFrame,
    table: str,
    rule: str,
    bad_mask: pl.Expr,
    columns: Sequence[str],
    what: str,
) -> list[Violation]:
    # fill_null(True): a rule whose inputs are null cannot be shown to hold
    bad = df.filter(bad_mask.fill_null(True))
    if bad.height == 0:
        return []
    return [_violation(table, rule, bad, columns, what)]


def check_schema(df: pl.DataFrame, expected: dict[str, pl.DataType], table: str) -> list[Violation]:
    """Columns, dtypes and column order exactly as the contract."""
    problems: list[str] = []
    missing = [c for c in expected if c not in df.columns]
    extra = [c for c in df.columns if c not in expected]
    wrong = [
        f"{c} is {df.schema[c]} (expected {t})"
        for c, t in expected.items()
        if c in df.columns and df.schema[c] != t
    ]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if wrong:
        problems.append("wrong dtypes: " + "; ".join(wrong))
    if not problems and list(df.columns) != list(expected):
        problems.append(f"column order {df.columns} (expected {list(expected)})")
    if not problems:
        return []
    message = f"{table}: rule 'schema' failed: " + "; ".join(problems)
    examples = [{"missing": missing, "unexpected": extra, "wrong_dtypes": wrong}]
    return [Violation(rule="schema", n_rows=df.height, examples=examples, message=message)]


def _schema_blocks(df: pl.DataFrame, expected: dict[str, pl.DataType]) -> bool:
    return any(c not in df.columns or df.schema[c] != t for c, t in expected.items())


def _duplicates(df: pl.DataFrame, table: str, keys: list[str]) -> list[Violation]:
    bad = df.filter(pl.struct(keys).is_duplicated()).sort(keys, nulls_last=True)
    if bad.height == 0:
        return []
    return [_violation(table, "duplicate_key", bad, keys, f"duplicate key ({', '.join(keys)})")]


def _nulls(df: pl.DataFrame, table: str, columns: list[str], keys: list[str]) -> list[Violation]:
    mask = pl.any_horizontal([pl.col(c).is_null() for c in columns])
    return _rule(df, table, "null_key", mask, keys, f"null in {columns}")


def _finite_positive(col: str) -> pl.Expr:
    return pl.col(col).is_finite() & (pl.col(col) > 0)


def _midnight_utc(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def check_market_bars(
    df: pl.DataFrame,
    universe: pl.DataFrame | None = None,
    as_of: dt.datetime | None = None,
) -> list[Violation]:
    """Every market_bars rule; with ``as_of``, also that no bar is known after it."""
    table = "market_bars"
    out = check_schema(df, MARKET_BARS_SCHEMA, table)
    if _schema_blocks(df, MARKET_BARS_SCHEMA):
        return out
    keys = ["date", "instrument_id"]
    out += _nulls(df, table, keys, keys)
    out += _duplicates(df, table, keys)
    prices = ["open", "high", "low", "close"]
    out += _rule(
        df,
        table,
        "price_positive_finite",
        ~pl.all_horizontal([_finite_positive(c) for c in prices]),
        keys + prices,
        "open/high/low/close must be finite and > 0",
    )
    out += _rule(
        # only rows whose prices are valid numbers; the others fail the rule above
        df.filter(pl.all_horizontal([pl.col(c).is_finite() for c in prices]).fill_null(False)),
        table,
        "ohlc_consistency",
        (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.max_horizontal("open", "close") > pl.col("high")),
        keys + prices,
        "need low <= min(open, close) and max(open, close) <= high",
    )
    out += _rule(
        df,
        table,
        "volume_non_negative",
        ~(pl.col("volume").is_finite() & (pl.col("volume") >= 0)),
        keys + ["volume"],
        "volume must be finite and >= 0",
    )
    out += _rule(
        df,
        table,
        "knowledge_time_present",
        pl.col("knowledge_time").is_null(),
        keys,
        "knowledge_time is null",
    )
    out += _rule(
        df.drop_nulls(["knowledge_time", "date"]),
        table,
        "knowledge_time_before_date",
        pl.col("knowledge_time") < _midnight_utc("date"),
        keys + ["knowledge_time"],
        "knowledge_time is before the bar's date (00:00 UTC)",
    )
    out += _trading_days(df.drop_nulls(["date"]), table, keys)
    if as_of is not None:
        out += _rule(
            df.drop_nulls(["knowledge_time"]),
            table,
            "knowledge_time_future",
            pl.col("knowledge_time") > pl.lit(as_of).dt.convert_time_zone("UTC"),
            keys + ["knowledge_time"],
            f"knowledge_time is after {as_of.isoformat()}",
        )
    if universe is not None:
        out += _against_universe(df.drop_nulls(keys), universe, table, keys)
    return out


def check_bars_present(df: pl.DataFrame, start: dt.date, end: dt.date) -> list[Violation]:
    """A partition run with no bars at all must fail rather than write an empty day over
    what is stored (the predicate write would delete the partition's rows)."""
    if df.height:
        return []
    message = (
        f"market_bars: rule 'bars_present' failed: no bars with {start} <= date < {end}; "
        "nothing was written"
    )
    return [Violation("bars_present", 0, [{"start": str(start), "end": str(end)}], message)]


def _trading_days(df: pl.DataFrame, table: str, keys: list[str]) -> list[Violation]:
    if df.height == 0:
        return []
    lo, hi = df["date"].min(), df["date"].max()
    holidays = pl.Series(holiday_list(lo, hi), dtype=pl.Date)
    mask = (pl.col("date").dt.weekday() > 5) | pl.col("date").is_in(holidays)
    return _rule(df, table, "trading_day", mask, keys, "date is not a trading day")


def _against_universe(
    df: pl.DataFrame, universe: pl.DataFrame, table: str, keys: list[str]
) -> list[Violation]:
    if _schema_blocks(universe, UNIVERSE_SCHEMA):
        raise ValueError(
            "check_market_bars: the universe given does not match the contract schema: "
            + "; ".join(v.message for v in check_schema(universe, UNIVERSE_SCHEMA, "universe"))
        )
    ids = universe["instrument_id"].drop_nulls().unique()
    out = _rule(
        df,
        table,
        "unknown_instrument",
        ~pl.col("instrument_id").is_in(ids.implode()),
        keys,
        "instrument_id is not in the universe",
    )
    known = df.join(
        universe.select("instrument_id", "listed_from", "listed_until").unique(
            "instrument_id", keep="first", maintain_order=True
        ),
        on="instrument_id",
        how="inner",
    )
    out += _rule(
        known,
        table,
        "outside_listing",
        (pl.col("date") < pl.col("listed_from"))
        | (pl.col("listed_until").is_not_null() & (pl.col("date") > pl.col("listed_until"))),
        keys + ["listed_from", "listed_until"],
        "bar outside the instrument's listing interval [listed_from, listed_until]",
    )
    return out


def check_universe(df: pl.DataFrame) -> list[Violation]:
    table = "universe"
    out = check_schema(df, UNIVERSE_SCHEMA, table)
    if _schema_blocks(df, UNIVERSE_SCHEMA):
        return out
    keys = ["instrument_id"]
    out += _nulls(
        df, table, ["instrument_id", "sector", "listed_from"], keys + ["sector", "listed_from"]
    )
    out += _duplicates(df, table, keys)
    out += _rule(
        df.drop_nulls(["listed_from", "listed_until"]),
        table,
        "listing_interval",
        pl.col("listed_until") < pl.col("listed_from"),
        keys + ["listed_from", "listed_until"],
        "listed_until is before listed_from",
    )
    return out


def check_corporate_actions(df: pl.DataFrame) -> list[Violation]:
    table = "corporate_actions"
    out = check_schema(df, CORPORATE_ACTIONS_SCHEMA, table)
    if _schema_blocks(df, CORPORATE_ACTIONS_SCHEMA):
        return out
    keys = ["instrument_id", "ex_date", "knowledge_time"]
    out += _nulls(df, table, ["instrument_id", "ex_date"], keys)
    out += _rule(
        df,
        table,
        "knowledge_time_present",
        pl.col("knowledge_time").is_null(),
        keys,
        "knowledge_time (announcement) is null",
    )
    out += _duplicates(df, table, keys)
    out += _rule(
        df,
        table,
        "split_ratio_positive_finite",
        ~_finite_positive("split_ratio"),
        keys + ["split_ratio"],
        "split_ratio must be finite and > 0 (1.0 when there is no split)",
    )
    out += _rule(
        df,
        table,
        "cash_dividend_non_negative",
        ~(pl.col("cash_dividend").is_finite() & (pl.col("cash_dividend") >= 0)),
        keys + ["cash_dividend"],
        "cash_dividend must be finite and >= 0 (0.0 when there is none)",
    )
    return out


def check_fundamentals(df: pl.DataFrame) -> list[Violation]:
    table = "fundamentals"
    out = check_schema(df, FUNDAMENTALS_SCHEMA, table)
    if _schema_blocks(df, FUNDAMENTALS_SCHEMA):
        return out
    keys = ["instrument_id", "field", "period_end", "knowledge_time"]
    out += _nulls(df, table, ["instrument_id", "field", "period_end"], keys)
    out += _rule(
        df,
        table,
        "knowledge_time_present",
        pl.col("knowledge_time").is_null(),
        keys,
        "knowledge_time (publication) is null",
    )
    out += _duplicates(df, table, keys)
    out += _rule(
        df,
        table,
        "value_finite",
        ~pl.col("value").is_finite(),
        keys + ["value"],
        "value must be finite",
    )
    out += _rule(
        df.drop_nulls(["knowledge_time", "period_end"]),
        table,
        "knowledge_time_before_period_end",
        pl.col("knowledge_time") < _midnight_utc("period_end"),
        keys,
        "published (knowledge_time) before the period ended (period_end 00:00 UTC)",
    )
    return out


def format_violations(violations: Sequence[Violation]) -> str:
    """One line per violation; 'no violations' when the list is empty."""
    if not violations:
        return "no violations"
    lines = [f"{len(violations)} rule(s) failed:"]
    lines += [f"- [{v.rule}] {v.message}" for v in violations]
    return "\n".join(lines)
