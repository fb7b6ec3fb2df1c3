"""Performance by market regime, in named stress windows, and factor exposures. Pure core
(polars frames and numpy in, frames out; the statistics come from ``validation.stats``).

Frames
------
* prices: ``date``, ``instrument_id`` and a price column (total-return or adjusted close).
* return series: ``date``, ``return`` (one row per day, simple returns).

Conventions
-----------
* Regimes of day t are built from information up to the close of t-1 (trailing windows
  shifted by one day), so a regime is known before the day it conditions. The tercile
  cut points are the in-sample 1/3 and 2/3 quantiles of the trailing statistic: this
  classifies days ex post, which is what a report on a finished backtest needs.
* Factor returns are long-short tercile portfolios formed on information up to t-1
  (Fama-French style, equal-weighted): momentum 12-1 (winners minus losers), size (small
  minus big) on a size proxy column when the data has one, and each sector's equal-weight
  return minus the market's. The largest sector (ties: first by name) is left out as the
  base: the member-weighted sector excesses sum to zero, so with every sector the
  regressors would be exactly collinear.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from quant_assets.validation import stats

REGIME_WINDOW = 63  # trading days (a quarter) of trailing market statistics
TERCILES = ("low", "mid", "high")


@dataclass(frozen=True)
class StressWindow:
    name: str
    start: dt.date
    end: dt.date  # inclusive


STRESS_WINDOWS = (
    StressWindow("GFC 2008-09..2009-03", dt.date(2008, 9, 1), dt.date(2009, 3, 31)),
    StressWindow("China devaluation 2015-08", dt.date(2015, 8, 1), dt.date(2015, 8, 31)),
    StressWindow("Volmageddon 2018-02", dt.date(2018, 2, 1), dt.date(2018, 2, 28)),
    StressWindow("COVID 2020-02..2020-04", dt.date(2020, 2, 1), dt.date(2020, 4, 30)),
    StressWindow("Rate shock 2022", dt.date(2022, 1, 1), dt.date(2022, 12, 31)),
)


# --------------------------------------------------------------------------------------------
# Returns from prices
# --------------------------------------------------------------------------------------------


def instrument_returns(prices: pl.DataFrame, price_col: str = "close") -> pl.DataFrame:
    """(date, instrument_id, ret): close-to-close simple returns per instrument; an
    instrument's first day (no previous close) is dropped."""
    _require(prices, "prices", ("date", "instrument_id", price_col))
    return (
        prices.select("date", "instrument_id", pl.col(price_col).cast(pl.Float64).alias("_p"))
        .sort("instrument_id", "date")
        .with_columns(ret=pl.col("_p") / pl.col("_p").shift(1).over("instrument_id") - 1.0)
        .drop_nulls("ret")
        .filter(pl.col("ret").is_finite())
        .select("date", "instrument_id", "ret")
        .sort("date", "instrument_id")
    )


def equal_weight_returns(prices: pl.DataFrame, price_col: str = "close") -> pl.DataFrame:
    """(date, return): the equal-weight portfolio of every instrument with a return that day,
    rebalanced daily (the report's benchmark: equal-weight universe total return)."""
    return (
        instrument_returns(prices, price_col)
        .group_by("date")
        .agg(pl.col("ret").mean().alias("return"))
        .sort("date")
    )


def reversal_returns(prices: pl.DataFrame, lookback: int = 5, price_col: str = "close") -> pl.DataFrame:
    """(date, return) of a dollar-neutral short-term reversal strategy: at the close of t-1
    hold weights proportional to minus the demeaned ``lookback``-day return, scaled to gross
    exposure 1; earn day t's returns. No costs (a reference strategy, not a product)."""
    if lookback < 1:
        raise ValueError(f"lookback={lookback} must be >= 1")
    _require(prices, "prices", ("date", "instrument_id", price_col))
    p = pl.col(price_col).cast(pl.Float64)
    frame = (
        prices.sort("instrument_id", "date")
        .with_columns(
            ret=p / p.shift(1).over("instrument_id") - 1.0,
            # signal known at the close of t-1: the return from t-1-lookback to t-1
            past=p.shift(1).over("instrument_id") / p.shift(1 + lookback).over("instrument_id") - 1.0,
        )
        .drop_nulls(["ret", "past"])
        .filter(pl.col("ret").is_finite() & pl.col("past").is_finite())
        .with_columns(raw=-(pl.col("past") - pl.col("past").mean().over("date")))
        .with_columns(w=pl.col("raw") / pl.col("raw").abs().sum().over("date"))
    )
    return (
        frame.group_by("date")
        .agg((pl.col("w") * pl.col("ret")).sum().alias("return"), pl.col("raw").abs().sum().alias("_g"))
        # a day where every name had the same past return holds nothing
        .with_columns(pl.when(pl.col("_g") > 0).then(pl.col("return")).otherwise(0.0).alias("return"))
        .select("date", "return")
        .sort("date")
    )


