"""Portfolio backtest: a thin, validating API over the numba kernel in ``nb.py``.

Conventions
-----------
Arrays are T x N: rows are trading days in order, columns are instruments.

* ``prices``: total-return-adjusted closes, float64, NaN where an instrument has no price.
  Finite prices must be > 0.
* ``target_weights``: the weights decided at close t, as fractions of the equity at close t
  (signed; negative is short; cash, ``1 - sum(w)``, earns zero). Read only where tradable;
  they must be finite there and may be anything (NaN) elsewhere.
* ``tradable``: bool, True where the instrument is listed and has a price at t. True with a
  NaN price is an error.
* ``volume`` (optional): shares traded at t, on the same adjustment basis as ``prices`` so
  that ``price * volume`` is the day's traded value in currency. Only needed (and then
  required, finite and > 0 where tradable) when ``CostModel.impact_coef > 0``. With dollar
  volume at hand, pass ``volume = dollar_volume / price``.

Timing of day t (row t), starting from the state after close t-1:

1. Returns. The holdings of close t-1 earn over (t-1, t]:
   ``ret_i = p_i,t / p_i,last - 1`` and ``gross_return_t = sum_i w_i * ret_i`` with ``w`` the
   post-trade weights of close t-1 and ``p_i,last`` the last observed price of name i.
   Weights drift: ``w_i <- w_i * (1 + ret_i) / (1 + gross_return_t)``.
2. Rebalance at close t. Each name's target is
   - ``target_weights[t, i]`` if tradable at t;
   - 0 if it is held but has no price at t: a delisting (or any missing price while held).
     Its return over the missing day is 0 and it is sold at its last price, paying the
     usual commission and spread (no impact term: there is no volume);
   - its drifted weight otherwise (untradable: the target is ignored, the position kept).
   ``trade_i = |target_i - w_i|`` and ``turnover_t = sum_i trade_i`` (one-way).
3. Costs, as a fraction of the equity just before the trade, ``E_t- = E_t-1 * (1 + gross)``:
   ``c_t = turnover_t * (commission_bps + half_spread_bps) / 1e4
   + impact_coef * sum_i trade_i * sqrt(trade_i * E_t- / (p_i,t * volume_i,t))``
   (the square-root term over tradable names only, when ``impact_coef > 0``).
   Costs are paid from cash at close t; the post-trade weights are the targets, read as
   fractions of the post-cost equity.
4. Borrow (``borrow_bps``, annual basis points per name): the shorts held over (t-1, t]
   pay ``borrow_t = sum_{i: w_i < 0} -w_i * borrow_bps_i,t / 1e4 / 252`` (``w`` the
   post-trade weights of close t-1: the short notional at close t-1, one trading day of
   an annual rate; 252 trading days a year), paid from cash at close t.
5. Turnover limit (``max_turnover``): if the trade of step 2 would exceed it, every
   tradable name moves the same fraction ``k`` of the way from its drifted weight ``w`` to
   its target, ``w + k * (target - w)``, with ``k`` the largest value in [0, 1] that keeps
   ``turnover_t <= max_turnover``. Forced closes (delistings) are made in full and count
   towards the limit (when they alone exceed it, only they trade).
6. Reported per row, all as fractions of the equity at close t-1:
   ``gross_return_t``, ``cost_t = c_t * (1 + gross_return_t)``, ``borrow_cost_t``,
   ``net_return_t = gross_return_t - cost_t - borrow_cost_t``;
   ``equity_t = equity_t-1 * (1 + net_return_t)``.
   ``turnover_t``, ``gross_exposure_t = sum |w|`` and ``net_exposure_t = sum w`` describe the
   post-trade weights of close t (the book held over (t, t+1]), which ``positions=True``
   records as a (T, N) array.
   Per-instrument ``contributions[t, i] = w_i * ret_i - borrow_i - cost_i * (1 + gross_return_t)``
   (net, same base), which sum to ``net_return_t`` up to rounding.

A fresh run starts all in cash (zero weights, no last prices), so row 0 has no return and
pays the cost of building the first book. Equity must stay > 0 (``1 + gross > 0`` and
``1 + net > 0``); otherwise a ValueError names the row.

Restartability: :class:`PortfolioState` carries post-trade weights, equity and last prices
at a close. Running rows ``[a, b)`` from the ``end_state`` of rows ``[0, a)`` gives results
bit-identical to the same rows of one run over ``[0, b)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from quant_assets.backtest import nb

__all__ = [
    "BacktestResult",
    "CostModel",
    "PortfolioState",
    "backtest_frame",
    "run_backtest",
    "to_matrix",
]

# Trading days per year: an annual borrow rate is charged 1/252 of it per row.
TRADING_DAYS_PER_YEAR = 252

_RESULT_SERIES = (
    "gross_return",
    "cost",
    "borrow_cost",
    "net_return",
    "turnover",
    "gross_exposure",
    "net_exposure",
    "equity",
)


@dataclass(frozen=True)
class CostModel:
    """Trading costs. Basis points apply to traded fractions of equity (one-way).

    ``impact_coef`` scales the square-root impact term: a trade of fraction ``x`` of equity
    ``E`` in a name with traded value ``p * v`` costs ``impact_coef * x * sqrt(x * E / (p * v))``
    of equity (so ``impact_coef`` plays the role of daily volatility times a constant).
    """

    commission_bps: float = 0.0
    half_spread_bps: float = 0.0
    impact_coef: float = 0.0

    def __post_init__(self) -> None:
        for name in ("commission_bps", "half_spread_bps", "impact_coef"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and np.isfinite(value) and value >= 0):
                raise ValueError(f"CostModel.{name} must be a finite number >= 0, got {value!r}")

    @property
    def rate(self) -> float:
        """Linear cost per unit of turnover (commission plus half spread), as a fraction."""
        return (float(self.commission_bps) + float(self.half_spread_bps)) / 1e4


@dataclass(frozen=True, eq=False)
class PortfolioState:
    """The book after the trade at a close: what a continuation run needs.

    ``weights`` (N,) are post-trade fractions of ``equity``; ``last_prices`` (N,) the last
    observed price of each name (NaN if none yet), needed for the next day's return.
    Arrays are copied and made read-only.
    """

    weights: np.ndarray
    equity: float
    last_prices: np.ndarray

    def __post_init__(self) -> None:
        weights = np.array(self.weights, dtype=np.float64)
        last_prices = np.array(self.last_prices, dtype=np.float64)
        if weights.ndim != 1 or last_prices.shape != weights.shape:
            raise ValueError(
                "PortfolioState.weights and last_prices must be 1-D of the same length, got "
                f"{weights.shape} and {last_prices.shape}"
            )
        if not np.all(np.isfinite(weights)):
            raise ValueError("PortfolioState.weights must be finite")
        equity = float(self.equity)
        if not (np.isfinite(equity) and equity > 0):
            raise ValueError(f"PortfolioState.equity must be finite and > 0, got {equity!r}")
        held = weights != 0.0
        bad = held & ~(np.isfinite(last_prices) & (last_prices > 0))
        if bad.any():
            raise ValueError(
                "PortfolioState: held names need a finite last price > 0; missing for columns "
                f"{np.flatnonzero(bad)[:10].tolist()}"
            )
        weights.flags.writeable = False
        last_prices.flags.writeable = False
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "equity", equity)
        object.__setattr__(self, "last_prices", last_prices)

    @classmethod
    def cash(cls, n_instruments: int, equity: float = 1.0) -> PortfolioState:
        """All in cash: zero weights, no last prices."""
        return cls(np.zeros(n_instruments), equity, np.full(n_instruments, np.nan))

    @property
    def n_instruments(self) -> int:
        return int(self.weights.shape[0])


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """Per-row series (T,) as documented in the module docstring, plus the end state.

    ``contributions`` and ``positions`` (T, N) are present only when asked for.
    """

    gross_return: np.ndarray
    cost: np.ndarray
    borrow_cost: np.ndarray
    net_return: np.ndarray
    turnover: np.ndarray
    gross_exposure: np.ndarray
    net_exposure: np.ndarray
    equity: np.ndarray
    end_state: PortfolioState
    contributions: np.ndarray | None = None
    positions: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.equity.shape[0])


def kernel_input(values: Any, dtype: Any = None) -> np.ndarray:
    """A C-contiguous, read-only view of an array that the kernels only read (a copy only
    when the layout or dtype must change).

    numba types read-only and writable arrays apart, so a kernel that is handed both (a
    buffer of polars, Arrow or ``np.broadcast_to`` is read-only, a computed array is not)
    compiles its whole body again in the same process: 4-8 s for each grid kernel on a cold
    cache. Every array a caller hands to a kernel (prices, weights, masks, volumes, borrow
    rates, state) and every placeholder standing in for one goes through here; arrays the
    API builds itself (parameter lanes, outputs) are always writable."""
    view = np.ascontiguousarray(values, dtype=dtype).view()
    view.flags.writeable = False
    return view


def _as_matrix(name: str, values: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (days x instruments) array, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape} (the shape of prices)")
    return array


def _first_cells(mask: np.ndarray, limit: int = 5) -> list[tuple[int, int]]:
    rows, cols = np.nonzero(mask)
    return [(int(r), int(c)) for r, c in zip(rows[:limit], cols[:limit], strict=True)]


def run_backtest(
    prices: np.ndarray,
    target_weights: np.ndarray,
    tradable: np.ndarray,
    costs: CostModel,
    volume: np.ndarray | None = None,
    initial_state: PortfolioState | None = None,
    *,
    initial_equity: float | None = None,
    contributions: bool = False,
    borrow_bps: Any = None,
    max_turnover: float | None = None,
    positions: bool = False,
) -> BacktestResult:
    """Backtest target weights rebalanced at each close (conventions: module docstring).

    ``initial_state`` continues from a previous run's ``end_state``; without it the run
    starts in cash with ``initial_equity`` (default 1.0). Set ``contributions=True`` for the
    (T, N) per-instrument net contributions and ``positions=True`` for the post-trade
    weights. ``borrow_bps``: annual borrow cost of short positions in basis points, one
    number, one per instrument (N,) or per day and instrument (T, N); finite and >= 0.
    ``max_turnover``: the most one-way turnover (a fraction of equity) a day may trade.
    """
    if not isinstance(costs, CostModel):
        raise TypeError(f"costs must be a CostModel, got {type(costs).__name__}")
    price_matrix = _as_matrix("prices", prices, None)
    if not np.issubdtype(price_matrix.dtype, np.number):
        raise TypeError(f"prices must be numeric, got dtype {price_matrix.dtype}")
    price_matrix = kernel_input(price_matrix, np.float64)
    shape = price_matrix.shape
    n_instruments = shape[1]

    weight_matrix = _as_matrix("target_weights", target_weights, shape)
    if not np.issubdtype(weight_matrix.dtype, np.number):
        raise TypeError(f"target_weights must be numeric, got dtype {weight_matrix.dtype}")
    weight_matrix = kernel_input(weight_matrix, np.float64)

    tradable_matrix = _as_matrix("tradable", tradable, shape)
    if tradable_matrix.dtype != np.bool_:
        raise TypeError(f"tradable must be a boolean array, got dtype {tradable_matrix.dtype}")
    tradable_matrix = kernel_input(tradable_matrix)

    has_price = np.isfinite(price_matrix)
    if np.isinf(price_matrix).any():
        raise ValueError(f"prices contain +-inf at (row, column) {_first_cells(np.isinf(price_matrix))}")
    nonpositive = has_price & ~(price_matrix > 0)
    if nonpositive.any():
        raise ValueError(f"prices must be > 0; not so at (row, column) {_first_cells(nonpositive)}")
    unpriced = tradable_matrix & ~has_price
    if unpriced.any():
        raise ValueError(
            f"tradable is True where the price is NaN at (row, column) {_first_cells(unpriced)}"
        )
    bad_weight = tradable_matrix & ~np.isfinite(weight_matrix)
    if bad_weight.any():
        raise ValueError(
            "target_weights must be finite on tradable names; NaN/inf at (row, column) "
            f"{_first_cells(bad_weight)}"
        )

    if costs.impact_coef > 0:
        if volume is None:
            raise ValueError("CostModel.impact_coef > 0 needs volume (shares, T x N)")
        volume_matrix = _as_matrix("volume", volume, shape)
        if not np.issubdtype(volume_matrix.dtype, np.number):
            raise TypeError(f"volume must be numeric, got dtype {volume_matrix.dtype}")
        volume_matrix = kernel_input(volume_matrix, np.float64)
        bad_volume = tradable_matrix & ~(np.isfinite(volume_matrix) & (volume_matrix > 0))
        if bad_volume.any():
            raise ValueError(
                "volume must be finite and > 0 on tradable names (impact cost); not so at "
                f"(row, column) {_first_cells(bad_volume)}"
            )
    else:
        if volume is not None:
            _as_matrix("volume", volume, shape)
        # Unused by the kernel without impact; an empty matrix keeps its signature stable.
        volume_matrix = kernel_input(np.zeros((0, 0)))

    borrow_matrix = _borrow_rates(borrow_bps, shape)
    if max_turnover is None:
        turnover_limit = math.inf
    else:
        if not (isinstance(max_turnover, numbers.Real) and np.isfinite(max_turnover)
                and max_turnover > 0):
            raise ValueError(f"max_turnover must be a finite number > 0, got {max_turnover!r}")
        turnover_limit = float(max_turnover)

    if initial_state is None:
        equity0 = 1.0 if initial_equity is None else initial_equity
        state = PortfolioState.cash(n_instruments, equity0)
    else:
        if initial_equity is not None:
            raise ValueError("give either initial_state or initial_equity, not both")
        if not isinstance(initial_state, PortfolioState):
            raise TypeError(
                f"initial_state must be a PortfolioState, got {type(initial_state).__name__}"
            )
        if initial_state.n_instruments != n_instruments:
            raise ValueError(
                f"initial_state has {initial_state.n_instruments} instruments, prices have "
                f"{n_instruments}"
            )
        state = initial_state

    (
        gross_return,
        cost,
        borrow_cost,
        net_return,
        turnover,
        gross_exposure,
        net_exposure,
        equity,
        contribution_matrix,
        position_matrix,
        end_weights,
        end_last_prices,
        end_equity,
        failed_row,
    ) = nb.simulate_nb(
        price_matrix,
        weight_matrix,
        tradable_matrix,
        volume_matrix,
        costs.rate,
        float(costs.impact_coef),
        turnover_limit,
        borrow_matrix,
        kernel_input(state.weights),
        kernel_input(state.last_prices),
        float(state.equity),
        bool(contributions),
        bool(positions),
    )
    if failed_row >= 0:
        raise ValueError(
            f"portfolio equity is wiped out at row {failed_row} (1 + return <= 0); "
            "check leverage, prices and costs"
        )
    return BacktestResult(
        gross_return=gross_return,
        cost=cost,
        borrow_cost=borrow_cost,
        net_return=net_return,
        turnover=turnover,
        gross_exposure=gross_exposure,
        net_exposure=net_exposure,
        equity=equity,
        end_state=PortfolioState(end_weights, float(end_equity), end_last_prices),
        contributions=contribution_matrix if contributions else None,
        positions=position_matrix if positions else None,
    )


def _borrow_rates(borrow_bps: Any, shape: tuple[int, int]) -> np.ndarray:
    """Daily borrow rates (T, N) from annual basis points; (0, 0) when nothing is charged
    (the kernel then skips the borrow step)."""
    if borrow_bps is None:
        return kernel_input(np.zeros((0, 0)))
    bps = np.asarray(borrow_bps)
    if not np.issubdtype(bps.dtype, np.number):
        raise TypeError(f"borrow_bps must be numeric, got dtype {bps.dtype}")
    if bps.shape not in ((), shape[1:], shape):
        raise ValueError(
            f"borrow_bps has shape {bps.shape}, expected a number, {shape[1:]} or {shape}"
        )
    bps = bps.astype(np.float64)
    bad = ~(np.isfinite(bps) & (bps >= 0))
    if bad.any():
        raise ValueError(
            f"borrow_bps must be finite and >= 0; not so at {np.argwhere(bad)[:5].tolist()}"
        )
    if not (bps > 0).any():
        return kernel_input(np.zeros((0, 0)))
    daily = bps / 1e4 / TRADING_DAYS_PER_YEAR
    return kernel_input(np.broadcast_to(daily, shape))


def _date_series(dates: Any, name: str = "date") -> pl.Series:
    series = pl.Series(name, dates)
    if series.dtype != pl.Date:
        try:
            series = series.cast(pl.Date)
        except Exception as error:  # polars raises several error types for bad casts
            raise TypeError(f"dates must be convertible to pl.Date, got {series.dtype}") from error
    if series.null_count():
        raise ValueError("dates contain nulls")
    return series


def to_matrix(
    frame: pl.DataFrame,
    value: str,
    dates: Sequence[Any] | pl.Series | np.ndarray,
    instruments: Sequence[str] | pl.Series | np.ndarray,
    *,
    date_column: str = "date",
    instrument_column: str = "instrument_id",
) -> np.ndarray:
    """Pivot a long frame to a (len(dates), len(instruments)) float64 matrix.

    Rows follow ``dates`` and columns ``instruments`` exactly as given; cells without a row
    (or with a null) are NaN; frame rows outside ``dates`` x ``instruments`` are ignored.
    Booleans become 1.0/0.0. Duplicate (date, instrument) rows are an error.
    """
    for column in (date_column, instrument_column, value):
        if column not in frame.columns:
            raise ValueError(f"frame has no column {column!r} (columns: {frame.columns})")
    date_series = _date_series(dates)
    instrument_series = pl.Series(instrument_column, instruments, dtype=pl.String)
    if date_series.n_unique() != date_series.len():
        raise ValueError("dates contain duplicates")
    if instrument_series.n_unique() != instrument_series.len():
        raise ValueError("instruments contain duplicates")
    dtype = frame.schema[value]
    if not (dtype.is_numeric() or dtype == pl.Boolean):
        raise TypeError(f"column {value!r} must be numeric or boolean, got {dtype}")

    row_index = pl.DataFrame({date_column: date_series}).with_row_index("_row")
    column_index = pl.DataFrame({instrument_column: instrument_series}).with_row_index("_col")
    cells = (
        frame.select(
            pl.col(date_column).cast(pl.Date),
            pl.col(instrument_column).cast(pl.String),
            pl.col(value).cast(pl.Float64),
        )
        .join(row_index, on=date_column, how="inner")
        .join(column_index, on=instrument_column, how="inner")
    )
    if cells.select(pl.struct("_row", "_col").is_duplicated().any()).item():
        raise ValueError(f"frame has duplicate ({date_column}, {instrument_column}) rows")
    matrix = np.full((date_series.len(), instrument_series.len()), np.nan)
    matrix[cells["_row"].to_numpy(), cells["_col"].to_numpy()] = cells[value].to_numpy()
    return matrix


def backtest_frame(
    result: BacktestResult, dates: Sequence[Any] | pl.Series | np.ndarray
) -> pl.DataFrame:
    """The per-row series of ``result`` as a frame with a ``date`` (pl.Date) column."""
    date_series = _date_series(dates)
    if date_series.len() != len(result):
        raise ValueError(f"{date_series.len()} dates for a result of {len(result)} rows")
    return pl.DataFrame(
        [date_series]
        + [pl.Series(name, getattr(result, name), dtype=pl.Float64) for name in _RESULT_SERIES]
    )
