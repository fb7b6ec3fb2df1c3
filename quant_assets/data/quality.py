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
- Keys, ``close`` and ``knowledge_time`` must be present: a null there fails its rule. ``open``,
  ``high``, ``low`` and ``volume`` are optional fields (a close-only source): null means "not
  provided" and passes; a present value must pass its rule.
- Trading days are the sessions of the configured exchange calendar (``calendar.py``).
- The universe is bitemporal: its key is (instrument_id, knowledge_time); the rules against
  the universe use each instrument's latest version (``reference.current_universe``).
- The landing rules (``LANDING_RULES``) need context one frame does not carry (the
  evaluation time, the stored bars, the file's row order); they report 1-based ``row``
  numbers of the frame as read. The landing sensor and the file source both run them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from quant_assets.calendar import is_session_expr
from quant_assets.data.reference import current_universe
from quant_assets.data.schemas import (
    BENCHMARK_SCHEMA,
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
    "price_positive_finite": "close is finite and > 0; open, high, low too when present.",
    "ohlc_consistency": "low <= min(open, close) and max(open, close) <= high (present fields).",
    "volume_non_negative": "volume, when present, is finite and >= 0.",
    "knowledge_time_present": "knowledge_time is not null.",
    "knowledge_time_before_date": "A bar is not known before its date (00:00 UTC).",
    "trading_day": "Bars fall on sessions of the exchange calendar (QUANT_CALENDAR).",
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
    "universe": ("schema", "null_key", "knowledge_time_present", "duplicate_key", "listing_interval"),
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
    "benchmark": ("schema", "null_key", "duplicate_key", "price_positive_finite", "trading_day"),
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


BAR_KEYS = ("date", "instrument_id")  # one market_bars row per key


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
    keys = list(BAR_KEYS)
    out += _nulls(df, table, keys, keys)
    out += _duplicates(df, table, keys)
    prices = ["open", "high", "low", "close"]
    optional = ["open", "high", "low"]
    out += _rule(
        df,
        table,
        "price_positive_finite",
        ~(_finite_positive("close") & pl.all_horizontal(
            [pl.col(c).is_null() | _finite_positive(c) for c in optional]
        )),
        keys + prices,
        "close must be finite and > 0; open/high/low too when present",
    )
    open_close_low = pl.min_horizontal("open", "close")  # ignores a null open
    open_close_high = pl.max_horizontal("open", "close")
    out += _rule(
        # only rows whose present prices are valid numbers; the others fail the rule above
        df.filter(
            pl.col("close").is_finite().fill_null(False)
            & pl.all_horizontal([pl.col(c).is_null() | pl.col(c).is_finite() for c in optional])
        ),
        table,
        "ohlc_consistency",
        (pl.col("low").is_not_null() & (pl.col("low") > open_close_low))
        | (pl.col("high").is_not_null() & (open_close_high > pl.col("high"))),
        keys + prices,
        "need low <= min(open, close) and max(open, close) <= high",
    )
    out += _rule(
        df,
        table,
        "volume_non_negative",
        pl.col("volume").is_not_null() & ~(pl.col("volume").is_finite() & (pl.col("volume") >= 0)),
        keys + ["volume"],
        "volume must be finite and >= 0 when present",
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
    mask = ~is_session_expr(pl.col("date"))
    return _rule(df, table, "trading_day", mask, keys, "date is not a session of the exchange calendar")


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
    # the latest version of each instrument: whether a bar is inside the listing is a
    # question about the listing as finally known, not as of some earlier day
    known = df.join(
        current_universe(universe).select("instrument_id", "listed_from", "listed_until"),
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
    keys = ["instrument_id", "knowledge_time"]
    out += _nulls(
        df, table, ["instrument_id", "sector", "listed_from"], keys + ["sector", "listed_from"]
    )
    out += _rule(
        df,
        table,
        "knowledge_time_present",
        pl.col("knowledge_time").is_null(),
        keys,
        "knowledge_time (when the version became known) is null",
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


def check_benchmark(df: pl.DataFrame) -> list[Violation]:
    """A benchmark index level (date, close): one positive close per session."""
    table = "benchmark"
    out = check_schema(df, BENCHMARK_SCHEMA, table)
    if _schema_blocks(df, BENCHMARK_SCHEMA):
        return out
    keys = ["date"]
    out += _nulls(df, table, ["date"], keys)
    out += _duplicates(df, table, keys)
    out += _rule(df, table, "price_positive_finite", ~_finite_positive("close"), keys + ["close"],
                 "close must be finite and > 0")
    out += _trading_days(df.drop_nulls("date"), table, keys)
    return out


def format_violations(violations: Sequence[Violation]) -> str:
    """One line per violation; 'no violations' when the list is empty."""
    if not violations:
        return "no violations"
    lines = [f"{len(violations)} rule(s) failed:"]
    lines += [f"- [{v.rule}] {v.message}" for v in violations]
    return "\n".join(lines)


# --------------------------------------------------------------------------- landing rules

# Rules the landing path adds to quality.check_market_bars (description per rule).
LANDING_RULES: dict[str, str] = {
    "row_order": "Rows are sorted by (date, instrument_id), as file producers promise.",
    "knowledge_time_future": "No bar is known after the evaluation time (now, UTC).",
    "restatement_older": "A bar that replaces a stored bar is not known earlier than it.",
    "price_jump": "close / previous close (split-adjusted) stays within [1/MAX, MAX].",
}
# A split-adjusted close-to-close move beyond x4 (or below /4) in one day is a data error
# (a misplaced decimal, a currency mix-up), never a market move in this universe: the
# simulator's largest daily move over 2022-2024 is well under 2x.
MAX_DAILY_PRICE_RATIO = 4.0
_KEYS = list(BAR_KEYS)


def _landing_violation(rule: str, bad: pl.DataFrame, columns: list[str], what: str) -> Violation:
    # the same shape and message format as quality.py, so one formatter serves both
    examples = bad.select(columns).head(MAX_EXAMPLES).to_dicts()
    shown = "; ".join(", ".join(f"{k}={v}" for k, v in row.items()) for row in examples)
    message = f"market_bars: rule '{rule}' failed on {bad.height} row(s): {what}. Examples: {shown}"
    return Violation(rule=rule, n_rows=bad.height, examples=examples, message=message)


def check_row_order(bars: pl.DataFrame) -> list[Violation]:
    """Rows out of (date, instrument_id) order, with their 1-based row numbers."""
    numbered = bars.with_row_index("row", offset=1)
    prev_date = pl.col("date").shift(1)
    prev_id = pl.col("instrument_id").shift(1)
    before_previous = (pl.col("date") < prev_date) | (
        (pl.col("date") == prev_date) & (pl.col("instrument_id") < prev_id)
    )
    bad = numbered.filter(before_previous.fill_null(False))
    if bad.height == 0:
        return []
    return [_landing_violation(
        "row_order", bad, ["row", *_KEYS],
        "row is before its predecessor in (date, instrument_id) order",
    )]


def check_knowledge_time_future(bars: pl.DataFrame, as_of: dt.datetime) -> list[Violation]:
    """Bars whose knowledge_time is after ``as_of`` (a timezone-aware UTC time)."""
    bad = bars.with_row_index("row", offset=1).filter(
        (pl.col("knowledge_time") > pl.lit(as_of).dt.convert_time_zone("UTC")).fill_null(False)
    )
    if bad.height == 0:
        return []
    return [_landing_violation(
        "knowledge_time_future", bad, ["row", *_KEYS, "knowledge_time"],
        f"knowledge_time is after the evaluation time {as_of.isoformat()}",
    )]


def check_restatement_older(bars: pl.DataFrame, stored: pl.DataFrame) -> list[Violation]:
    """Bars that would replace a stored bar of the same key with an earlier knowledge_time:
    a restatement is newer information by definition, so an older one is a stale resend."""
    if stored.height == 0:
        return []
    joined = bars.with_row_index("row", offset=1).join(
        stored.select(*_KEYS, pl.col("knowledge_time").alias("stored_knowledge_time")),
        on=_KEYS, how="inner",
    )
    older = pl.col("knowledge_time") < pl.col("stored_knowledge_time")
    bad = joined.filter(older.fill_null(False))
    if bad.height == 0:
        return []
    return [_landing_violation(
        "restatement_older", bad, ["row", *_KEYS, "knowledge_time", "stored_knowledge_time"],
        "knowledge_time is earlier than that of the stored bar it would replace",
    )]


def check_price_jump(
    bars: pl.DataFrame,
    stored: pl.DataFrame,
    corporate_actions: pl.DataFrame | None = None,
    max_ratio: float = MAX_DAILY_PRICE_RATIO,
) -> list[Violation]:
    """close / previous close per instrument, divided out by a split on the bar's date
    (``split_ratio`` new shares per old share lowers the unadjusted price by that factor),
    outside [1/max_ratio, max_ratio]. The previous close comes from the file itself or from
    the stored bars before the file's days."""
    numbered = bars.with_row_index("row", offset=1)
    earlier = stored.join(bars.select(_KEYS), on=_KEYS, how="anti") if stored.height else stored
    history = pl.concat(
        [
            numbered.select("row", *_KEYS, "close"),
            earlier.select(pl.lit(None, pl.UInt32).alias("row"), *_KEYS, "close"),
        ],
        how="vertical",
    )
    history = history.sort("instrument_id", "date").with_columns(
        pl.col("close").shift(1).over("instrument_id").alias("previous_close")
    )
    if corporate_actions is not None and corporate_actions.height:
        splits = (
            corporate_actions.group_by("instrument_id", "ex_date")
            .agg(pl.col("split_ratio").product())
            .rename({"ex_date": "date"})
        )
        history = history.join(splits, on=_KEYS, how="left")
    else:
        history = history.with_columns(pl.lit(None, pl.Float64).alias("split_ratio"))
    ratio = pl.col("close") * pl.col("split_ratio").fill_null(1.0) / pl.col("previous_close")
    bad = history.filter(
        pl.col("row").is_not_null()
        # a non-finite or non-positive price is price_positive_finite's to report
        & (pl.col("close").is_finite() & (pl.col("close") > 0)).fill_null(False)
        & (pl.col("previous_close").is_finite() & (pl.col("previous_close") > 0)).fill_null(False)
        & (ratio.abs().log() > math.log(max_ratio)).fill_null(False)
    ).with_columns(ratio.alias("ratio"))
    if bad.height == 0:
        return []
    return [_landing_violation(
        "price_jump", bad.sort("row"), ["row", *_KEYS, "previous_close", "close", "ratio"],
        f"split-adjusted close / previous close outside [1/{max_ratio:g}, {max_ratio:g}]",
    )]