# --------------------------------------------------------------------------------------------
# Regimes
# --------------------------------------------------------------------------------------------


def market_state(prices: pl.DataFrame, window: int = REGIME_WINDOW, price_col: str = "close") -> pl.DataFrame:
    """(date, market_return, trailing_vol, trailing_return, trailing_dispersion): the
    equal-weight market's return of the day and, over the ``window`` days up to t-1, its
    volatility (std ddof=1), its compounded return, and the mean cross-sectional std of
    instrument returns. Rows before a full window are null."""
    if window < 2:
        raise ValueError(f"window={window} must be >= 2")
    rets = instrument_returns(prices, price_col)
    daily = (
        rets.group_by("date")
        .agg(pl.col("ret").mean().alias("market_return"), pl.col("ret").std(ddof=1).alias("_xs"))
        .sort("date")
    )
    m = pl.col("market_return")
    return daily.with_columns(
        trailing_vol=m.rolling_std(window, ddof=1).shift(1),
        trailing_return=((1.0 + m).log().rolling_sum(window).exp() - 1.0).shift(1),
        trailing_dispersion=pl.col("_xs").rolling_mean(window).shift(1),
    ).drop("_xs")


def _terciles(values: pl.Series) -> pl.Series:
    x = values.to_numpy().astype(float)
    finite = x[np.isfinite(x)]
    out = np.full(x.size, None, dtype=object)
    if finite.size >= 3:
        lo, hi = np.quantile(finite, [1 / 3, 2 / 3])
        ok = np.isfinite(x)
        out[ok & (x <= lo)] = TERCILES[0]
        out[ok & (x > lo) & (x <= hi)] = TERCILES[1]
        out[ok & (x > hi)] = TERCILES[2]
    return pl.Series(values.name, out.tolist(), dtype=pl.Utf8)


def regime_labels(state: pl.DataFrame) -> pl.DataFrame:
    """(date, volatility, direction, dispersion): volatility and dispersion terciles
    (low/mid/high) of the trailing statistics of ``market_state``, direction up/down of the
    trailing market return (up: >= 0). Null where the trailing window is incomplete."""
    _require(state, "state", ("date", "trailing_vol", "trailing_return", "trailing_dispersion"))
    return state.select(
        "date",
        _terciles(state["trailing_vol"]).alias("volatility"),
        pl.when(pl.col("trailing_return").is_null() | pl.col("trailing_return").is_nan())
        .then(None)
        .when(pl.col("trailing_return") >= 0)
        .then(pl.lit("up"))
        .otherwise(pl.lit("down"))
        .alias("direction"),
        _terciles(state["trailing_dispersion"]).alias("dispersion"),
    )


_BUCKET_ORDER = {"volatility": TERCILES, "direction": ("down", "up"), "dispersion": TERCILES}


def regime_performance(
    returns: pl.DataFrame, labels: pl.DataFrame, periods_per_year: int = 252
) -> pl.DataFrame:
    """(regime, bucket, n_obs, annual_return, sharpe, hit_rate): the strategy's returns on
    the days of each regime bucket. ``annual_return`` is the mean daily return times
    ``periods_per_year`` (days in a bucket are not contiguous, so compounding them would
    mean nothing). Buckets without days have n_obs 0 and NaN statistics."""
    _require(returns, "returns", ("date", "return"))
    joined = returns.join(labels, on="date", how="inner")
    rows = []
    for regime, buckets in _BUCKET_ORDER.items():
        for bucket in buckets:
            r = joined.filter(pl.col(regime) == bucket)["return"].to_numpy()
            r = r[np.isfinite(r)]
            rows.append(
                {
                    "regime": regime,
                    "bucket": bucket,
                    "n_obs": int(r.size),
                    "annual_return": float(r.mean() * periods_per_year) if r.size else math.nan,
                    "sharpe": stats.sharpe(r, periods_per_year=periods_per_year),
                    "hit_rate": stats.hit_rate(r),
                }
            )
    return pl.DataFrame(rows, schema={"regime": pl.Utf8, "bucket": pl.Utf8, "n_obs": pl.Int64,
                                      "annual_return": pl.Float64, "sharpe": pl.Float64,
                                      "hit_rate": pl.Float64})


