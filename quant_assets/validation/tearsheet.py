"""Self-contained HTML tear sheet of the validation report: matplotlib charts as base64 PNGs
inside one HTML file (an MLflow artifact opens it with no other files). Pure: frames and
arrays in, a string out; no Dagster, no MLflow.

Sections: gate verdict; headline statistics; benchmark-relative statistics against a named
benchmark (``validation.benchmark``); performance (equity, underwater, rolling Sharpe,
volatility and beta); worst drawdowns; monthly and yearly returns; return distribution;
signal (IC by month, IC decay, score autocorrelation, cumulative returns by score quantile);
trading (turnover, gross versus net, long and short legs); trials; bootstrap; regimes; stress
windows; factor exposures. The computations are in ``validation.analysis`` and
``validation.stats``; this module only draws and lays out. A section whose data are missing
or too short says so in place of its chart or table.

Determinism: figures are drawn on the Agg canvas directly (no pyplot, no global backend
state), under a fixed rc context, and saved without the PNG "Software" text chunk (the only
metadata Agg writes besides the image), so the same inputs give byte-identical HTML.
"""

from __future__ import annotations

import base64
import html
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from quant_assets.plots import RC, markdown_image, png
from quant_assets.validation import analysis, stats
from quant_assets.validation.analysis import drawdown, wealth
from quant_assets.validation.benchmark import Benchmark
from quant_assets.validation.gate import GateResult
from quant_assets.validation.regimes import REGIME_WINDOW, FactorExposures
from quant_assets.validation.report import (
    _ROWS,
    RELATIVE_KEYS,
    RELATIVE_ROWS,
    annualised_sharpe,
    format_metric,
    trial_source,
)

if TYPE_CHECKING:  # matplotlib is imported where a chart is drawn, not at every load of the code location
    from matplotlib.figure import Figure

__all__ = [
    "FIGURES",
    "IC_DECAY_LAGS",
    "N_QUANTILES",
    "ROLLING_WINDOW",
    "TearSheetInputs",
    "drawdown",
    "embedded_images",
    "metrics_table",
    "monthly_ic",
    "monthly_returns",
    "render_tearsheet",
    "rolling_sharpe",
    "wealth",
]

ROLLING_WINDOW = 63
TURNOVER_WINDOW = 21  # a month of trading days: the smoothed turnover line
N_QUANTILES = 5
IC_DECAY_LAGS = 10
WORST_DRAWDOWNS = 5
# Every embedded image, in page order (the alt text of each <img>).
FIGURES = (
    "equity", "underwater", "rolling", "monthly_returns", "yearly_returns", "return_distribution",
    "ic_by_month", "ic_decay", "quantile_returns", "turnover", "gross_net", "legs",
    "bootstrap_max_drawdown", "regimes", "stress",
)
# The figures a reader wants without opening the tear sheet: they also go into the report
# asset's Dagster metadata (key_plots), as Markdown images of the same PNG bytes.
KEY_PLOTS = ("equity", "underwater", "rolling", "ic_by_month")
_REGIME_COLORS = {"volatility": "C0", "direction": "C1", "dispersion": "C4"}
_REGIME_LEGEND = {  # what each bar group conditions on (regimes.regime_labels)
    "volatility": f"volatility ({REGIME_WINDOW}d), terciles",
    "direction": f"direction ({REGIME_WINDOW}d return)",
    "dispersion": f"dispersion ({REGIME_WINDOW}d), terciles",
}


@dataclass(frozen=True)
class TearSheetInputs:
    """What the tear sheet draws. The first block is required; the rest is optional and each
    section without its data says what is missing.

    * ``daily``: date, return (the strategy's net daily return) [, benchmark: used only when
      ``benchmark`` is None, as an unnamed benchmark].
    * ``benchmark``: the named benchmark (``benchmark.benchmark_for_book``); relative
      statistics are taken from ``metrics`` when ``summarise`` got the same benchmark, else
      computed here with ``stats.benchmark_summary``.
    * ``backtest``: the backtest asset's daily frame (gross_return, cost, net_return,
      turnover, gross/net exposure, n_long, n_short [, long_return, short_return]).
    * ``predictions``: date, instrument_id, score. ``asset_returns``: date, instrument_id, ret
      (``regimes.instrument_returns`` of total-return closes), covering the backtest's days
      and at least ``IC_DECAY_LAGS`` trading days before its end.
    * ``positions``: date, instrument_id, weight (post-trade), for the legs when the backtest
      frame has no long_return/short_return columns.
    * ``trial_sharpes``: per-period Sharpe of every trial (``ValidationSummary.trial_sharpes``).
    * ``execution_lag``: the backtest's; the quantile returns use lag execution_lag + 1, the
      day a book decided on the scores starts to earn.
    """

    daily: pl.DataFrame
    metrics: dict[str, float]
    monthly_ic: pl.DataFrame  # month (Date), rank_ic (mean daily rank IC)
    bootstrap_max_drawdown: np.ndarray
    regimes: pl.DataFrame  # regimes.regime_performance
    stress: pl.DataFrame  # regimes.stress_table (real data)
    stress_source: str
    factors: FactorExposures | None = None
    gate: GateResult | None = None
    title: str = "Validation report"
    benchmark: Benchmark | None = None
    backtest: pl.DataFrame | None = None
    predictions: pl.DataFrame | None = None
    asset_returns: pl.DataFrame | None = None
    positions: pl.DataFrame | None = None
    trial_sharpes: dict[str, float] = field(default_factory=dict)
    execution_lag: int = 1
    periods_per_year: int = 252


