"""The tear sheet's analyses as pure functions over polars frames: drawdown periods and
calendar returns (quantstats' sections), and the signal and trading analyses of Qlib's report
(returns by score quantile, IC decay, score autocorrelation, cost attribution, long and short
legs). No plotting here; ``tearsheet`` draws what these return. Statistics come from
``validation.stats`` (the one rank IC, Sharpe, CAGR, drawdown).

Frames
------
* predictions: ``date``, ``instrument_id``, ``score`` (the score of day t is known after
  close t).
* asset returns: ``date``, ``instrument_id``, ``ret``: each instrument's simple return over
  the trading day ending at ``date`` (``regimes.instrument_returns`` of total-return closes).
  Its dates are the trading calendar of the forward returns below.
* backtest: the ``backtest`` asset's daily frame (``backtest.portfolio.backtest_frame`` plus
  ``n_long``/``n_short``): ``date``, ``gross_return``, ``cost``, ``net_return``,
  ``turnover``, ``gross_exposure``, ``net_exposure``; optionally ``long_return`` and
  ``short_return`` (see ``legs``).
* positions: ``date``, ``instrument_id``, ``weight``: the post-trade weights of close
  ``date`` (signed fractions of equity), the book held over the next trading day.

Forward return at lag L of a score of day t: the instrument's return over the L-th trading
day after t (a single day, so lags do not overlap). With ``execution_lag`` 1 a book decided
at close t is traded at close t+1 and earns day t+2: lag 2.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from quant_assets.validation import stats

PREDICTION_COLUMNS = ("date", "instrument_id", "score")
ASSET_RETURN_COLUMNS = ("date", "instrument_id", "ret")
POSITION_COLUMNS = ("date", "instrument_id", "weight")
BACKTEST_COLUMNS = ("date", "gross_return", "cost", "net_return", "turnover")
LEG_COLUMNS = ("long_return", "short_return")


def _require(frame: pl.DataFrame, what: str, cols) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing} (has {frame.columns})")


# --------------------------------------------------------------------------------------------
# Wealth, drawdowns, calendar returns
# --------------------------------------------------------------------------------------------


def wealth(returns) -> np.ndarray:
    """Growth of 1 (a NaN return is a flat day)."""
    return np.cumprod(1.0 + np.nan_to_num(np.asarray(returns, dtype=float)))


def drawdown(returns) -> np.ndarray:
    """Underwater curve: wealth / running peak - 1, the peak starting at 1 (as
    ``stats.max_drawdown``: a loss on the first day is a drawdown)."""
    w = wealth(returns)
    return w / np.maximum.accumulate(np.maximum(w, 1.0)) - 1.0


_DRAWDOWN_SCHEMA = {
    "start": pl.Date,
    "trough": pl.Date,
    "end": pl.Date,
    "recovery": pl.Date,
    "depth": pl.Float64,
    "days": pl.Int64,
    "calendar_days": pl.Int64,
}


def drawdown_periods(dates: pl.Series, returns, top: int | None = None) -> pl.DataFrame:
    """Every drawdown, worst first: (start, trough, end, recovery, depth, days,
    calendar_days). ``start`` is the first day below the previous peak, ``trough`` the day of
    the lowest wealth (the first such day), ``end`` the last day under water and
    ``recovery`` the next day, back at the peak (null if not recovered by the last day).
    ``depth`` is the drawdown at the trough (negative); ``days`` counts trading days under
    water, ``calendar_days`` is end - start + 1 (quantstats' ``days``). Ties in depth: the
    earlier first. ``top`` keeps the worst ``top``."""
    d = pl.Series("date", dates).cast(pl.Date)
    r = np.asarray(returns, dtype=float)
    if d.len() != r.size:
        raise ValueError(f"{d.len()} dates for {r.size} returns")
    dd = drawdown(r)
    under = dd < 0.0
    if not under.any():
        return pl.DataFrame(schema=_DRAWDOWN_SCHEMA)
    edges = np.diff(np.r_[0, under.astype(np.int8), 0])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1  # last index under water
    day = d.to_list()
    rows = []
    for s, e in zip(starts, ends, strict=True):
        t = s + int(np.argmin(dd[s : e + 1]))
        rows.append(
            {
                "start": day[s],
                "trough": day[t],
                "end": day[e],
                "recovery": day[e + 1] if e + 1 < len(day) else None,
                "depth": float(dd[t]),
                "days": int(e - s + 1),
                "calendar_days": (day[e] - day[s]).days + 1,
            }
        )
    out = pl.DataFrame(rows, schema=_DRAWDOWN_SCHEMA).sort(["depth", "start"])
    return out.head(top) if top is not None else out


def yearly_returns(daily: pl.DataFrame, columns=("return",)) -> pl.DataFrame:
    """(year, <columns>...): each column's return compounded over each calendar year (a
    null/NaN day counts as flat), as ``empyrical.aggregate_returns(..., "yearly")``."""
    _require(daily, "daily", ("date", *columns))
    return (
        daily.group_by(pl.col("date").dt.year().alias("year"))
        .agg([((1.0 + pl.col(c).cast(pl.Float64).fill_nan(0.0).fill_null(0.0)).product() - 1.0).alias(c)
              for c in columns])
        .sort("year")
    )


def return_distribution(returns) -> dict[str, float]:
    """Daily return distribution: mean, std (ddof=1), skew (population moments, as
    ``stats.sample_skew``), excess kurtosis (Pearson - 3), best and worst day, and the
    historical 5% VaR and CVaR (``stats.value_at_risk``/``conditional_value_at_risk``)."""
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    return {
        "n_obs": float(r.size),
        "mean": float(r.mean()) if r.size else math.nan,
        "std": float(r.std(ddof=1)) if r.size > 1 else math.nan,
        "skew": stats.sample_skew(r),
        "excess_kurtosis": stats.pearson_kurtosis(r) - 3.0,
        "best": float(r.max()) if r.size else math.nan,
        "worst": float(r.min()) if r.size else math.nan,
        "var_5": stats.value_at_risk(r, 0.05),
        "cvar_5": stats.conditional_value_at_risk(r, 0.05),
    }


# --------------------------------------------------------------------------------------------
# Signal: forward returns, quantiles, IC decay, autocorrelation
# --------------------------------------------------------------------------------------------


def _nth_next_date(dates: pl.Series, calendar: pl.Series, lag: int) -> pl.DataFrame:
    """(date, target): the ``lag``-th date of ``calendar`` strictly after each of ``dates``;
    dates without one are left out."""
    if int(lag) != lag or lag < 1:
        raise ValueError(f"lag must be an integer >= 1, got {lag}")
    cal = calendar.cast(pl.Date).unique().sort()
    uniq = dates.cast(pl.Date).unique().sort()
    cal_i = cal.cast(pl.Int32).to_numpy()
    pos = np.searchsorted(cal_i, uniq.cast(pl.Int32).to_numpy(), side="right") + (lag - 1)
    ok = pos < cal_i.size
    return pl.DataFrame(
        {"date": uniq.filter(pl.Series(ok)), "target": cal.gather(pos[ok])}
    )


def forward_returns(predictions: pl.DataFrame, asset_returns: pl.DataFrame, lag: int = 1) -> pl.DataFrame:
    """(date, instrument_id, score, target, fwd_return): each finite score with its
    instrument's return on ``target``, the ``lag``-th trading day after ``date`` (module
    docstring); pairs without that return are left out."""
    _require(predictions, "predictions", PREDICTION_COLUMNS)
    _require(asset_returns, "asset returns", ASSET_RETURN_COLUMNS)
    preds = predictions.select(
        pl.col("date").cast(pl.Date), pl.col("instrument_id").cast(pl.Utf8), pl.col("score").cast(pl.Float64)
    ).filter(pl.col("score").is_finite())
    rets = asset_returns.select(
        pl.col("date").cast(pl.Date).alias("target"),
        pl.col("instrument_id").cast(pl.Utf8),
        pl.col("ret").cast(pl.Float64).alias("fwd_return"),
    ).filter(pl.col("fwd_return").is_finite())
    if preds.is_empty() or rets.is_empty():
        return pl.DataFrame(schema={"date": pl.Date, "instrument_id": pl.Utf8, "score": pl.Float64,
                                    "target": pl.Date, "fwd_return": pl.Float64})
    mapping = _nth_next_date(preds["date"], rets["target"], lag)
    return (
        preds.join(mapping, on="date", how="inner")
        .join(rets, on=["target", "instrument_id"], how="inner")
        .sort("date", "instrument_id")
    )


def quantile_returns(
    predictions: pl.DataFrame, asset_returns: pl.DataFrame, n_quantiles: int = 5, lag: int = 1
) -> pl.DataFrame:
    """(date, quantile, return, n_names): the equal-weight forward return (``lag``) of each
    score quantile of each day, ``date`` being the day the return is earned. Quantile 1 holds
    the lowest scores; a day's names are ranked by score (ties by instrument id) and split
    into ``n_quantiles`` groups of sizes differing by at most one. Days with fewer names
    than quantiles are left out. Compounding ``return`` per quantile gives Qlib's cumulative
    return by group."""
    if int(n_quantiles) != n_quantiles or n_quantiles < 2:
        raise ValueError(f"n_quantiles must be an integer >= 2, got {n_quantiles}")
    fwd = forward_returns(predictions, asset_returns, lag)
    q = int(n_quantiles)
    return (
        fwd.sort("date", "score", "instrument_id")
        .with_columns(_rank=pl.int_range(pl.len()).over("date"), _n=pl.len().over("date"))
        .filter(pl.col("_n") >= q)
        .with_columns(quantile=(pl.col("_rank") * q // pl.col("_n") + 1).cast(pl.Int64))
        .group_by("target", "quantile")
        .agg(pl.col("fwd_return").mean().alias("return"), pl.len().cast(pl.Int64).alias("n_names"))
        .rename({"target": "date"})
        .sort("date", "quantile")
    )


def ic_decay(predictions: pl.DataFrame, asset_returns: pl.DataFrame, max_lag: int = 10) -> pl.DataFrame:
    """(lag, rank_ic, t_stat, n_days) for lags 1..``max_lag``: the mean over days of the
    daily rank IC (``stats.rank_information_coefficient``) between the score of day t and
    the return of the lag-th trading day after t, and its t-statistic mean / (std / sqrt n)
    (NaN below 2 days)."""
    if int(max_lag) != max_lag or max_lag < 1:
        raise ValueError(f"max_lag must be an integer >= 1, got {max_lag}")
    rows = []
    for lag in range(1, int(max_lag) + 1):
        fwd = forward_returns(predictions, asset_returns, lag)
        ic = stats.rank_information_coefficient(
            fwd["date"].to_physical().to_numpy(), fwd["score"].to_numpy(), fwd["fwd_return"].to_numpy()
        )
        v = ic.values
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        t = ic.mean / (sd / math.sqrt(v.size)) if v.size > 1 and sd > 0 else math.nan
        rows.append({"lag": lag, "rank_ic": ic.mean, "t_stat": t, "n_days": int(v.size)})
    return pl.DataFrame(rows, schema={"lag": pl.Int64, "rank_ic": pl.Float64, "t_stat": pl.Float64,
                                      "n_days": pl.Int64})


def score_autocorrelation(predictions: pl.DataFrame, lag: int = 1) -> pl.DataFrame:
    """(date, autocorrelation): on each prediction day t, the rank correlation (the one rank
    IC of ``stats``) between the day's scores and the same instruments' scores ``lag``
    prediction days earlier (Qlib's score autocorrelation: low values mean a fast-changing
    ranking and high turnover). Days with fewer than 3 common names are left out."""
    _require(predictions, "predictions", PREDICTION_COLUMNS)
    preds = predictions.select(
        pl.col("date").cast(pl.Date), pl.col("instrument_id").cast(pl.Utf8), pl.col("score").cast(pl.Float64)
    ).filter(pl.col("score").is_finite())
    empty = pl.DataFrame(schema={"date": pl.Date, "autocorrelation": pl.Float64})
    if preds.is_empty():
        return empty
    days = preds["date"].unique().sort()
    if days.len() <= lag:
        return empty
    prev = pl.DataFrame({"date": days.slice(lag), "prev": days.slice(0, days.len() - lag)})
    pairs = (
        preds.join(prev, on="date", how="inner")
        .join(preds.rename({"date": "prev", "score": "prev_score"}), on=["prev", "instrument_id"], how="inner")
        .sort("date", "instrument_id")
    )
    ic = stats.rank_information_coefficient(
        pairs["date"].to_physical().to_numpy(), pairs["score"].to_numpy(), pairs["prev_score"].to_numpy()
    )
    return pl.DataFrame({"date": pl.Series(ic.dates, dtype=pl.Int32).cast(pl.Date), "autocorrelation": ic.values})


# --------------------------------------------------------------------------------------------
# Trading: costs and legs
# --------------------------------------------------------------------------------------------


def cost_attribution(backtest: pl.DataFrame, periods_per_year: int = 252) -> dict[str, float]:
    """Gross versus net, from the backtest's own columns (costs are charged as a fraction
    of the previous close's equity, so net = gross - cost exactly, day by day). Keys:
    gross_cagr, net_cagr, gross_sharpe, net_sharpe, annual_cost (mean daily cost *
    periods_per_year: the arithmetic drag on the annual mean return), total_cost (sum of
    daily costs), cost_share_of_gross (total cost / total gross return; NaN when the gross
    total is <= 0), cost_per_turnover_bps (total cost / total turnover * 1e4), mean_turnover."""
    _require(backtest, "backtest", BACKTEST_COLUMNS)
    g = backtest["gross_return"].cast(pl.Float64).to_numpy()
    c = backtest["cost"].cast(pl.Float64).to_numpy()
    n = backtest["net_return"].cast(pl.Float64).to_numpy()
    to = backtest["turnover"].cast(pl.Float64).to_numpy()
    ppy = periods_per_year
    total_gross, total_cost, total_to = float(np.nansum(g)), float(np.nansum(c)), float(np.nansum(to))
    return {
        "gross_cagr": stats.cagr(g, ppy),
        "net_cagr": stats.cagr(n, ppy),
        "gross_sharpe": stats.sharpe(g, periods_per_year=ppy),
        "net_sharpe": stats.sharpe(n, periods_per_year=ppy),
        "annual_cost": float(np.nanmean(c)) * ppy if c.size else math.nan,
        "total_cost": total_cost,
        "cost_share_of_gross": total_cost / total_gross if total_gross > 0 else math.nan,
        "cost_per_turnover_bps": total_cost / total_to * 1e4 if total_to > 0 else math.nan,
        "mean_turnover": float(np.nanmean(to)) if to.size else math.nan,
    }


def leg_returns(positions: pl.DataFrame, asset_returns: pl.DataFrame) -> pl.DataFrame:
    """(date, long_return, short_return): the gross return of each side of the book held
    over each trading day, sum(w_i * ret_i) over the names held long (w > 0) and short
    (w < 0) at the previous close, as fractions of that close's equity. The two legs sum to
    the backtest kernel's ``gross_return`` (``backtest.portfolio``, step 1) when
    ``positions`` are its post-trade weights. A held name without a return that day earns 0,
    as in the kernel."""
    _require(positions, "positions", POSITION_COLUMNS)
    _require(asset_returns, "asset returns", ASSET_RETURN_COLUMNS)
    schema = {"date": pl.Date, "long_return": pl.Float64, "short_return": pl.Float64}
    pos = positions.select(
        pl.col("date").cast(pl.Date), pl.col("instrument_id").cast(pl.Utf8), pl.col("weight").cast(pl.Float64)
    ).filter(pl.col("weight") != 0.0)
    if pos.is_empty() or asset_returns.is_empty():
        return pl.DataFrame(schema=schema)
    rets = asset_returns.select(
        pl.col("date").cast(pl.Date).alias("target"), pl.col("instrument_id").cast(pl.Utf8),
        pl.col("ret").cast(pl.Float64),
    )
    mapping = _nth_next_date(pos["date"], rets["target"], 1)
    w, r = pl.col("weight"), pl.col("ret").fill_null(0.0)
    return (
        pos.join(mapping, on="date", how="inner")
        .join(rets, on=["target", "instrument_id"], how="left")
        .sort("target", "instrument_id")  # fixed summation order: deterministic sums
        .group_by("target", maintain_order=True)
        .agg(
            (w * r).filter(w > 0).sum().alias("long_return"),
            (w * r).filter(w < 0).sum().alias("short_return"),
        )
        .rename({"target": "date"})
        .select(list(schema))
    )


def legs(backtest: pl.DataFrame, positions: pl.DataFrame | None = None,
         asset_returns: pl.DataFrame | None = None) -> pl.DataFrame | None:
    """(date, long_return, short_return) on the backtest's days: the backtest's own
    ``long_return``/``short_return`` columns when it has them, else computed by
    ``leg_returns`` from ``positions`` and ``asset_returns`` (a day without a book: 0);
    None when neither is available."""
    if all(c in backtest.columns for c in LEG_COLUMNS):
        return backtest.select(pl.col("date").cast(pl.Date), *[pl.col(c).cast(pl.Float64) for c in LEG_COLUMNS])
    if positions is None or asset_returns is None:
        return None
    computed = leg_returns(positions, asset_returns)
    return (
        backtest.select(pl.col("date").cast(pl.Date))
        .join(computed, on="date", how="left")
        .with_columns(pl.col(c).fill_null(0.0) for c in LEG_COLUMNS)
    )


def leg_summary(leg_frame: pl.DataFrame, periods_per_year: int = 252) -> pl.DataFrame:
    """(leg, annual_return, annual_volatility, sharpe, max_drawdown) for the long leg, the
    short leg and both (the gross book). ``annual_return`` is the mean daily contribution
    times ``periods_per_year`` (arithmetic: the legs' contributions add up to the book's);
    the drawdown is of each leg's contributions compounded on their own."""
    _require(leg_frame, "legs", ("date", *LEG_COLUMNS))
    lo = leg_frame["long_return"].cast(pl.Float64).to_numpy()
    sh = leg_frame["short_return"].cast(pl.Float64).to_numpy()
    rows = []
    for name, r in (("long", lo), ("short", sh), ("long + short", lo + sh)):
        finite = r[np.isfinite(r)]
        rows.append(
            {
                "leg": name,
                "annual_return": float(finite.mean()) * periods_per_year if finite.size else math.nan,
                "annual_volatility": stats.annual_volatility(r, periods_per_year),
                "sharpe": stats.sharpe(r, periods_per_year=periods_per_year),
                "max_drawdown": stats.max_drawdown(r),
            }
        )
    return pl.DataFrame(rows, schema={"leg": pl.Utf8, "annual_return": pl.Float64,
                                      "annual_volatility": pl.Float64, "sharpe": pl.Float64,
                                      "max_drawdown": pl.Float64})