# --------------------------------------------------------------------------------------------
# Stress windows
# --------------------------------------------------------------------------------------------


def stress_table(
    series: dict[str, pl.DataFrame],
    windows: tuple[StressWindow, ...] = STRESS_WINDOWS,
    periods_per_year: int = 252,
) -> pl.DataFrame:
    """(window, start, end, series, n_obs, total_return, max_drawdown, annual_volatility,
    sharpe): each named return series inside each window (both ends inclusive). Drawdown
    is measured from wealth 1 at the window's start. A series without days in a window
    gets n_obs 0 and NaN statistics (e.g. a 2023 backtest in the 2008 window)."""
    rows = []
    for w in windows:
        if w.end < w.start:
            raise ValueError(f"stress window {w.name!r} ends ({w.end}) before it starts ({w.start})")
        for name, frame in series.items():
            _require(frame, f"series {name!r}", ("date", "return"))
            r = frame.filter(pl.col("date").is_between(w.start, w.end)).sort("date")["return"].to_numpy()
            r = r[np.isfinite(r)]
            rows.append(
                {
                    "window": w.name,
                    "start": w.start,
                    "end": w.end,
                    "series": name,
                    "n_obs": int(r.size),
                    "total_return": float(np.prod(1.0 + r) - 1.0) if r.size else math.nan,
                    "max_drawdown": stats.max_drawdown(r) if r.size else math.nan,
                    "annual_volatility": stats.annual_volatility(r, periods_per_year),
                    "sharpe": stats.sharpe(r, periods_per_year=periods_per_year),
                }
            )
    return pl.DataFrame(rows, schema={"window": pl.Utf8, "start": pl.Date, "end": pl.Date,
                                      "series": pl.Utf8, "n_obs": pl.Int64,
                                      "total_return": pl.Float64, "max_drawdown": pl.Float64,
                                      "annual_volatility": pl.Float64, "sharpe": pl.Float64})


# --------------------------------------------------------------------------------------------
# Factors
# --------------------------------------------------------------------------------------------


def _long_short_terciles(frame: pl.DataFrame, signal: str, name: str, high_minus_low: bool) -> pl.DataFrame:
    """Daily return of top-tercile minus bottom-tercile (or the reverse) equal-weight
    portfolios on ``signal``; days with fewer than 3 names with a signal are left out.
    Ties rank by instrument id (ordinal ranks on a sorted frame) for determinism."""
    ranked = (
        frame.drop_nulls(signal)
        .filter(pl.col(signal).is_finite())
        .sort("date", "instrument_id")
        .with_columns(
            _rank=pl.col(signal).rank("ordinal").over("date"),
            _n=pl.len().over("date"),
        )
        .filter(pl.col("_n") >= 3)
    )
    top = pl.col("_rank") > pl.col("_n") * 2 / 3
    bottom = pl.col("_rank") <= pl.col("_n") / 3
    sign = 1.0 if high_minus_low else -1.0
    return (
        ranked.group_by("date")
        .agg(
            (sign * (pl.col("ret").filter(top).mean() - pl.col("ret").filter(bottom).mean())).alias(name)
        )
        .sort("date")
    )