# --------------------------------------------------------------------------------------------
# Series helpers (pure numpy/polars)
# --------------------------------------------------------------------------------------------


def rolling_sharpe(returns: np.ndarray, window: int = ROLLING_WINDOW, periods_per_year: int = 252) -> np.ndarray:
    """Annualised Sharpe of each trailing ``window`` (std ddof=1); NaN before a full window
    or where the window has no dispersion."""
    r = np.asarray(returns, dtype=float)
    out = np.full(r.size, np.nan)
    if r.size < window or window < 2:
        return out
    view = np.lib.stride_tricks.sliding_window_view(r, window)
    mean, sd = view.mean(axis=1), view.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[window - 1 :] = np.where(sd > 0, mean / sd * math.sqrt(periods_per_year), np.nan)
    return out


def monthly_returns(daily: pl.DataFrame) -> pl.DataFrame:
    """(year, month, return): compounded strategy return of each calendar month."""
    return (
        daily.group_by(pl.col("date").dt.year().alias("year"), pl.col("date").dt.month().alias("month"))
        .agg(((1.0 + pl.col("return")).product() - 1.0).alias("return"))
        .sort("year", "month")
    )


def monthly_ic(ic_dates: np.ndarray, ic_values: np.ndarray) -> pl.DataFrame:
    """(month, rank_ic): mean of the daily ICs of each month; ``ic_dates`` are dates or days
    since the epoch (the physical Date representation)."""
    d = pl.Series("date", np.asarray(ic_dates))
    if d.dtype != pl.Date:
        d = d.cast(pl.Int32).cast(pl.Date)
    return (
        pl.DataFrame({"date": d, "ic": np.asarray(ic_values, dtype=float)})
        .group_by(pl.col("date").dt.truncate("1mo").alias("month"))
        .agg(pl.col("ic").mean().alias("rank_ic"))
        .sort("month")
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
# Margins are fixed in inches rather than left to constrained layout, which draws every figure
# an extra time to measure it (benchmarks/tearsheet.py times the whole page).

_LEFT, _RIGHT, _TOP, _BOTTOM = 0.7, 0.2, 0.35, 0.5  # inches
_LEGEND_RIGHT = 2.1  # inches kept free for a legend outside the axes




def _grid(height: float, rows: int = 1, cols: int = 1, width: float = 8.0, right: float = _RIGHT,
          bottom: float = _BOTTOM, sharex: bool = False):
    """A figure of ``rows`` x ``cols`` axes with fixed margins (inches); returns (fig, axes)
    with ``axes`` a single Axes for 1 x 1."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(
        rows, cols, sharex=sharex, squeeze=False,
        gridspec_kw={
            "left": _LEFT / width, "right": 1.0 - right / width,
            "top": 1.0 - _TOP / height, "bottom": bottom / height,
            "hspace": 0.45 if rows > 1 else 0.2, "wspace": 0.25,
        },
    )
    flat = [ax for row in axes for ax in row]
    return fig, flat[0] if len(flat) == 1 else flat


def _figure(width: float = 8.0, height: float = 3.0) -> tuple[Figure, object]:
    return _grid(height, width=width)


def _date_axis(ax, dates) -> None:
    """Short date tick labels that do not overlap (no rotation needed); matplotlib's default
    for a single day, where the locator has no interval to pick."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    if len(dates) < 2 or dates[0] == dates[-1]:
        return
    locator = AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _equity(dates, r, b, bench_name: str) -> Figure:
    fig, ax = _figure()
    if len(dates):
        marker = "o" if len(dates) < 3 else None  # a line through one point draws nothing
        ax.plot(dates, wealth(r), label="strategy (net)", color="C0", marker=marker)
        ax.plot(dates, wealth(b), label=f"benchmark: {bench_name}", color="C7", marker=marker)
        ax.legend(loc="upper left")
        _date_axis(ax, dates)
    else:
        _no_data(ax, "no backtest days")
    ax.set_title("Equity vs benchmark (growth of 1)")
    return fig


def _underwater(dates, r) -> Figure:
    fig, ax = _figure(height=2.4)
    if len(dates):
        ax.fill_between(dates, drawdown(r), 0.0, color="C3", alpha=0.5)
        _date_axis(ax, dates)
    else:
        _no_data(ax, "no backtest days")
    ax.set_title("Underwater (drawdown from peak)")
    return fig


def _rolling(dates, r, b, bench_name: str, ppy: int) -> Figure:
    """Rolling Sharpe, volatility and beta on one figure (shared dates)."""
    fig, axes = _grid(6.0, rows=3, sharex=True)
    w = ROLLING_WINDOW
    series = (
        (f"Rolling {w}-day Sharpe (annualised)", rolling_sharpe(r, w, ppy), 0.0, "C0"),
        (f"Rolling {w}-day volatility (annualised)", stats.rolling_volatility(r, w, ppy), None, "C1"),
        (f"Rolling {w}-day beta to {bench_name}", stats.rolling_beta(r, b, w), 0.0, "C2"),
    )
    for ax, (title, values, ref, color) in zip(axes, series, strict=True):
        if np.isfinite(values).any():
            ax.plot(dates, values, color=color)
            if ref is not None:
                ax.axhline(ref, color="black", lw=0.8)
        elif "beta" in title and np.isfinite(b).any() and np.nanmax(b) == np.nanmin(b):
            _no_data(ax, "undefined: the benchmark has no variance (cash)")
        else:
            _no_data(ax, f"fewer than {w} days")
        ax.set_title(title)
    if len(dates):
        _date_axis(axes[-1], dates)
    return fig


def _heatmap(daily: pl.DataFrame) -> Figure:
    m = monthly_returns(daily)
    years = sorted(set(m["year"].to_list()))
    fig, ax = _figure(height=0.95 + 0.45 * max(len(years), 1))
    if not years:
        _no_data(ax, "no backtest days")
        ax.set_title("Monthly returns")
        return fig
    grid = np.full((len(years), 12), np.nan)
    for y, mo, r in m.iter_rows():
        grid[years.index(y), mo - 1] = r
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    ax.imshow(grid, cmap="RdYlGn", vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(12), ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"])
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    for i in range(len(years)):
        for j in range(12):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1%}", ha="center", va="center", fontsize=7)
    ax.set_title("Monthly returns")
    return fig


def _yearly(yearly: pl.DataFrame, bench_name: str) -> Figure:
    fig, ax = _figure(height=2.4)
    if yearly.height:
        x = np.arange(yearly.height)
        ax.bar(x - 0.2, yearly["return"].to_numpy(), 0.4, label="strategy", color="C0")
        ax.bar(x + 0.2, yearly["benchmark"].to_numpy(), 0.4, label=f"benchmark: {bench_name}", color="C7")
        ax.set_xticks(x, [str(y) for y in yearly["year"].to_list()])
        ax.axhline(0.0, color="black", lw=0.8)
        ax.legend(loc="best", fontsize=7)  # bars may fill any corner
    else:
        _no_data(ax, "no backtest days")
    ax.set_title("Yearly returns (compounded)")
    return fig


def _distribution(r: np.ndarray, dist: dict[str, float]) -> Figure:
    fig, ax = _figure(height=2.4)
    x = r[np.isfinite(r)]
    if x.size >= 2:
        ax.hist(x, bins=min(60, max(10, x.size // 10)), color="C0", alpha=0.7)
        if math.isfinite(dist["var_5"]):
            ax.axvline(dist["var_5"], color="C3", label=f"5% VaR {dist['var_5']:.2%}")
            ax.axvline(dist["cvar_5"], color="C3", ls="--", label=f"5% CVaR {dist['cvar_5']:.2%}")
        ax.legend(loc="upper left", fontsize=7)
    else:
        _no_data(ax, "fewer than 2 days")
    ax.set_title("Distribution of daily returns")
    return fig


def _ic(ic: pl.DataFrame) -> Figure:
    fig, ax = _grid(2.6, bottom=0.75)
    if ic.height:
        labels = [d.strftime("%Y-%m") for d in ic["month"].to_list()]
        vals = ic["rank_ic"].to_numpy()
        ax.bar(range(len(vals)), vals, color=["C2" if v >= 0 else "C3" for v in vals])
        step = max(1, len(vals) // 24)  # at most ~24 labels
        ax.set_xticks(range(0, len(vals), step), labels[::step], rotation=90 if len(vals) > 12 else 0)
        ax.axhline(0.0, color="black", lw=0.8)
    else:
        _no_data(ax, "no scored days")
    ax.set_title("Mean daily rank IC by month")
    return fig


def _ic_decay(decay: pl.DataFrame | None, autocorr: pl.DataFrame | None) -> Figure:
    fig, (ax1, ax2) = _grid(2.6, cols=2)
    if decay is not None and decay.filter(pl.col("n_days") > 0).height:
        vals = np.nan_to_num(decay["rank_ic"].to_numpy())
        ax1.bar(decay["lag"].to_numpy(), vals, color=["C2" if v >= 0 else "C3" for v in vals])
        ax1.axhline(0.0, color="black", lw=0.8)
        ax1.set_xlabel("lag (trading days after the score)")
    else:
        _no_data(ax1, "no scores with forward returns")
    ax1.set_title("IC decay: mean rank IC by lag")
    if autocorr is not None and autocorr.height:
        ax2.plot(autocorr["date"].to_numpy(), autocorr["autocorrelation"].to_numpy(), color="C4", lw=0.8)
        _date_axis(ax2, autocorr["date"].to_numpy())
    else:
        _no_data(ax2, "fewer than 2 scored days")
    ax2.set_title("Score autocorrelation (lag 1)")
    return fig


def _quantiles(qr: pl.DataFrame | None, n_q: int) -> Figure:
    import matplotlib
    fig, ax = _figure()
    if qr is not None and qr.height:
        wide = qr.pivot(on="quantile", index="date", values="return", sort_columns=True).sort("date")
        dates = wide["date"].to_numpy()
        cmap = matplotlib.colormaps["coolwarm"]  # no pale middle colour: every line stays visible
        for q in range(1, n_q + 1):
            col = str(q)
            if col in wide.columns:
                ax.plot(dates, wealth(wide[col].to_numpy()), color=cmap((q - 1) / max(n_q - 1, 1)),
                        label=f"Q{q}" + (" (lowest scores)" if q == 1 else " (highest)" if q == n_q else ""))
        if "1" in wide.columns and str(n_q) in wide.columns:
            spread = wide[str(n_q)].fill_null(0.0).to_numpy() - wide["1"].fill_null(0.0).to_numpy()
            ax.plot(dates, wealth(spread), color="black", ls="--", label=f"Q{n_q} - Q1")
        ax.legend(loc="upper left", fontsize=7, ncols=2)
        _date_axis(ax, dates)
    else:
        _no_data(ax, "no scores with forward returns")
    ax.set_title("Cumulative return by score quantile (equal weight, no costs)")
    return fig


def _turnover(bt: pl.DataFrame | None) -> Figure:
    fig, ax = _figure(height=2.4)
    if bt is not None and bt.height:
        to = bt["turnover"].cast(pl.Float64)
        ax.plot(bt["date"].to_numpy(), to.to_numpy(), color="C7", lw=0.6, label="daily")
        if bt.height >= TURNOVER_WINDOW:
            ax.plot(bt["date"].to_numpy(), to.rolling_mean(TURNOVER_WINDOW).to_numpy(), color="C0",
                    label=f"{TURNOVER_WINDOW}-day mean")
        ax.legend(loc="upper right", fontsize=7)
        _date_axis(ax, bt["date"].to_numpy())
    else:
        _no_data(ax, "no backtest frame")
    ax.set_title("Turnover (one-way, fraction of equity)")
    return fig


def _gross_net(bt: pl.DataFrame | None) -> Figure:
    fig, ax = _figure(height=2.6)
    if bt is not None and bt.height:
        d = bt["date"].to_numpy()
        ax.plot(d, wealth(bt["gross_return"].to_numpy()), color="C2", label="gross (before costs)")
        ax.plot(d, wealth(bt["net_return"].to_numpy()), color="C0", label="net")
        ax.plot(d, 1.0 - np.nancumsum(bt["cost"].to_numpy()), color="C3", ls="--", label="1 - cumulative cost")
        ax.legend(loc="upper left", fontsize=7)
        _date_axis(ax, d)
    else:
        _no_data(ax, "no backtest frame")
    ax.set_title("Gross versus net (growth of 1)")
    return fig


def _legs(legs: pl.DataFrame | None, reason: str) -> Figure:
    fig, ax = _figure(height=2.6)
    if legs is not None and legs.height:
        d = legs["date"].to_numpy()
        lo, sh = legs["long_return"].to_numpy(), legs["short_return"].to_numpy()
        ax.plot(d, wealth(lo), color="C2", label="long leg")
        ax.plot(d, wealth(sh), color="C3", label="short leg")
        ax.plot(d, wealth(lo + sh), color="black", ls="--", label="long + short (gross)")
        ax.legend(loc="upper left", fontsize=7)
        _date_axis(ax, d)
    else:
        _no_data(ax, reason)
    ax.set_title("Long and short legs (gross contributions, growth of 1)")
    return fig


def _bootstrap(mdd: np.ndarray, metrics: dict[str, float], threshold: float | None) -> Figure:
    fig, ax = _figure(height=2.6)
    x = np.asarray(mdd, dtype=float)
    x = x[np.isfinite(x)]
    if x.size:
        ax.hist(x, bins=40, color="C0", alpha=0.7)
        p05 = metrics.get("bootstrap_max_drawdown_p05", math.nan)
        if math.isfinite(p05):
            ax.axvline(p05, color="C3", label=f"5th pct {p05:.1%}")
        if threshold is not None and math.isfinite(threshold):
            ax.axvline(threshold, color="black", ls="--", label=f"gate {threshold:.0%}")
        ax.legend(loc="upper left")
    else:
        _no_data(ax, "too few returns to resample")
    ax.set_title("Stationary-bootstrap max drawdown distribution")
    return fig


def _regime_bars(regimes: pl.DataFrame) -> Figure:
    from matplotlib.patches import Patch
    fig, ax = _grid(2.8, right=_LEGEND_RIGHT, bottom=0.6)
    if regimes.height:
        labels = regimes["bucket"].to_list()  # the colour (legend) says which regime
        vals = np.nan_to_num(regimes["sharpe"].to_numpy().astype(float))
        kinds = regimes["regime"].to_list()
        ax.bar(range(len(vals)), vals, color=[_REGIME_COLORS.get(r, "C7") for r in kinds])
        ax.set_xticks(range(len(vals)), labels)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.legend(
            handles=[Patch(color=_REGIME_COLORS.get(k, "C7"), label=_REGIME_LEGEND.get(k, k))
                     for k in dict.fromkeys(kinds)],
            loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="regime (trailing market)",
            title_fontsize=7,
        )
    else:
        _no_data(ax, "no regime table")
    ax.set_title("Sharpe (annualised) by market regime")
    return fig


def _stress_bars(stress: pl.DataFrame) -> Figure:
    fig, ax = _grid(3.0, right=_LEGEND_RIGHT, bottom=0.8)
    if not stress.height:
        _no_data(ax, "no stress windows")
        ax.set_title("Max drawdown in stress windows")
        return fig
    windows = list(dict.fromkeys(stress["window"].to_list()))
    series = list(dict.fromkeys(stress["series"].to_list()))
    width = 0.8 / max(len(series), 1)
    for k, name in enumerate(series):
        sub = stress.filter(pl.col("series") == name)
        vals = [sub.filter(pl.col("window") == w)["max_drawdown"].item() for w in windows]
        ax.bar(np.arange(len(windows)) + k * width, np.nan_to_num(np.array(vals, dtype=float)), width, label=name)
    ax.set_xticks(np.arange(len(windows)) + 0.4 - width / 2, [textwrap.fill(w, 14) for w in windows], fontsize=7)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # outside: bars fill the axes
    ax.set_title("Max drawdown in stress windows (no bar: not covered)")
    return fig

# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"/></figure>'


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "num":
        return f"{value:.2f}"
    if kind == "num4":
        return f"{value:.4g}"
    if kind == "int":
        return f"{value:.0f}"
    return html.escape(str(value))


def _table(frame: pl.DataFrame, kinds: dict[str, str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v, kinds.get(c, 'str'))}</td>" for c, v in zip(frame.columns, row, strict=True)) + "</tr>"
        for row in frame.iter_rows()
    )
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def _keyed_table(rows, metrics: dict[str, float], table_id: str, head: str = "statistic") -> str:
    body = "".join(
        f'<tr><td>{html.escape(label)}</td><td data-metric="{key}">'
        f"{html.escape(format_metric(key, metrics.get(key, math.nan), metrics))}</td></tr>"
        for label, key, _ in rows
    )
    return f'<table id="{table_id}"><tr><th>{html.escape(head)}</th><th>value</th></tr>{body}</table>'


def metrics_table(metrics: dict[str, float]) -> str:
    """The headline table; each value is ``report.format_metric`` of the metric (with the
    whole bundle as context: trial counts by source, why MinTRL is undefined)."""
    return _keyed_table(_ROWS, metrics, "metrics")


def _p(text: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<p{c}>{html.escape(text)}</p>"


def _span(dates: pl.Series) -> str:
    if not dates.len():
        return "no days"
    return f"{dates.min():%Y-%m}..{dates.max():%Y-%m}"


_CSS = (
    "body{font-family:sans-serif;max-width:980px;margin:auto;padding:1em}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
    "text-align:right}figure{margin:0.5em 0}img{max-width:100%}"
    ".pass{color:#1a7f37}.fail{color:#c0392b}.note{color:#555;font-size:90%}"
)


def _benchmark_of(inputs: TearSheetInputs) -> Benchmark:
    if inputs.benchmark is not None:
        return inputs.benchmark
    if "benchmark" in inputs.daily.columns:
        return Benchmark(
            "benchmark (unnamed)",
            inputs.daily.select("date", pl.col("benchmark").alias("return")),
            "market",
            "the daily frame's benchmark column; pass a named Benchmark",
        )
    return Benchmark.cash("no benchmark given")


def _stress_table(stress: pl.DataFrame, strategy_span: str) -> str:
    """The stress table; a series without days in a window says it does not cover it rather
    than showing n/a."""
    kinds = {"total_return": "pct", "max_drawdown": "pct", "annual_volatility": "pct", "sharpe": "num"}
    cols = ["window", "series", "n_obs", *kinds]
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for row in stress.iter_rows(named=True):
        cells = [html.escape(str(row["window"])), html.escape(str(row["series"])), str(row["n_obs"])]
        if row["n_obs"] == 0:
            who = f"the backtest ({strategy_span})" if row["series"] == "strategy" else "this series"
            cells.append(f'<td colspan="{len(kinds)}">not covered by {html.escape(who)}</td>')
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells[:3]) + cells[3] + "</tr>")
        else:
            cells += [_fmt(row[k], v) for k, v in kinds.items()]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table id="stress"><tr>{head}</tr>{"".join(rows)}</table>'


def _legs_reason(inputs: TearSheetInputs) -> str:
    if inputs.backtest is None:
        return "no backtest frame given"
    return ("the backtest frame has no long_return/short_return columns and no positions "
            "(post-trade weights) with asset returns were given")


def render_tearsheet(inputs: TearSheetInputs) -> str:
    """The whole tear sheet as one HTML string (images embedded)."""
    import matplotlib
    ppy = inputs.periods_per_year
    daily = inputs.daily.sort("date")
    dates = daily["date"]
    d_np = dates.to_numpy()
    r = daily["return"].cast(pl.Float64).to_numpy()
    bench = _benchmark_of(inputs)
    b = bench.aligned(dates)
    metrics = dict(inputs.metrics)
    if not all(k in metrics for k in RELATIVE_KEYS):  # summarise got no benchmark
        metrics.update(stats.benchmark_summary(r, b, ppy))
    span = _span(dates)

    bt = inputs.backtest.sort("date") if inputs.backtest is not None else None
    if bt is not None:
        missing = [c for c in analysis.BACKTEST_COLUMNS if c not in bt.columns]
        if missing:
            raise ValueError(f"tear sheet: the backtest frame is missing columns {missing} (has {bt.columns})")
    preds, rets = inputs.predictions, inputs.asset_returns
    signal_ok = preds is not None and rets is not None
    quantile_lag = inputs.execution_lag + 1
    qr = analysis.quantile_returns(preds, rets, N_QUANTILES, quantile_lag) if signal_ok else None
    decay = analysis.ic_decay(preds, rets, IC_DECAY_LAGS) if signal_ok else None
    autocorr = analysis.score_autocorrelation(preds) if preds is not None else None
    legs = analysis.legs(bt, inputs.positions, rets) if bt is not None else None
    yearly = analysis.yearly_returns(
        daily.select("date", "return").with_columns(benchmark=pl.Series(b)), ("return", "benchmark")
    ).with_columns(active=pl.col("return") - pl.col("benchmark"))
    dist = analysis.return_distribution(r)
    worst = analysis.drawdown_periods(dates, r, WORST_DRAWDOWNS)

    threshold = None
    if inputs.gate is not None:
        threshold = next(
            (c.threshold for c in inputs.gate.criteria if c.name == "bootstrap_max_drawdown"), None
        )
    with matplotlib.rc_context(RC):
        figures = [
            ("equity", _equity(d_np, r, b, bench.name)),
            ("underwater", _underwater(d_np, r)),
            ("rolling", _rolling(d_np, r, b, bench.name, ppy)),
            ("monthly_returns", _heatmap(daily)),
            ("yearly_returns", _yearly(yearly, bench.name)),
            ("return_distribution", _distribution(r, dist)),
            ("ic_by_month", _ic(inputs.monthly_ic)),
            ("ic_decay", _ic_decay(decay, autocorr)),
            ("quantile_returns", _quantiles(qr, N_QUANTILES)),
            ("turnover", _turnover(bt)),
            ("gross_net", _gross_net(bt)),
            ("legs", _legs(legs, _legs_reason(inputs))),
            ("bootstrap_max_drawdown", _bootstrap(inputs.bootstrap_max_drawdown, metrics, threshold)),
            ("regimes", _regime_bars(inputs.regimes)),
            ("stress", _stress_bars(inputs.stress)),
        ]
        images = {name: png(fig) for name, fig in figures}

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(inputs.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(inputs.title)}</h1>",
    ]
    if inputs.gate is not None:
        cls = "pass" if inputs.gate.passed else "fail"
        lines = "".join(f"<li>{html.escape(c.line())}</li>" for c in inputs.gate.criteria)
        parts.append(f'<h2 class="{cls}">{html.escape(inputs.gate.message().splitlines()[0])}</h2><ul id="gate">{lines}</ul>')

    parts += ['<h2 id="headline">Headline statistics</h2>', metrics_table(metrics),
              _p(f"Backtest {span}, net of costs; Sharpe ratios annualised (x sqrt({ppy})).", "note")]

    parts += [f'<h2 id="relative">Benchmark-relative statistics (vs {html.escape(bench.name)})</h2>',
              _p(f"Benchmark: {bench.name}" + (f". Why: {bench.note}" if bench.note else "") + ".")]
    if metrics.get("n_obs_benchmark", 0) < 2:
        parts.append(_p("Not computable: fewer than 2 days with both a strategy and a benchmark return.", "note"))
    parts.append(_keyed_table(RELATIVE_ROWS, metrics, "relative", "vs " + bench.name))
    parts.append(_p(
        "Active return = mean daily (strategy - benchmark) x periods per year; tracking error = its "
        "std (ddof=1) x sqrt(periods per year); information ratio = active return / tracking error "
        "(empyrical's excess_sharpe annualised). Beta = cov/var as empyrical.beta; alpha = the mean "
        "daily alpha compounded over a year, as empyrical.alpha.", "note"))
    if bench.kind == "cash":
        parts.append(_p("Against cash, beta and alpha are undefined (the benchmark has no variance); "
                        "active return and information ratio are the strategy's own mean return and Sharpe ratio.",
                        "note"))

    parts += ['<h2 id="performance">Performance</h2>'] + [
        _img(n, images[n]) for n in ("equity", "underwater", "rolling")
    ]
    if r.size < ROLLING_WINDOW:
        parts.append(_p(f"Rolling statistics need {ROLLING_WINDOW} days; the backtest has {r.size}.", "note"))

    parts.append(f'<h2 id="drawdowns">Worst drawdowns (top {WORST_DRAWDOWNS})</h2>')
    if worst.height:
        shown = worst.with_columns(
            pl.col("recovery").cast(pl.Utf8).fill_null("not recovered"),
        )
        parts.append(_table(shown, {"depth": "pct", "days": "int", "calendar_days": "int"}, "drawdowns"))
        parts.append(_p("start: first day below the previous peak; trough: lowest wealth; end: last day "
                        "under water; recovery: first day back at the peak; days: trading days under "
                        "water; calendar_days: end - start + 1 (quantstats' days).", "note"))
    else:
        parts.append(_p("No drawdown: wealth never fell below a previous peak." if r.size else
                        "No backtest days.", "note"))

    parts += ['<h2 id="periods">Monthly and yearly returns</h2>', _img("monthly_returns", images["monthly_returns"]),
              _img("yearly_returns", images["yearly_returns"])]
    if yearly.height:
        parts.append(_table(yearly.rename({"return": "strategy"}),
                            {"strategy": "pct", "benchmark": "pct", "active": "pct"}, "yearly"))

    parts += ['<h2 id="distribution">Return distribution</h2>', _img("return_distribution", images["return_distribution"])]
    dist_rows = pl.DataFrame({
        "statistic": ["mean", "std", "skew", "excess kurtosis", "best day", "worst day",
                      "5% VaR (historical)", "5% CVaR"],
        "value": [_fmt(dist["mean"], "pct"), _fmt(dist["std"], "pct"), _fmt(dist["skew"], "num"),
                  _fmt(dist["excess_kurtosis"], "num"), _fmt(dist["best"], "pct"), _fmt(dist["worst"], "pct"),
                  _fmt(dist["var_5"], "pct"), _fmt(dist["cvar_5"], "pct")],
    })
    parts.append(_table(dist_rows, {}, "distribution"))

    parts += ['<h2 id="signal">Signal</h2>', _img("ic_by_month", images["ic_by_month"]),
              _img("ic_decay", images["ic_decay"])]
    if decay is not None:
        parts.append(_table(decay, {"rank_ic": "num4", "t_stat": "num", "n_days": "int"}, "ic_decay"))
        parts.append(_p("Lag L: rank IC of the score of day t with the return of the L-th trading day after t.", "note"))
    else:
        parts.append(_p("IC decay and quantile returns need the predictions and the instruments' daily returns; "
                        "not given.", "note"))
    if autocorr is not None and autocorr.height:
        parts.append(_p(f"Mean score autocorrelation (lag 1): {_fmt(float(autocorr['autocorrelation'].mean()), 'num4')}."))
    parts.append(_img("quantile_returns", images["quantile_returns"]))
    if qr is not None and qr.height:
        per_q = (qr.group_by("quantile").agg((pl.col("return").mean() * ppy).alias("annual_return"),
                                              pl.col("n_names").mean().alias("mean_names")).sort("quantile"))
        parts.append(_table(per_q, {"annual_return": "pct", "mean_names": "num"}, "quantiles"))
        parts.append(_p(f"Score of day t, equal-weight return over day t+{quantile_lag} (execution lag "
                        f"{inputs.execution_lag}: the first day a book decided on the score earns); no costs. "
                        "annual_return: mean daily return x periods per year.", "note"))

    parts += ['<h2 id="trading">Trading</h2>', _img("turnover", images["turnover"]), _img("gross_net", images["gross_net"])]
    if bt is not None and bt.height:
        ca = analysis.cost_attribution(bt, ppy)
        cost_rows = pl.DataFrame({
            "statistic": ["CAGR gross", "CAGR net", "Sharpe gross", "Sharpe net", "annual cost drag",
                          "total cost", "cost / gross return", "cost per unit turnover (bps)", "mean daily turnover"],
            "value": [_fmt(ca["gross_cagr"], "pct"), _fmt(ca["net_cagr"], "pct"), _fmt(ca["gross_sharpe"], "num"),
                      _fmt(ca["net_sharpe"], "num"), _fmt(ca["annual_cost"], "pct"), _fmt(ca["total_cost"], "pct"),
                      _fmt(ca["cost_share_of_gross"], "pct"), _fmt(ca["cost_per_turnover_bps"], "num"),
                      _fmt(ca["mean_turnover"], "num4")],
        })
        parts.append(_table(cost_rows, {}, "costs"))
    else:
        parts.append(_p("Turnover and cost attribution need the backtest frame; not given.", "note"))
    parts.append(_img("legs", images["legs"]))
    if legs is not None and legs.height:
        parts.append(_table(analysis.leg_summary(legs, ppy),
                            {"annual_return": "pct", "annual_volatility": "pct", "sharpe": "num",
                             "max_drawdown": "pct"}, "legs"))
        if bt is not None and {"n_long", "n_short"} <= set(bt.columns):
            parts.append(_p(f"Mean names held: {_fmt(float(bt['n_long'].mean()), 'num')} long, "
                            f"{_fmt(float(bt['n_short'].mean()), 'num')} short."))
    else:
        parts.append(_p(f"Long and short legs not available: {_legs_reason(inputs)}.", "note"))

    parts.append('<h2 id="trials">Trials</h2>')
    if inputs.trial_sharpes:
        trials = pl.DataFrame({
            "trial": list(sorted(inputs.trial_sharpes)),
            "source": [trial_source(k) for k in sorted(inputs.trial_sharpes)],
            "sharpe_annualised": [annualised_sharpe(inputs.trial_sharpes[k], ppy) for k in sorted(inputs.trial_sharpes)],
        }, schema={"trial": pl.Utf8, "source": pl.Utf8, "sharpe_annualised": pl.Float64})
        parts.append(_p(f"Trials deflating the DSR: {format_metric('n_trials', metrics.get('n_trials', math.nan), metrics)}."))
        parts.append(_table(trials, {"sharpe_annualised": "num"}, "trials"))
    else:
        parts.append(_p(f"Trials deflating the DSR: {format_metric('n_trials', metrics.get('n_trials', math.nan), metrics)}; "
                        "per-trial Sharpe ratios not given.", "note"))

    parts += ['<h2 id="robustness">Robustness</h2>', _img("bootstrap_max_drawdown", images["bootstrap_max_drawdown"])]
    parts += ['<h2 id="regimes">Market regimes</h2>', _img("regimes", images["regimes"])]
    if inputs.regimes.height:
        parts.append(_table(inputs.regimes, {"annual_return": "pct", "sharpe": "num", "hit_rate": "pct"}, "regimes"))
    parts += [
        '<h2 id="stress">Stress windows (real data)</h2>',
        _p(f"Source: {inputs.stress_source}. The strategy's backtest covers {span}; a window outside it "
           "says so instead of showing numbers."),
        _img("stress", images["stress"]),
        _stress_table(inputs.stress, span) if inputs.stress.height else _p("No stress windows.", "note"),
    ]
    if inputs.factors is not None:
        parts += [
            f'<h2 id="factors">Factor exposures</h2><p>OLS on {inputs.factors.n_obs} days, R&sup2; '
            f"{_fmt(inputs.factors.r_squared, 'num')}; alpha per day.</p>",
            _table(inputs.factors.table, {"beta": "num4", "std_error": "num4", "t_stat": "num"}, "factors"),
        ]
    else:
        parts += ['<h2 id="factors">Factor exposures</h2>',
                  _p("Not computed (too few common days for the regression, or no factor returns given).", "note")]
    parts.append("</body></html>")
    return "\n".join(parts)


_IMG_RE = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"/>')


def embedded_images(page: str) -> dict[str, bytes]:
    """name -> PNG bytes of every image embedded in a tear sheet."""
    return {name: base64.b64decode(data) for name, data in _IMG_RE.findall(page)}


def key_plots_markdown(page: str) -> dict[str, str]:
    """plot_<name> -> a Markdown image of each of the tear sheet's ``KEY_PLOTS`` (the PNG
    embedded in ``page``, byte for byte): the plots a report asset shows in its metadata."""
    images = embedded_images(page)
    missing = [n for n in KEY_PLOTS if n not in images]
    if missing:
        raise ValueError(f"tear sheet without the key plots {missing}")
    return {f"plot_{name}": markdown_image(images[name], name) for name in KEY_PLOTS}
