"""A strategy parameter grid evaluated month by month on total-return closes (the pure core
of the ``strategy_grid`` asset; polars in, polars out, no Dagster).

Each month, each instrument and each parameter set of each family (``zmr_grid``,
``breakout_grid``) is one trial, evaluated as a strategy that starts flat on the month's
first trading day:

* Warm-up. A family's statistic at bar t needs the previous ``L`` closes (z-score: L - 1
  before t; Donchian channel: L, bar t excluded). So the instrument's last ``max L`` bars
  before the month are read along with the month's bars and passed as warm-up (``start``
  of the grid functions): they only warm the statistic, positions stay flat through the
  last warm-up bar, and the statistics cover the returns of the month's bars only. The
  month's first return is therefore 0 (or the entry cost). With fewer than ``max L``
  earlier bars (a young listing, the start of the data) the warm-up is what exists, and
  sets whose lookback is not yet full simply do not trade until it is.
* Each instrument runs on its own bars (an instrument without a bar on some day is not
  padded): a listing or delisting inside the window shortens its series, never breaks it.
* ``month_returns`` gives the per-day returns of every trial averaged with equal weight over
  the instruments that have a bar that day, as a (days x trials) matrix: the input of
  ``validation.stats.pbo_cscv`` (and of trial Sharpe dispersion for the DSR).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from quant_assets.backtest.grid import breakout_grid, param_product, zmr_grid

FAMILIES = {"zmr": zmr_grid, "breakout": breakout_grid}
RESULT_COLUMNS = ("total_return", "sharpe", "max_drawdown", "n_trades")
TRIAL_PREFIX = "grid:"  # names a parameter set's trial in the validation report


@dataclass(frozen=True)
class GridSpec:
    """Parameter axes per family (their Cartesian product is the family's trials)."""

    families: tuple[str, ...] = ("zmr", "breakout")
    lookbacks: tuple[int, ...] = (10, 20, 40)
    zmr_entry: tuple[float, ...] = (1.0, 1.5, 2.0)
    zmr_exit: tuple[float, ...] = (0.0, 0.5)
    zmr_stop: tuple[float, ...] = (3.0, 4.0)
    breakout_entry: tuple[float, ...] = (0.8, 1.0)
    breakout_exit: tuple[float, ...] = (0.0, 1.0)
    breakout_stop: tuple[float, ...] = (0.05, 0.1)
    cost_bps: float = 5.0
    # daily bars here (the kernels' default is 1-minute bars)
    bars_per_year: float = 252.0
    _params: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {sorted(FAMILIES)}, got {list(self.families)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families repeat: {list(self.families)}")
        for family in self.families:
            self._params[family] = param_product(
                lookback=np.asarray(self.lookbacks, dtype=np.int64),
                entry=getattr(self, f"{family}_entry"),
                exit=getattr(self, f"{family}_exit"),
                stop=getattr(self, f"{family}_stop"),
            )

    def params(self, family: str) -> dict[str, np.ndarray]:
        return self._params[family]

    @property
    def warmup(self) -> int:
        """Bars before the month that every set's statistic needs (max lookback)."""
        return int(max(self.lookbacks))

    @property
    def n_trials(self) -> int:
        """Parameter sets over all families (per instrument and month)."""
        return sum(self.params(f)["lookback"].shape[0] for f in self.families)

    def trial_table(self) -> pl.DataFrame:
        """family, param_id, lookback, entry, exit, stop: one row per trial, in matrix order."""
        parts = []
        for family in self.families:
            g = self.params(family)
            parts.append(pl.DataFrame({
                "family": [family] * g["lookback"].shape[0],
                "param_id": np.arange(g["lookback"].shape[0], dtype=np.int64),
                "lookback": g["lookback"].astype(np.int64),
                "entry": g["entry"].astype(np.float64),
                "exit": g["exit"].astype(np.float64),
                "stop": g["stop"].astype(np.float64),
            }))
        return pl.concat(parts)


def _windows(prices: pl.DataFrame, month: dt.date, end: dt.date, warmup: int, instruments):
    """Per instrument (sorted): its dates and closes, the warm-up bars before the month
    (at most ``warmup``) followed by the month's bars; instruments without a month bar or
    without a return to evaluate are left out."""
    frame = prices.filter(pl.col("date") < end, pl.col("instrument_id").is_in(list(instruments)))
    frame = frame.filter(pl.col("tr_close").is_not_null()).sort("instrument_id", "date")
    out = []
    for (name,), rows in frame.group_by("instrument_id", maintain_order=True):
        before = rows.filter(pl.col("date") < month).tail(warmup)
        inside = rows.filter(pl.col("date") >= month)
        if inside.is_empty():
            continue
        window = pl.concat([before, inside])
        start = max(1, before.height)
        if window.height - start < 1:
            continue  # a single bar and no history: no return to evaluate
        out.append((name, window["date"], window["tr_close"].to_numpy(), start))
    return out


def evaluate_month(
    prices: pl.DataFrame,
    month: dt.date,
    end: dt.date,
    spec: GridSpec,
    instruments,
    *,
    with_returns: bool = False,
):
    """Rows (date = month start, instrument_id, family, param_id, lookback, entry, exit,
    stop, total_return, sharpe, max_drawdown, n_trades, n_returns) of every trial of the
    month, and with ``with_returns`` also the (days x trials) equal-weight return matrix and
    its dates (module docstring). ``prices``: date, instrument_id, tr_close."""
    trials = spec.trial_table()
    windows = _windows(prices, month, end, spec.warmup, instruments)
    if not windows:
        raise ValueError(f"strategy_grid {month:%Y-%m}: no instrument has bars in the month")
    days = sorted({d for _, dates, _, _ in windows for d in dates.to_list() if d >= month})
    day_index = {d: i for i, d in enumerate(days)}
    sums = np.zeros((len(days), spec.n_trials)) if with_returns else None
    counts = np.zeros(len(days)) if with_returns else None
    parts = []
    for name, dates, close, start in windows:
        results = []
        rows_of_days = None
        if with_returns:
            rows_of_days = np.array([day_index[d] for d in dates.to_list()[start - 1 :] if d >= month])
        offset = 0
        for family in spec.families:
            g = spec.params(family)
            out = FAMILIES[family](
                close, **g, cost_bps=spec.cost_bps, bars_per_year=spec.bars_per_year,
                start=start, return_series=with_returns,
            )
            if with_returns:
                out, series = out
                month_series = series[:, close.shape[0] - rows_of_days.shape[0]:]
                sums[rows_of_days, offset : offset + series.shape[0]] += month_series.T
                offset += series.shape[0]
            results.append(out)
        if with_returns:
            counts[rows_of_days] += 1.0
        parts.append(
            trials.with_columns(
                date=pl.lit(month, dtype=pl.Date),
                instrument_id=pl.lit(name, dtype=pl.String),
                n_returns=pl.lit(close.shape[0] - start, dtype=pl.Int64),
                **{
                    col: pl.Series(np.concatenate([getattr(r, col) for r in results]))
                    for col in RESULT_COLUMNS
                },
            )
        )
    frame = pl.concat(parts).select(
        "date", "instrument_id", "family", "param_id", "lookback", "entry", "exit", "stop",
        *RESULT_COLUMNS, "n_returns",
    )
    if not with_returns:
        return frame
    return frame, sums / counts[:, None], days


def trial_names(spec: GridSpec) -> list[str]:
    """One name per parameter set, in the matrix order of ``evaluate_month``: the family and
    its parameters (stable across months, so a trial's returns line up month after month)."""
    return [
        f"{TRIAL_PREFIX}{r['family']}-L{r['lookback']}-e{r['entry']:g}-x{r['exit']:g}-s{r['stop']:g}"
        for r in spec.trial_table().iter_rows(named=True)
    ]