def factor_returns(
    prices: pl.DataFrame,
    sectors: pl.DataFrame | None = None,
    size_col: str | None = None,
    price_col: str = "close",
    momentum_lookback: int = 252,
    momentum_skip: int = 21,
    size_window: int = 63,
) -> pl.DataFrame:
    """(date, market, momentum[, size][, sector_<name>...]) daily factor returns built from
    the data (module docstring). ``sectors``: (instrument_id, sector). ``size_col``: a column
    of ``prices`` whose trailing ``size_window``-day mean proxies size (dollar volume, say);
    without one there is no size factor. Only days where every factor is defined are kept."""
    if momentum_lookback <= momentum_skip or momentum_skip < 0:
        raise ValueError(
            f"momentum_lookback={momentum_lookback} must exceed momentum_skip={momentum_skip} >= 0"
        )
    cols = ("date", "instrument_id", price_col) + ((size_col,) if size_col else ())
    _require(prices, "prices", cols)
    p = pl.col(price_col).cast(pl.Float64)
    by = "instrument_id"
    base = prices.sort(by, "date").with_columns(
        ret=p / p.shift(1).over(by) - 1.0,
        # 12-1 momentum known at the close of t-1: close(t-1-skip) / close(t-1-lookback) - 1
        momentum_signal=p.shift(1 + momentum_skip).over(by) / p.shift(1 + momentum_lookback).over(by) - 1.0,
    )
    if size_col:
        base = base.with_columns(
            size_signal=pl.col(size_col).cast(pl.Float64).rolling_mean(size_window).shift(1).over(by)
        )
    base = base.drop_nulls("ret").filter(pl.col("ret").is_finite())
    out = base.group_by("date").agg(pl.col("ret").mean().alias("market")).sort("date")
    parts = [_long_short_terciles(base, "momentum_signal", "momentum", high_minus_low=True)]
    if size_col:
        parts.append(_long_short_terciles(base, "size_signal", "size", high_minus_low=False))
    if sectors is not None:
        _require(sectors, "sectors", ("instrument_id", "sector"))
        counts = sectors.group_by("sector").len().sort(["len", "sector"], descending=[True, False])
        base_sector = counts["sector"][0]
        with_sector = base.join(sectors.select("instrument_id", "sector"), on=by, how="inner")
        sector_means = (
            with_sector.group_by("date", "sector").agg(pl.col("ret").mean().alias("r"))
            .filter(pl.col("sector") != base_sector)
            .with_columns(pl.format("sector_{}", pl.col("sector")).str.replace_all(r"[^A-Za-z0-9]+", "_").alias("sector"))
            .pivot(on="sector", index="date", values="r", sort_columns=True)
        )
        parts.append(sector_means)
    for part in parts:
        out = out.join(part, on="date", how="inner")
    sector_cols = sorted(c for c in out.columns if c.startswith("sector_"))
    out = out.with_columns([(pl.col(c) - pl.col("market")).alias(c) for c in sector_cols])
    ordered = ["date", "market", "momentum"] + (["size"] if size_col else []) + sector_cols
    return out.select(ordered).drop_nulls().sort("date")


@dataclass(frozen=True)
class FactorExposures:
    """OLS of strategy returns on factor returns with an intercept: one row per regressor
    (``alpha`` first) with coefficient, standard error and t-statistic (classical,
    homoskedastic errors)."""

    table: pl.DataFrame  # factor, beta, std_error, t_stat
    r_squared: float
    n_obs: int


def factor_exposures(returns: pl.DataFrame, factors: pl.DataFrame) -> FactorExposures:
    """Betas and t-statistics of ``returns`` (date, return) on every non-date column of
    ``factors`` over their common days (rows with a null dropped). ``alpha`` is per period."""
    _require(returns, "returns", ("date", "return"))
    names = [c for c in factors.columns if c != "date"]
    if not names:
        raise ValueError("factors has no factor columns besides 'date'")
    joined = returns.select("date", "return").join(factors, on="date", how="inner").drop_nulls().sort("date")
    y = joined["return"].to_numpy().astype(float)
    x = np.column_stack([np.ones(joined.height)] + [joined[c].to_numpy().astype(float) for c in names])
    n, k = x.shape
    if n <= k:
        raise ValueError(f"factor regression needs more than {k} common days, got {n}")
    if np.linalg.matrix_rank(x) < k:
        raise ValueError(f"factor returns are collinear over the {n} common days: {names}")
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    sigma2 = float(resid @ resid) / (n - k)
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(x.T @ x)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, beta / se, np.nan)
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / tss if tss > 0 else math.nan
    table = pl.DataFrame({"factor": ["alpha", *names], "beta": beta, "std_error": se, "t_stat": t})
    return FactorExposures(table, r2, n)


def _require(frame: pl.DataFrame, what: str, cols) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing} (has {frame.columns})")
