"""Labels: forward total returns over (D, D+h] trading days, from the ex-post total-return index.

Conventions
-----------
- t0 = D, t1 = the trading day h trading days after D (`quant_assets.calendar`), so that
  cross-validation can purge overlapping label intervals [t0, t1].
- fwd_return = tr_close(t1) / tr_close(D) - 1 with the ex-post total-return index of
  `pit.total_return_index` (splits and dividends, all knowledge times): labels are what a
  holder earned, not what was known. It is computed locally from the bars of D and t1 and
  the actions with ex_date in (D, t1], so a label does not move when later data arrives.
- One row per instrument with a bar on D. The label is null when the bar of t1 is missing
  (delisted or halted within the horizon): a delisting return is unknown, and a null label
  is left out of training rather than guessed.
- fwd_return_demeaned = fwd_return minus the mean over the non-null labels of day D;
  fwd_return_rank = percentile rank in [0, 1] among them ((rank - 1) / (n - 1), ties
  averaged; 0.5 when only one label).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import polars as pl

from quant_assets.calendar import is_trading_day, shift_trading_days
from quant_assets.features.pit import as_date_frame, total_return_steps

LABEL_SCHEMA: dict[str, pl.DataType] = {
    "date": pl.Date(),
    "instrument_id": pl.String(),
    "t0": pl.Date(),
    "t1": pl.Date(),
    "fwd_return": pl.Float64(),
    "fwd_return_demeaned": pl.Float64(),
    "fwd_return_rank": pl.Float64(),
}
LABEL_COLUMNS: tuple[str, ...] = tuple(LABEL_SCHEMA)


def label_end(day: dt.date, horizon: int) -> dt.date:
    """t1 of the label of `day`: `horizon` trading days later."""
    if horizon < 1:
        raise ValueError(f"horizon={horizon} must be >= 1")
    return shift_trading_days(day, horizon)


def label_ready(dates: Iterable[dt.date], available_last_date: dt.date, horizon: int) -> bool:
    """True when market data up to `available_last_date` covers t1 of every day in `dates`."""
    dates = list(dates)
    return not dates or label_end(max(dates), horizon) <= available_last_date


def _percentile_rank(col: str, over: str) -> pl.Expr:
    x = pl.col(col)
    n = x.count().over(over)
    rank = x.rank("average").over(over)
    return pl.when(x.is_null()).then(None).when(n == 1).then(0.5).otherwise((rank - 1.0) / (n - 1.0))


def compute_labels(
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    dates: Iterable[dt.date] | pl.Series,
    horizon: int = 5,
) -> pl.DataFrame:
    """Forward-return labels of each day in `dates` (columns LABEL_COLUMNS, see module doc).

    Raises ValueError when a day is not a trading day or when `market_bars` does not reach
    t1 of the last day (the label partition of D can materialise only once D+h has data).
    """
    days = as_date_frame(dates)
    if days.is_empty():
        return _empty()
    bad = [d for d in days["as_of"].to_list() if not is_trading_day(d)]
    if bad:
        raise ValueError(f"label dates must be trading days; not trading days: {bad[:5]}")
    last = days["as_of"].max()
    needed = label_end(last, horizon)
    available = market_bars["date"].max() if market_bars.height else None
    if available is None or available < needed:
        raise ValueError(
            f"labels of {last} need market bars up to t1={needed} (horizon {horizon} trading "
            f"days); the market data ends at {available}"
        )
    steps = total_return_steps(market_bars, corporate_actions)
    day_list = days["as_of"].to_list()
    spans = pl.DataFrame(
        {"date": day_list, "t1": [label_end(d, horizon) for d in day_list]},
        schema={"date": pl.Date, "t1": pl.Date},
    )
    start = steps.select("instrument_id", "date", pl.col("close").alias("_close0")).join(spans, on="date")
    end = steps.select("instrument_id", pl.col("date").alias("t1"), pl.col("close").alias("_close1"))
    rows = start.join(end, on=["instrument_id", "t1"], how="left")
    # corporate-action steps inside (D, t1]; days without an action have step exactly 1
    actions = steps.filter(pl.col("step") != 1.0).select("instrument_id", pl.col("date").alias("_s"), "step")
    inside = (
        rows.select("instrument_id", "date", "t1")
        .join(actions, on="instrument_id")
        .filter((pl.col("_s") > pl.col("date")) & (pl.col("_s") <= pl.col("t1")))
        .sort("instrument_id", "date", "_s")
        .group_by(["instrument_id", "date"], maintain_order=True)
        .agg(pl.col("step").product().alias("_steps"))
    )
    rows = rows.join(inside, on=["instrument_id", "date"], how="left")
    fwd = pl.col("_close1") / (pl.col("_close0") * pl.col("_steps").fill_null(1.0)) - 1.0
    out = (
        rows.with_columns(pl.when(fwd.is_finite()).then(fwd).alias("fwd_return"))
        .sort("date", "instrument_id")
        .with_columns(
            (pl.col("fwd_return") - pl.col("fwd_return").mean().over("date")).alias("fwd_return_demeaned"),
            _percentile_rank("fwd_return", "date").alias("fwd_return_rank"),
        )
        .with_columns(pl.col("date").alias("t0"))
    )
    return out.select(LABEL_COLUMNS)


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=LABEL_SCHEMA)
