"""Point-in-time reads of the raw tables: the one as-of helper and what is built on it.

Every read of `market_bars`, `corporate_actions` and `fundamentals` made for a feature of
day D goes through `as_of`, which keeps, per key, the latest row version whose
`knowledge_time <= cutoff(D)`. Nothing here looks at a row published after the cutoff, so a
feature of D equals the feature computed from inputs truncated at cutoff(D), bit for bit.

Conventions (shared by the feature engine and its tests)
-------------------------------------------------------
- Market days as of D: the dates <= D on which at least one bar is known at cutoff(D).
  Windows count market days, not rows of one instrument: a 20-day statistic of an
  instrument with a missing bar in the last 20 market days is null.
- The context of D: the market days as of D from the first day of D's calendar year
  (`CONTEXT_PERIOD`) up to D, preceded by the `before` market days before it. Series
  features of D are evaluated on the context (their value at D's row). Every as-of day of a
  year shares the context's start, and a row only ever depends on itself and earlier rows,
  so the context of D as of D is a prefix of the context of any later day V of the year as
  of V whenever nothing dated <= D was published between cutoff(D) and cutoff(V): the
  engine evaluates a year once per instrument and recomputes on its own only the days where
  something was. (Polars evaluates window expressions group by group at a few microseconds
  per group and expression: a context per day, as before, cost ~60x the rows and 250x the
  groups of a context per year; a year rather than a month keeps the groups few, at the
  price of a longer context for a day computed alone.)
- PIT adjustment as of D, forward from the context's first day: a corporate action applies
  when it is known at cutoff(D) and its ex_date is in (first day, D]; it adjusts the bars
  from the first market day on or after its ex_date onwards, so prices and volumes are in
  the share basis of the context's first day (ratios, returns and window statistics do not
  depend on the basis; the as-traded close and volume of D are carried separately). A
  split of ratio r multiplies later prices by r and divides later volume by r; a cash
  dividend d (per share as traded on the ex_date, i.e. per post-split share when a split
  goes ex the same day) divides later prices by (1 - d / p) where p is the last close
  before the ex_date in the same share basis (close / r). A factor <= 0 is a data error:
  the prices it touches become null.
- Total-return index (labels and P&L only, never features): ex-post, all actions whatever
  their knowledge time, dividends reinvested at the close of the ex-date:
  gross return of bar s over the previous bar = r_s * (close_s + d_s) / close_prev.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import polars as pl

from quant_assets import calendar
from quant_assets.calendar import DEFAULT_CUTOFF, Cutoff

UTC_TIME = pl.Datetime("us", "UTC")
# Sums and products that feed a feature are written as cum_sum().last() / cum_prod().last():
# strictly left to right in the rows' order. Polars' sum/mean/product kernels may pair terms
# differently with the group's layout in memory (a trailing-4-quarter sum differed in the
# last bit between a day computed alone and the same day in a batch), which would break
# "a day's features do not depend on what else is computed with it".
# The calendar period whose days share a context start (module doc), as `dt.truncate` reads it.
CONTEXT_PERIOD = "1y"
# Polars 2's default streaming engine aggregates floats in a run-dependent order (sums and
# means differ in the last bits between runs); the in-memory engine is bit-reproducible.
ENGINE = "in-memory"

# Fundamentals older than this (period_end before D - max age) count as unknown: a stale
# quarter of a company that stopped reporting must not look current.
FUNDAMENTAL_MAX_AGE_DAYS = 200
# Quarterly flows: summed over the trailing four quarters.
FLOW_FIELDS: tuple[str, ...] = ("net_income", "revenue", "operating_cash_flow")
# Balance-sheet stocks: the latest quarter's value.
STOCK_FIELDS: tuple[str, ...] = ("book_equity", "total_assets", "shares_outstanding")
FUNDAMENTAL_FIELDS: tuple[str, ...] = FLOW_FIELDS + STOCK_FIELDS
# Four consecutive calendar quarters span ~273 days from the first to the last period_end.
_TTM_MAX_SPAN_DAYS = 300
# "The same quarter a year earlier": period_end 350-380 days before the latest one.
_YEAR_AGO_DAYS = (350, 380)


# --------------------------------------------------------------------------- basics


def as_date_frame(dates: Iterable[dt.date] | pl.Series) -> pl.DataFrame:
    """Sorted unique as-of days as a one-column frame `as_of` (Date)."""
    series = dates if isinstance(dates, pl.Series) else pl.Series(list(dates), dtype=pl.Date)
    return pl.DataFrame({"as_of": series.cast(pl.Date)}).unique().sort("as_of")


def cutoff_expr(day: str | pl.Expr = "as_of", cutoff_time: Cutoff = DEFAULT_CUTOFF) -> pl.Expr:
    """Polars version of `calendar.cutoff`: the session's close plus the offset (or a fixed
    UTC time of day when `cutoff_time` is a `datetime.time`), Datetime("us", "UTC")."""
    day = pl.col(day) if isinstance(day, str) else day
    return calendar.cutoff_expr(day, cutoff_time)


Frame = pl.DataFrame | pl.LazyFrame


def with_utc(frame: Frame, col: str) -> pl.LazyFrame:
    """`frame` as a LazyFrame with `col` as Datetime("us", "UTC") (naive times read as UTC)."""
    frame = frame.lazy()
    dtype = frame.collect_schema()[col]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"column {col!r} must be a Datetime, got {dtype}")
    expr = pl.col(col)
    expr = expr.dt.replace_time_zone("UTC") if dtype.time_zone is None else expr.dt.convert_time_zone("UTC")
    return frame.with_columns(expr.cast(UTC_TIME))


# --------------------------------------------------------------------------- the as-of join


def _materialize(frame: pl.LazyFrame) -> pl.LazyFrame:
    # a plan read several times below: compute it once (polars' subplan cache does not always)
    return frame.collect(engine=ENGINE).lazy()


def _like(out: pl.LazyFrame, first: Frame) -> Frame:
    # public helpers answer in the kind of frame they were given
    return out if isinstance(first, pl.LazyFrame) else out.collect(engine=ENGINE)


def as_of(
    frame: Frame,
    dates: Iterable[dt.date] | pl.Series | None = None,
    *,
    by: str | Sequence[str] = "instrument_id",
    keys: Frame | None = None,
    knowledge_col: str = "knowledge_time",
    cutoff_time: Cutoff = DEFAULT_CUTOFF,
) -> Frame:
    """The rows of `frame` as known at the cutoff of each as-of day.

    For each as-of day D and each key (the `by` columns, e.g. instrument_id + date for bars),
    the latest row version with `knowledge_col <= cutoff(D)`; keys without such a version
    are absent. Built on `join_asof` on knowledge time, by key.

    Ask either for every key of `frame` on each of `dates`, or pass `keys`: a frame with an
    `as_of` Date column, the `by` columns and any extra columns to carry along (used to ask
    only for the keys a window needs). Output: the request columns (`as_of` first), then
    the other columns of `frame`. Two versions of a key with the same knowledge time: the
    later one in `frame` wins. Lazy in, lazy out.
    """
    by = [by] if isinstance(by, str) else list(by)
    if (dates is None) == (keys is None):
        raise ValueError("as_of needs exactly one of `dates` or `keys`")
    if keys is None:
        keys = as_date_frame(dates).lazy().join(frame.lazy().select(by).unique(), how="cross")
    keys = keys.lazy()
    if "as_of" not in keys.collect_schema().names():
        raise ValueError("`keys` needs an `as_of` Date column")
    versions = (
        with_utc(frame, knowledge_col)
        .unique(subset=[*by, knowledge_col], keep="last", maintain_order=True)
        .with_columns(pl.col(knowledge_col).alias("_known"))
        .sort("_known", maintain_order=True)
    )
    requests = keys.with_columns(cutoff_expr("as_of", cutoff_time).alias("_cutoff")).sort("_cutoff")
    out = requests.join_asof(
        versions,
        left_on="_cutoff",
        right_on="_known",
        by=by,
        strategy="backward",
        check_sortedness=False,  # both sides sorted on the time key just above
    )
    return _like(out.filter(pl.col("_known").is_not_null()).drop("_cutoff", "_known"), frame)


# --------------------------------------------------------------------------- market days


def _first_known(market_bars: Frame) -> pl.LazyFrame:
    # a date is a market day as of D once a bar dated on it is known at cutoff(D)
    return (
        with_utc(market_bars, "knowledge_time")
        .group_by("date")
        .agg(pl.col("knowledge_time").min().alias("_first_known"))
    )


def context_days(
    market_bars: Frame,
    dates: Iterable[dt.date] | pl.Series,
    *,
    before: int | None = None,
    cutoff_time: Cutoff = DEFAULT_CUTOFF,
) -> Frame:
    """The market days of each as-of day D's context (module doc): D's `CONTEXT_PERIOD` up to
    D, and the last `before` market days before the period's first day (all when None).

    Columns: as_of, date; sorted. A date counts as a market day as of D when a bar dated on
    it is known at cutoff(D). An as-of day without a known bar of its own keeps its context
    (the engine evaluates a whole year on the context of its last asked day, which may be
    such a day); its universe is empty.
    """
    days = (
        as_date_frame(dates)
        .lazy()
        .with_columns(cutoff_expr("as_of", cutoff_time).alias("_cutoff"))
        .join(_first_known(market_bars), how="cross")
        .filter((pl.col("date") <= pl.col("as_of")) & (pl.col("_first_known") <= pl.col("_cutoff")))
    )
    if before is not None:
        period_start = pl.col("as_of").dt.truncate(CONTEXT_PERIOD)
        earlier = pl.col("date") < period_start
        # rank of the earlier market days from the period's first day backwards: 0, 1, ...
        rank = pl.when(earlier).then(pl.col("date").rank("ordinal", descending=True).over("as_of", earlier) - 1)
        days = days.filter(~earlier | (rank < before))
    return _like(days.select("as_of", "date").sort("as_of", "date"), market_bars)


# --------------------------------------------------------------------------- universe


def listed_on(day: str | pl.Expr) -> pl.Expr:
    """True where the instrument (universe columns) is listed on `day`."""
    day = pl.col(day) if isinstance(day, str) else day
    return (pl.col("listed_from") <= day) & (pl.col("listed_until").is_null() | (day <= pl.col("listed_until")))


def listings_as_of(universe: Frame, keys: pl.LazyFrame, cutoff_time: Cutoff = DEFAULT_CUTOFF) -> pl.LazyFrame:
    """For each (as_of, instrument_id) of `keys`: the instrument's universe version known at
    cutoff(as_of) (sector, listed_from, listed_until); keys without one are dropped. The
    universe is bitemporal; a frame without knowledge_time is taken as always known."""
    columns = ["instrument_id", "sector", "listed_from", "listed_until"]
    if "knowledge_time" not in universe.lazy().collect_schema().names():
        return keys.lazy().join(universe.lazy().select(columns), on="instrument_id")
    versions = universe.lazy().select(*columns, "knowledge_time")
    return as_of(versions, by="instrument_id", keys=keys.lazy(), cutoff_time=cutoff_time).drop("knowledge_time")


def pit_universe(
    universe: Frame,
    market_bars: Frame,
    dates: Iterable[dt.date] | pl.Series,
    *,
    cutoff_time: Cutoff = DEFAULT_CUTOFF,
) -> Frame:
    """Universe of each day D: listed on D and a bar of D known at cutoff(D).

    Columns: as_of, instrument_id, sector; sorted by (as_of, instrument_id).
    """
    bars = market_bars.lazy().select("instrument_id", "date", "knowledge_time")
    keys = (
        as_date_frame(dates)
        .lazy()
        .join(bars.select("instrument_id", "date").unique(), left_on="as_of", right_on="date")
        .with_columns(pl.col("as_of").alias("date"))
    )
    known = as_of(bars, by=["instrument_id", "date"], keys=keys, cutoff_time=cutoff_time)
    out = (
        listings_as_of(universe, known.select("as_of", "instrument_id"), cutoff_time)
        .filter(listed_on("as_of"))
        .select("as_of", "instrument_id", "sector")
        .sort("as_of", "instrument_id")
    )
    return _like(out, market_bars)


# --------------------------------------------------------------------------- adjusted bars


def _effective_actions(windows: pl.LazyFrame, corporate_actions: Frame, cutoff_time: Cutoff) -> pl.LazyFrame:
    """Actions known at cutoff(D) with ex_date in (window_start, D], per as-of day D (and
    per instrument when `windows` has an instrument_id column)."""
    actions = corporate_actions.lazy()
    candidates = actions.select("instrument_id", "ex_date").unique()
    in_window = (pl.col("ex_date") > pl.col("window_start")) & (pl.col("ex_date") <= pl.col("as_of"))
    if "instrument_id" in windows.collect_schema().names():  # windows per (as_of, instrument)
        keys = windows.join(candidates, on="instrument_id").filter(in_window)
    else:
        keys = windows.join_where(candidates, in_window)
    keys = keys.select("as_of", "instrument_id", "ex_date")
    return as_of(actions, by=["instrument_id", "ex_date"], keys=keys, cutoff_time=cutoff_time)


def pit_panel(
    market_bars: Frame,
    corporate_actions: Frame,
    dates: Iterable[dt.date] | pl.Series,
    *,
    universe: Frame | None = None,
    before: int | None = None,
    cutoff_time: Cutoff = DEFAULT_CUTOFF,
) -> Frame:
    """PIT-adjusted bars of each as-of day D's context (`context_days`, module doc).

    One row per (as_of, instrument with a known bar in the context, market day of the
    context), gaps as null rows, sorted by (as_of, instrument_id, date). Columns: as_of,
    instrument_id, date, open, high, low, close, volume (adjusted as of `as_of` in the share
    basis of the context's first day), traded_close, traded_volume (as traded), ret (daily
    return of the adjusted close over the previous market day of the context), market_ret
    (equal-weighted mean `ret` of the instruments listed that day, needs `universe`; null
    without it).
    """
    market = market_bars.lazy()
    days = _materialize(context_days(market, dates, before=before, cutoff_time=cutoff_time))
    group = ["as_of", "instrument_id"]
    # 1. bar versions known at each cutoff, for the context's market days only
    bar_keys = days.join(market.select("instrument_id", "date").unique(), on="date")
    bars = _materialize(as_of(market, by=["instrument_id", "date"], keys=bar_keys, cutoff_time=cutoff_time))
    grid = bars.select(group).unique().join(days, on="as_of")
    panel = (
        grid.join(bars.drop("knowledge_time"), on=[*group, "date"], how="left")
        .sort([*group, "date"])
        .with_columns(pl.col("close").forward_fill().shift(1).over(group).alias("_close_before"))
    )
    # 2. actions effective as of D inside the context: ex_date in (first day, D]; those
    # before the first day are already in the basis of the first day
    windows = days.group_by("as_of").agg(pl.col("date").min().alias("window_start"))
    actions = _effective_actions(windows, corporate_actions, cutoff_time).sort("ex_date")
    # each action attaches to the first market day on or after its ex_date
    actions = actions.join_asof(
        days.select("as_of", pl.col("date").alias("_day")).sort("_day"),
        left_on="ex_date",
        right_on="_day",
        by="as_of",
        strategy="forward",
        check_sortedness=False,
    ).rename({"_day": "date"})
    actions = actions.join(panel.select(*group, "date", "_close_before"), on=[*group, "date"], how="left")
    ratio = pl.col("split_ratio")
    dividend_part = (
        pl.when(pl.col("cash_dividend") == 0.0)
        .then(pl.lit(1.0))
        .when(pl.col("_close_before").is_null())
        .then(pl.lit(1.0))  # no earlier bar in the context: nothing to adjust against
        .otherwise(1.0 - pl.col("cash_dividend") * ratio / pl.col("_close_before"))
    )
    price_factor = pl.when((dividend_part > 0.0) & (ratio > 0.0)).then(dividend_part / ratio)
    steps = (
        actions.sort([*group, "date", "ex_date"])
        .group_by([*group, "date"], maintain_order=True)
        .agg(
            pl.when(price_factor.null_count() == 0).then(price_factor.cum_prod().last()).alias("_price_step"),
            pl.when(ratio.null_count() == 0).then(ratio.cum_prod().last()).alias("_volume_step"),
            pl.lit(True).alias("_has_action"),
        )
    )
    panel = _materialize(panel.join(steps, on=[*group, "date"], how="left").sort([*group, "date"]))

    def since_start(step: str) -> pl.Expr:
        # product of the step factors from the context's first day to this one (forward
        # adjustment: a row depends only on it and earlier rows), null from a bad one on
        present = pl.col("_has_action").fill_null(False)
        value = pl.when(present).then(pl.col(step)).otherwise(1.0)
        product = value.fill_null(1.0).cum_prod()
        poisoned = value.is_null().cum_max()
        return pl.when(poisoned).then(None).otherwise(product).over(group)

    panel = panel.with_columns(since_start("_price_step").alias("_pf"), since_start("_volume_step").alias("_vf"))
    panel = panel.with_columns(
        pl.col("close").alias("traded_close"),
        pl.col("volume").alias("traded_volume"),
        *(pl.col(c) / pl.col("_pf") for c in ("open", "high", "low", "close")),
        pl.col("volume") / pl.col("_vf"),
    ).with_columns((pl.col("close") / pl.col("close").shift(1) - 1.0).over(group).alias("ret"))
    # 3. the market: equal-weighted mean return of the instruments listed that day
    panel = _materialize(panel)
    if universe is None:
        panel = panel.with_columns(pl.lit(None, dtype=pl.Float64).alias("market_ret"))
    else:
        # each context's listings as known at its as-of cutoff
        listing = listings_as_of(universe, panel.select("as_of", "instrument_id").unique(), cutoff_time)
        market_ret = (
            panel.select("as_of", "instrument_id", "date", "ret")
            .join(listing.select("as_of", "instrument_id", "listed_from", "listed_until"), on=["as_of", "instrument_id"])
            .filter(listed_on("date") & pl.col("ret").is_not_null())
            .sort("as_of", "date", "instrument_id")
            .group_by(["as_of", "date"], maintain_order=True)
            .agg((pl.col("ret").cum_sum().last() / pl.len()).alias("market_ret"))
        )
        panel = panel.join(market_ret, on=["as_of", "date"], how="left")
    out = panel.select(
        "as_of", "instrument_id", "date", "open", "high", "low", "close", "volume",
        "traded_close", "traded_volume", "ret", "market_ret",
    ).sort([*group, "date"])
    return _like(out, market_bars)


# --------------------------------------------------------------------------- fundamentals


def fundamentals_as_of(
    fundamentals: Frame,
    corporate_actions: Frame,
    dates: Iterable[dt.date] | pl.Series,
    *,
    cutoff_time: Cutoff = DEFAULT_CUTOFF,
    max_age_days: int = FUNDAMENTAL_MAX_AGE_DAYS,
) -> Frame:
    """Fundamentals as known at cutoff(D), one row per (as_of, instrument_id).

    Per (instrument, field, period_end) the latest version known at the cutoff; per field
    the most recent known quarter (null if its period_end is more than `max_age_days`
    before D). Columns, for every field f of FUNDAMENTAL_FIELDS: `f` (latest quarter),
    `f_year_ago` (the quarter ending 350-380 days before it), and for flows `f_ttm` (sum of
    the four latest quarters, null unless four consecutive quarters are known).
    `shares_outstanding` (and its year-ago value) is restated to D's share basis: multiplied
    by the ratios of the splits effective as of D with ex_date after its period_end, so that
    as-traded close * shares_outstanding is the market cap of D.

    An instrument's row only changes on the days listed by `_state_changes` (a version
    becomes known, a quarter enters or leaves the look-back or ages out, a split goes ex,
    becomes known or leaves the look-back): it is computed on the first asked day at or
    after each change and carried to the following days, which gives the same values as
    computing every day (a quarter's filings move a few times a year, the days are many).
    """
    days = as_date_frame(dates).lazy()
    funds = fundamentals.lazy()
    states = _materialize(_state_changes(funds, corporate_actions.lazy(), days, cutoff_time, max_age_days))
    rows = _fundamentals_at(funds, corporate_actions, states, cutoff_time, max_age_days).with_columns(
        pl.lit(True).alias("_has_row")
    )
    group = ["as_of", "instrument_id"]
    computed = states.join(rows, on=group, how="left").sort("as_of")
    # each asked day takes its instrument's state of the last change day at or before it
    out = (
        days.join(states.select("instrument_id").unique(), how="cross")
        .sort("as_of")
        .join_asof(
            computed.rename({"as_of": "_state_day"}),
            left_on="as_of",
            right_on="_state_day",
            by="instrument_id",
            strategy="backward",
            check_sortedness=False,
        )
        .filter(pl.col("_has_row").fill_null(False))
        .drop("_state_day", "_has_row")
    )
    return _like(out.sort(group), fundamentals)


def _horizon(max_age_days: int) -> int:
    # days of period ends a row reads: the age limit plus the year-ago quarter of the oldest
    return max_age_days + _YEAR_AGO_DAYS[1] + 1


def _state_changes(
    funds: pl.LazyFrame, actions: pl.LazyFrame, days: pl.LazyFrame, cutoff_time: Cutoff, max_age_days: int
) -> pl.LazyFrame:
    """(as_of, instrument_id): the first asked day of each instrument, and the first asked
    day at or after each day on which its fundamentals row may change."""
    horizon = pl.duration(days=_horizon(max_age_days))

    def known_day(col: str) -> pl.Expr:
        # the first day whose cutoff is at or after the knowledge time; a session cutoff
        # with an offset can fall on the next UTC date, so the day before is a candidate too
        day = pl.col(col).dt.date()
        before = day - pl.duration(days=1)
        return (
            pl.when(pl.col(col) <= cutoff_expr(before, cutoff_time)).then(before)
            .when(pl.col(col) <= cutoff_expr(day, cutoff_time)).then(day)
            .otherwise(day + pl.duration(days=1))
        )

    funds = with_utc(funds, "knowledge_time")
    actions = with_utc(actions, "knowledge_time")
    pe, ex = pl.col("period_end"), pl.col("ex_date")
    changes = pl.concat(
        [
            funds.select("instrument_id", known_day("knowledge_time").alias("day")),
            funds.select("instrument_id", pe.alias("day")),
            funds.select("instrument_id", (pe + horizon).alias("day")),
            funds.select("instrument_id", (pe + pl.duration(days=max_age_days + 1)).alias("day")),
            actions.select("instrument_id", known_day("knowledge_time").alias("day")),
            actions.select("instrument_id", ex.alias("day")),
            actions.select("instrument_id", (ex + horizon).alias("day")),
        ]
    ).unique()
    asked = days.select(pl.col("as_of").alias("_asked")).sort("_asked")
    moved = (
        changes.sort("day")
        .join_asof(asked, left_on="day", right_on="_asked", strategy="forward", check_sortedness=False)
        .select("instrument_id", pl.col("_asked").alias("as_of"))
        .drop_nulls()
    )
    first = funds.select("instrument_id").unique().join(days.select(pl.col("as_of").min()), how="cross")
    return pl.concat([first, moved]).unique().sort("instrument_id", "as_of")


def _fundamentals_at(
    fundamentals: Frame,
    corporate_actions: Frame,
    states: pl.LazyFrame,
    cutoff_time: Cutoff,
    max_age_days: int,
) -> pl.LazyFrame:
    """`fundamentals_as_of` for the (as_of, instrument_id) pairs of `states` only."""
    funds = fundamentals.lazy()
    windows = states.with_columns((pl.col("as_of") - pl.duration(days=_horizon(max_age_days))).alias("window_start"))
    keys = (
        windows.join(funds.select("instrument_id", "field", "period_end").unique(), on="instrument_id")
        .filter((pl.col("period_end") <= pl.col("as_of")) & (pl.col("period_end") > pl.col("window_start")))
        .drop("window_start")
    )
    known = as_of(funds, by=["instrument_id", "field", "period_end"], keys=keys, cutoff_time=cutoff_time)
    group = ["as_of", "instrument_id", "field"]
    known = _materialize(known.sort(*group, "period_end"))
    # Per (as_of, instrument, field), on its rows sorted by period_end: the last quarter, the
    # sum of the last four, the latest quarter a year before the last. Written with shifts
    # on the sorted long frame rather than a group_by (a few expressions per group and tens
    # of thousands of groups: the group-by was most of the cost); row k back belongs to the
    # same group when the group id k rows back is the same.
    longest = known.group_by(group).len().select(pl.col("len").max()).collect(engine=ENGINE).item() or 1
    gid = pl.struct(group).rank("dense")
    pe, value = pl.col("period_end"), pl.col("value")

    def back(k: int) -> pl.Expr:
        return pl.col("_gid").shift(k) == pl.col("_gid")

    year_ago_lag = pl.coalesce(
        pl.when(
            back(k)
            & (pe.shift(k) >= pe - pl.duration(days=_YEAR_AGO_DAYS[1]))
            & (pe.shift(k) <= pe - pl.duration(days=_YEAR_AGO_DAYS[0]))
        ).then(pl.lit(k))
        for k in range(1, longest)
    ) if longest > 1 else pl.lit(None, dtype=pl.Int32)  # one quarter per group: no year-ago

    def at_lag(col: pl.Expr) -> pl.Expr:
        return pl.coalesce(
            [pl.when(pl.col("_lag") == k).then(col.shift(k)) for k in range(1, longest)] or [pl.lit(None)]
        )

    ttm_ok = back(3) & ((pe - pe.shift(3)).dt.total_days() <= _TTM_MAX_SPAN_DAYS) & pl.all_horizontal(
        value.shift(k).is_not_null() for k in range(4)
    )
    per_field = (
        known.with_columns(gid.alias("_gid"))
        .with_columns(
            (pl.col("_gid").shift(-1) != pl.col("_gid")).fill_null(True).alias("_last"),
            year_ago_lag.alias("_lag"),
        )
        .with_columns(
            # left to right, as the four quarters come (pit.py: no layout-dependent sums)
            pl.when(ttm_ok).then(((value.shift(3) + value.shift(2)) + value.shift(1)) + value).alias("_ttm"),
            at_lag(value).cast(pl.Float64).alias("_year_ago"),
            at_lag(pe).cast(pl.Date).alias("_year_ago_period_end"),
        )
        .filter(pl.col("_last"))
        .select(*group, pe.alias("_period_end"), value.alias("_value"), "_ttm", "_year_ago", "_year_ago_period_end")
        .filter(pl.col("_period_end") >= pl.col("as_of") - pl.duration(days=max_age_days))
    )
    # split ratios effective as of D, for restating share counts to D's basis
    splits = _effective_actions(windows, corporate_actions, cutoff_time).filter(pl.col("split_ratio") != 1.0)
    shares = per_field.filter(pl.col("field") == "shares_outstanding")

    def splits_after(period_col: str) -> pl.LazyFrame:
        return (
            shares.select("as_of", "instrument_id", period_col)
            .join(splits, on=["as_of", "instrument_id"])
            .filter(pl.col("ex_date") > pl.col(period_col))
            .sort("as_of", "instrument_id", "ex_date")
            .group_by(["as_of", "instrument_id"], maintain_order=True)
            .agg(pl.col("split_ratio").cum_prod().last().alias(f"{period_col}_splits"))
        )

    group = ["as_of", "instrument_id"]
    # one row per (as_of, instrument): each field's values joined from the long frame
    per_field = _materialize(per_field)
    out = per_field.select(group).unique()
    for field in FUNDAMENTAL_FIELDS:
        columns = [pl.col("_value").alias(field), pl.col("_year_ago").alias(f"{field}_year_ago")]
        if field in FLOW_FIELDS:
            columns.append(pl.col("_ttm").alias(f"{field}_ttm"))
        out = out.join(per_field.filter(pl.col("field") == field).select(*group, *columns), on=group, how="left")
    for period_col, col in (
        ("_period_end", "shares_outstanding"),
        ("_year_ago_period_end", "shares_outstanding_year_ago"),
    ):
        out = (
            out.join(splits_after(period_col), on=group, how="left")
            .with_columns((pl.col(col) * pl.col(f"{period_col}_splits").fill_null(1.0)).alias(col))
            .drop(f"{period_col}_splits")
        )
    return out




# --------------------------------------------------------------------------- total return


def _latest_versions(frame: Frame, by: list[str]) -> pl.LazyFrame:
    """Ex-post view: the latest version of every key (ties: the later row wins)."""
    return (
        with_utc(frame, "knowledge_time")
        .with_row_index("_row")
        .sort([*by, "knowledge_time", "_row"])
        .unique(subset=by, keep="last", maintain_order=True)
        .drop("_row")
    )


def total_return_steps(market_bars: Frame, corporate_actions: Frame) -> Frame:
    """Ex-post bars with their corporate-action step: date, instrument_id, close, step.

    `step` of bar s = (close_s / close_prev) / gross total return of s, i.e.
    1 / (r * (1 + d / close_s)) for the actions with ex_date in (previous bar, s]; exactly
    1.0 where there is none. Sorted by (instrument_id, date).
    """
    bars = (
        _latest_versions(market_bars, ["instrument_id", "date"])
        .select("date", "instrument_id", "close")
        .sort("instrument_id", "date")
    )
    actions = _latest_versions(corporate_actions, ["instrument_id", "ex_date"]).sort("ex_date")
    attached = actions.join_asof(
        bars.select("instrument_id", pl.col("date").alias("_bar")).sort("_bar"),
        left_on="ex_date",
        right_on="_bar",
        by="instrument_id",
        strategy="forward",
        check_sortedness=False,
    ).filter(pl.col("_bar").is_not_null())
    steps = (
        attached.sort("instrument_id", "_bar", "ex_date")
        .group_by(["instrument_id", "_bar"], maintain_order=True)
        .agg(pl.col("split_ratio").product().alias("_ratio"), pl.col("cash_dividend").sum().alias("_dividend"))
    )
    out = bars.join(steps, left_on=["instrument_id", "date"], right_on=["instrument_id", "_bar"], how="left")
    step = pl.when(pl.col("_ratio").is_null()).then(1.0).otherwise(
        1.0 / (pl.col("_ratio") * (1.0 + pl.col("_dividend") / pl.col("close")))
    )
    out = out.select("date", "instrument_id", "close", step.alias("step")).sort("instrument_id", "date")
    return _like(out, market_bars)


def total_return_index(market_bars: Frame, corporate_actions: Frame) -> Frame:
    """Ex-post split- and dividend-adjusted total-return closes: date, instrument_id, tr_close.

    Uses every action whatever its knowledge time: for labels and backtest P&L, never for
    features. Back-adjusted: the last tr_close of an instrument is its last as-traded close,
    and tr_close_s / tr_close_prev - 1 is the total return of bar s (module doc).
    """
    steps = total_return_steps(market_bars.lazy(), corporate_actions)
    later = pl.col("step").shift(-1, fill_value=1.0).cum_prod(reverse=True).over("instrument_id")
    out = steps.select("date", "instrument_id", (pl.col("close") * later).alias("tr_close"))
    return _like(out.sort("date", "instrument_id"), market_bars)
