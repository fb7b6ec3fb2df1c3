"""Self-contained HTML tear sheet of the validation report: matplotlib charts as base64 PNGs
inside one HTML file (an MLflow artifact opens it with no other files). Pure: frames and
arrays in, a string out; no Dagster, no MLflow.

Determinism: figures are drawn on the Agg canvas directly (no pyplot, no global backend
state), under a fixed rc context, and saved without the PNG "Software" text chunk (the only
metadata Agg writes besides the image), so the same inputs give byte-identical HTML.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass

import matplotlib
import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from quant_assets.validation.gate import GateResult
from quant_assets.validation.regimes import FactorExposures
from quant_assets.validation.report import _ROWS, format_metric

ROLLING_WINDOW = 63
DPI = 80
_RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs everywhere
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "path.simplify": False,
}
PNG_METADATA = {"Software": None}


@dataclass(frozen=True)
class TearSheetInputs:
    daily: pl.DataFrame  # date, return (strategy net), benchmark (equal-weight universe)
    metrics: dict[str, float]
    monthly_ic: pl.DataFrame  # month (Date), rank_ic (mean daily rank IC)
    bootstrap_max_drawdown: np.ndarray
    regimes: pl.DataFrame  # regimes.regime_performance
    stress: pl.DataFrame  # regimes.stress_table (real data)
    stress_source: str
    factors: FactorExposures | None = None
    gate: GateResult | None = None
    title: str = "Validation report"


# --------------------------------------------------------------------------------------------
# Series helpers (pure numpy/polars)
# --------------------------------------------------------------------------------------------


def wealth(returns: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 + np.nan_to_num(np.asarray(returns, dtype=float)))


def drawdown(returns: np.ndarray) -> np.ndarray:
    """Underwater curve: wealth / running peak - 1, the peak starting at 1 (as max_drawdown)."""
    w = wealth(returns)
    return w / np.maximum.accumulate(np.maximum(w, 1.0)) - 1.0


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


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no backend switching
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA)
    return buf.getvalue()


def _figure(width: float = 8.0, height: float = 3.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _equity(daily: pl.DataFrame) -> Figure:
    fig, ax = _figure()
    dates = daily["date"].to_numpy()
    ax.plot(dates, wealth(daily["return"].to_numpy()), label="strategy (net)", color="C0")
    ax.plot(dates, wealth(daily["benchmark"].to_numpy()), label="equal-weight universe", color="C7")
    ax.set_title("Equity vs benchmark (growth of 1)")
    ax.legend(loc="upper left")
    return fig


def _underwater(daily: pl.DataFrame) -> Figure:
    fig, ax = _figure(height=2.4)
    dd = drawdown(daily["return"].to_numpy())
    ax.fill_between(daily["date"].to_numpy(), dd, 0.0, color="C3", alpha=0.5)
    ax.set_title("Underwater (drawdown from peak)")
    return fig


def _rolling(daily: pl.DataFrame) -> Figure:
    fig, ax = _figure(height=2.4)
    rs = rolling_sharpe(daily["return"].to_numpy())
    if np.isfinite(rs).any():
        ax.plot(daily["date"].to_numpy(), rs, color="C0")
        ax.axhline(0.0, color="black", lw=0.8)
    else:
        _no_data(ax, f"fewer than {ROLLING_WINDOW} days")
    ax.set_title(f"Rolling {ROLLING_WINDOW}-day Sharpe (annualised)")
    return fig


def _heatmap(daily: pl.DataFrame) -> Figure:
    m = monthly_returns(daily)
    years = sorted(set(m["year"].to_list()))
    grid = np.full((len(years), 12), np.nan)
    for y, mo, r in m.iter_rows():
        grid[years.index(y), mo - 1] = r
    fig, ax = _figure(height=0.6 + 0.45 * max(len(years), 1))
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    ax.imshow(grid, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(12), ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"])
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    for i in range(len(years)):
        for j in range(12):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1%}", ha="center", va="center", fontsize=7)
    ax.set_title("Monthly returns")
    return fig


def _ic(ic: pl.DataFrame) -> Figure:
    fig, ax = _figure(height=2.4)
    if ic.height:
        labels = [d.strftime("%Y-%m") for d in ic["month"].to_list()]
        vals = ic["rank_ic"].to_numpy()
        ax.bar(range(len(vals)), vals, color=["C2" if v >= 0 else "C3" for v in vals])
        ax.set_xticks(range(len(vals)), labels, rotation=90 if len(vals) > 12 else 0)
        ax.axhline(0.0, color="black", lw=0.8)
    else:
        _no_data(ax, "no scored days")
    ax.set_title("Mean daily rank IC by month")
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
    fig, ax = _figure(height=2.6)
    labels = [f"{r}\n{b}" for r, b in regimes.select("regime", "bucket").iter_rows()]
    vals = np.nan_to_num(regimes["sharpe"].to_numpy().astype(float))
    colors = {"volatility": "C0", "direction": "C1", "dispersion": "C4"}
    ax.bar(range(len(vals)), vals, color=[colors[r] for r in regimes["regime"].to_list()])
    ax.set_xticks(range(len(vals)), labels)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_title("Sharpe (annualised) by market regime")
    return fig


def _stress_bars(stress: pl.DataFrame) -> Figure:
    fig, ax = _figure(height=2.8)
    windows = list(dict.fromkeys(stress["window"].to_list()))
    series = list(dict.fromkeys(stress["series"].to_list()))
    width = 0.8 / max(len(series), 1)
    for k, name in enumerate(series):
        sub = stress.filter(pl.col("series") == name)
        vals = [sub.filter(pl.col("window") == w)["max_drawdown"].item() for w in windows]
        ax.bar(np.arange(len(windows)) + k * width, np.nan_to_num(np.array(vals, dtype=float)), width, label=name)
    ax.set_xticks(np.arange(len(windows)) + 0.4 - width / 2, [w.replace(" ", "\n", 1) for w in windows])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # outside: bars fill the axes
    ax.set_title("Max drawdown in stress windows")
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
    return html.escape(str(value))


def _table(frame: pl.DataFrame, kinds: dict[str, str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v, kinds.get(c, 'str'))}</td>" for c, v in zip(frame.columns, row, strict=True)) + "</tr>"
        for row in frame.iter_rows()
    )
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def metrics_table(metrics: dict[str, float]) -> str:
    """The headline table; each value is ``report.format_metric`` of the metric."""
    rows = "".join(
        f'<tr><td>{html.escape(label)}</td><td data-metric="{key}">'
        f"{html.escape(format_metric(key, metrics.get(key, math.nan)))}</td></tr>"
        for label, key, _ in _ROWS
    )
    return f'<table id="metrics"><tr><th>statistic</th><th>value</th></tr>{rows}</table>'


_CSS = (
    "body{font-family:sans-serif;max-width:980px;margin:auto;padding:1em}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
    "text-align:right}figure{margin:0.5em 0}img{max-width:100%}"
    ".pass{color:#1a7f37}.fail{color:#c0392b}"
)


def render_tearsheet(inputs: TearSheetInputs) -> str:
    """The whole tear sheet as one HTML string (images embedded)."""
    threshold = None
    if inputs.gate is not None:
        threshold = next(
            (c.threshold for c in inputs.gate.criteria if c.name == "bootstrap_max_drawdown"), None
        )
    with matplotlib.rc_context(_RC):
        figures = [
            ("equity", _equity(inputs.daily)),
            ("underwater", _underwater(inputs.daily)),
            ("rolling_sharpe", _rolling(inputs.daily)),
            ("monthly_returns", _heatmap(inputs.daily)),
            ("ic_by_month", _ic(inputs.monthly_ic)),
            ("bootstrap_max_drawdown", _bootstrap(inputs.bootstrap_max_drawdown, inputs.metrics, threshold)),
            ("regimes", _regime_bars(inputs.regimes)),
            ("stress", _stress_bars(inputs.stress)),
        ]
        images = {name: _png(fig) for name, fig in figures}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(inputs.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(inputs.title)}</h1>",
    ]
    if inputs.gate is not None:
        cls = "pass" if inputs.gate.passed else "fail"
        lines = "".join(f"<li>{html.escape(c.line())}</li>" for c in inputs.gate.criteria)
        parts.append(f'<h2 class="{cls}">{html.escape(inputs.gate.message().splitlines()[0])}</h2><ul id="gate">{lines}</ul>')
    parts += ["<h2>Headline statistics</h2>", metrics_table(inputs.metrics)]
    parts += ["<h2>Performance</h2>"] + [_img(n, images[n]) for n in ("equity", "underwater", "rolling_sharpe", "monthly_returns")]
    parts += ["<h2>Signal</h2>", _img("ic_by_month", images["ic_by_month"])]
    parts += ["<h2>Robustness</h2>", _img("bootstrap_max_drawdown", images["bootstrap_max_drawdown"])]
    parts += ["<h2>Market regimes</h2>", _img("regimes", images["regimes"]),
              _table(inputs.regimes, {"annual_return": "pct", "sharpe": "num", "hit_rate": "pct"}, "regimes")]
    parts += [
        "<h2>Stress windows (real data)</h2>",
        f"<p>Source: {html.escape(inputs.stress_source)}. The strategy's own returns appear only "
        "where its backtest overlaps a window.</p>",
        _img("stress", images["stress"]),
        _table(inputs.stress, {"total_return": "pct", "max_drawdown": "pct", "annual_volatility": "pct", "sharpe": "num"}, "stress"),
    ]
    if inputs.factors is not None:
        parts += [
            f"<h2>Factor exposures</h2><p>OLS on {inputs.factors.n_obs} days, R&sup2; "
            f"{_fmt(inputs.factors.r_squared, 'num')}; alpha per day.</p>",
            _table(inputs.factors.table, {"beta": "num4", "std_error": "num4", "t_stat": "num"}, "factors"),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


_IMG_RE = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"/>')


def embedded_images(page: str) -> dict[str, bytes]:
    """name -> PNG bytes of every image embedded in a tear sheet."""
    return {name: base64.b64decode(data) for name, data in _IMG_RE.findall(page)}
