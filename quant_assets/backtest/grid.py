"""Parameter-grid backtests: one pass over the bars evaluates many parameter sets.

Single-instrument strategies whose parameter sets share a lookback also share its rolling
statistic: parameter sets are grouped by lookback, the statistic is computed once per bar
and group, and each parameter set only advances its own small state (numba kernels in
:mod:`quant_assets.backtest.grid_nb`). Nothing of size bars x parameters is materialised.

Conventions shared by both families
-----------------------------------
``close`` is float64 (T,) or (N, T) (N instruments, T bars in order), finite and > 0, with
T >= 2. Parameter arrays are 1-D of one length P: index k is one parameter set. Outputs
(:class:`GridResult`) have shape (P,) for a 1-D ``close`` and (N, P) otherwise.

* Position ``p_t`` in {-1, 0, +1} is decided at the close of bar t; at most one change per
  bar, never directly long -> short. Bar 0 is flat. Where both entries would fire (possible
  with unordered thresholds) the long entry wins.
* Return for t >= 1: ``r_t = p_{t-1} * (close_t / close_{t-1} - 1) - cost * |p_t - p_{t-1}|``
  with ``cost = cost_bps / 1e4``; equity ``E_t = prod_{s<=t} (1 + r_s)``, ``E_0 = 1``. An
  open position is not closed at the end.
* ``total_return = E_last - 1``; ``sharpe = mean(r) / std(r, ddof=0) * sqrt(bars_per_year)``
  over the T - 1 returns (0 when std = 0; computed from one-pass sums, a variance below
  their rounding resolution counts as 0); ``max_drawdown = max_t 1 - E_t / max(1,
  max_{s<=t} E_s)``; ``n_trades`` = number of bars with ``p_{t-1} = 0`` and ``p_t != 0``.

Z-score mean reversion (:func:`zmr_grid`): for t >= L-1,
``z_t = (close_t - mean) / std`` over closes t-L+1..t (ddof=1); before that, or when the
window is constant, no transition happens. flat -> +1 when ``-stop <= z < -entry``; flat ->
-1 when ``entry < z <= stop``; long -> 0 when ``z > -exit`` or ``z < -stop``; short -> 0
when ``z < exit`` or ``z > stop``.

Donchian breakout (:func:`breakout_grid`): for t >= L, ``hi``/``lo`` are the max/min of
the previous L closes (bar t excluded) and ``u_t = (close_t - (hi + lo)/2) / ((hi - lo)/2)``
is the close's place in that channel (+1 at the old high, -1 at the old low; undefined,
no channel signal, when ``hi = lo``). flat -> +1 when ``u > entry``; flat -> -1 when
``u < -entry`` (``entry = 1``: a close beyond the channel); long -> 0 when ``u < -exit``
(``exit = 0``: back through the middle; ``exit = 1``: through the opposite side) or
``close_t <= close_entry * (1 - stop)``; short -> 0 when ``u > exit`` or
``close_t >= close_entry * (1 + stop)``, with ``close_entry`` the close of the entry bar
(``stop`` is a fractional stop-loss). Nothing happens before bar L.

``start`` (keyword, default 1) evaluates from a later bar: the bars before it only warm up
the rolling statistic (positions flat through bar ``start - 1``), and the statistics above
are taken over the ``T - start`` returns of bars ``start..T-1``. ``return_series=True`` also
returns the per-bar returns ``r_t`` (P, T) (equal-weight mean over instruments for a 2-D
``close``); :func:`returns_matrix` turns them into the (bars x trials) matrix of
``validation.stats.pbo_cscv``.

Results do not depend on the number of numba threads (no reductions across threads).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import numba
import numpy as np

from quant_assets.backtest import grid_nb, grid_simd
from quant_assets.backtest.portfolio import CostModel, kernel_input

__all__ = [
    "GridResult",
    "ScenarioResult",
    "breakout_grid",
    "param_product",
    "returns_matrix",
    "scenario_backtest",
    "zmr_grid",
]

# Chunks of a lookback group are cut at multiples of LANES (the kernels pad every chunk to a
# multiple of it), so splitting a group never adds padding lanes. That keeps 1 instrument x
# 5 lookbacks balanced on 2 threads (10 equal tasks instead of 5).
# Aim for this many tasks per thread so that static prange scheduling balances well.
_TASKS_PER_THREAD = 4
# The z-score grid's lanes are cut in multiples of this (the SIMD kernel's 16-lane step).
_SIMD_STEP = 16
# Memory for the z-score grid's per-segment buffers (z-scores of every instrument x lookback
# and returns of every instrument); longer series run in segments of bars.
_BUFFER_BYTES = 32 * 2**20


class GridResult(NamedTuple):
    """Summary statistics per parameter set: (P,) or (N, P) arrays."""

    total_return: np.ndarray
    sharpe: np.ndarray
    max_drawdown: np.ndarray
    n_trades: np.ndarray


class ScenarioResult(NamedTuple):
    """Per-scenario net returns (S, T), final equity (S,) and the wiped-out row (S,), -1 if
    none (net returns from that row on are NaN and the equity is the last one before)."""

    net_return: np.ndarray
    equity: np.ndarray
    failed_row: np.ndarray


def param_product(**axes: Sequence[Any]) -> dict[str, np.ndarray]:
    """Cartesian product of parameter axes as equal-length 1-D arrays (first axis slowest).

    ``param_product(lookback=[20, 40], entry=[1.5, 2.0], ...)`` gives the arrays to pass as
    keyword arguments to :func:`zmr_grid` / :func:`breakout_grid`.
    """
    if not axes:
        raise ValueError("param_product needs at least one axis")
    values = [np.asarray(v) for v in axes.values()]
    for name, v in zip(axes, values, strict=True):
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"axis {name!r} must be a non-empty 1-D sequence")
    mesh = np.meshgrid(*values, indexing="ij")
    return {name: m.ravel() for name, m in zip(axes, mesh, strict=True)}


def _close_matrix(close: Any) -> tuple[np.ndarray, bool]:
    array = np.asarray(close)
    if array.ndim not in (1, 2):
        raise ValueError(f"close must be 1-D (T,) or 2-D (N, T), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)):
        raise TypeError(f"close must be a real numeric array, got dtype {array.dtype}")
    one_d = array.ndim == 1
    # No copy when already float64 and C-contiguous: peak memory stays near the input.
    matrix = kernel_input(array.reshape(1, -1) if one_d else array, np.float64)
    n_instruments, n_bars = matrix.shape
    if n_instruments < 1 or n_bars < 2:
        raise ValueError(f"close needs >= 1 instrument and >= 2 bars, got shape {array.shape}")
    bad = grid_nb.first_bad_close_nb(matrix)
    if bad >= 0:
        i, t = divmod(int(bad), n_bars)
        where = f"bar {t}" if one_d else f"(instrument {i}, bar {t})"
        raise ValueError(f"close must be finite and > 0; got {matrix[i, t]!r} at {where}")
    return matrix, one_d


def _params(lookback: Any, entry: Any, exit: Any, stop: Any) -> tuple[np.ndarray, ...]:
    arrays = {}
    for name, value in (("lookback", lookback), ("entry", entry), ("exit", exit), ("stop", stop)):
        array = np.asarray(value)
        if array.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
        arrays[name] = array
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"parameter arrays must have the same length, got {lengths}")
    if lengths["lookback"] == 0:
        raise ValueError("at least one parameter set is needed (arrays are empty)")
    look = arrays["lookback"]
    if look.dtype == np.bool_ or not np.issubdtype(look.dtype, np.integer):
        raise ValueError(f"lookback must be integers, got dtype {look.dtype}")
    look = look.astype(np.int64)
    if (look < 2).any():
        raise ValueError(f"lookback must be >= 2, got {int(look.min())}")
    out = [look]
    for name in ("entry", "exit", "stop"):
        array = arrays[name]
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite; first bad index {int(np.flatnonzero(~np.isfinite(array))[0])}")
        out.append(array)
    return tuple(out)


def _check_number(name: str, value: Any, positive: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _tasks(sorted_lookback: np.ndarray, n_instruments: int) -> tuple[np.ndarray, ...]:
    """Tasks (lookback, k0, k1) over parameters sorted by lookback.

    Groups are split into chunks only when instruments x groups are too few to keep every
    thread busy. Chunking affects speed only, never results.
    """
    starts = np.flatnonzero(np.r_[True, sorted_lookback[1:] != sorted_lookback[:-1]])
    stops = np.r_[starts[1:], sorted_lookback.shape[0]]
    target = _TASKS_PER_THREAD * numba.get_num_threads()
    splits = max(1, math.ceil(target / (n_instruments * starts.shape[0])))
    lookbacks, k0s, k1s = [], [], []
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        blocks = -(-(b - a) // grid_nb.LANES)
        parts = max(1, min(splits, blocks))
        cuts = np.linspace(0, blocks, parts + 1).round().astype(np.int64) * grid_nb.LANES
        edges = np.minimum(a + cuts, b)
        for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
            lookbacks.append(int(sorted_lookback[a]))
            k0s.append(lo)
            k1s.append(hi)
    return (
        np.array(lookbacks, dtype=np.int64),
        np.array(k0s, dtype=np.int64),
        np.array(k1s, dtype=np.int64),
    )


def _check_start(start: Any, n_bars: int) -> int:
    if isinstance(start, bool) or not isinstance(start, numbers.Integral):
        raise ValueError(f"start must be an integer bar index, got {start!r}")
    if not 1 <= int(start) <= n_bars - 1:
        raise ValueError(f"start must be in [1, {n_bars - 1}] (at least one return), got {start}")
    return int(start)


def _run_grid(
    kernels, close, lookback, entry, exit, stop, cost_bps, bars_per_year, start, return_series
):
    matrix, one_d = _close_matrix(close)
    look, ent, ext, stp = _params(lookback, entry, exit, stop)
    cost = _check_number("cost_bps", cost_bps, positive=False) / 1e4
    ann = math.sqrt(_check_number("bars_per_year", bars_per_year, positive=True))
    first = _check_start(start, matrix.shape[1])
    order = np.argsort(look, kind="stable")
    n, p = matrix.shape[0], look.shape[0]
    out_total = np.empty((n, p))
    out_sharpe = np.empty((n, p))
    out_mdd = np.empty((n, p))
    out_trades = np.empty((n, p), dtype=np.int64)
    args = (ent[order], ext[order], stp[order], order.astype(np.int64), cost, ann, first,
            out_total, out_sharpe, out_mdd, out_trades)
    if return_series:
        # Series mode parallelises over parameter chunks only (instruments run in order
        # inside a task), so chunk as if there were one instrument.
        series = np.zeros((p, matrix.shape[1]))
        kernels[1](matrix, *_tasks(look[order], 1), *args, series)
        series /= n  # equal weight across instruments
    else:
        kernels[0](matrix, *_tasks(look[order], n), *args)
    result = GridResult(out_total, out_sharpe, out_mdd, out_trades)
    if one_d:
        result = GridResult(out_total[0], out_sharpe[0], out_mdd[0], out_trades[0])
    return (result, series) if return_series else result


class _ZmrPlan(NamedTuple):
    """Lane layout of a z-score grid (see :mod:`quant_assets.backtest.grid_nb`)."""

    lookbacks: np.ndarray  # (G,) distinct lookbacks, ascending
    entry: np.ndarray  # (M,) padded lane parameters, lookback groups one after the other
    exit: np.ndarray
    exit_lo: np.ndarray  # the double just below exit (the SIMD kernel's strict compare)
    stop: np.ndarray
    lane_col: np.ndarray  # (M,) parameter-set index of each lane, -1 for padding
    chunk_g: np.ndarray  # (C,) group of each chunk
    chunk_j0: np.ndarray  # (C,) first lane
    chunk_j1: np.ndarray  # (C,) end lane
    chunk_simd: np.ndarray  # (C,) bool: SIMD kernel (all entries >= 0)


def _zmr_plan(look, ent, ext, stp, n_instruments: int, simd: bool) -> _ZmrPlan:
    """Sort the sets by lookback, pad each group to whole vectors and cut it into chunks.

    Groups are split (at multiples of the SIMD step, so no extra padding) only when
    instruments x groups are too few to keep every thread busy. Layout and chunking affect
    speed only, never results.
    """
    order = np.argsort(look, kind="stable")
    sorted_look = look[order]
    starts = np.flatnonzero(np.r_[True, sorted_look[1:] != sorted_look[:-1]])
    stops = np.r_[starts[1:], sorted_look.shape[0]]
    target = _TASKS_PER_THREAD * numba.get_num_threads()
    splits = max(1, math.ceil(target / (n_instruments * starts.shape[0])))
    lanes = grid_nb.ZMR_LANES
    sizes = [-(-(b - a) // lanes) * lanes for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
    n_lanes = sum(sizes)
    entry = np.zeros(n_lanes)
    exit_ = np.zeros(n_lanes)
    stop = np.zeros(n_lanes)
    lane_col = np.full(n_lanes, -1, dtype=np.int64)
    chunk_g, chunk_j0, chunk_j1, chunk_simd = [], [], [], []
    j = 0
    for g, (a, b) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
        cols = order[a:b]
        entry[j : j + b - a] = ent[cols]
        exit_[j : j + b - a] = ext[cols]
        stop[j : j + b - a] = stp[cols]
        lane_col[j : j + b - a] = cols
        steps = -(-sizes[g] // _SIMD_STEP)
        parts = max(1, min(splits, steps))
        cuts = np.minimum(np.linspace(0, steps, parts + 1).round().astype(np.int64) * _SIMD_STEP, sizes[g])
        if parts > 1 and g % 2:
            cuts = sizes[g] - cuts[::-1]  # odd groups put the short chunk first (balance)
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            chunk_g.append(g)
            chunk_j0.append(j + lo)
            chunk_j1.append(j + hi)
            # the SIMD transition rule needs entry >= 0 (long and short entries exclusive)
            chunk_simd.append(simd and bool((entry[j + lo : j + hi] >= 0).all()))
        j += sizes[g]
    return _ZmrPlan(
        sorted_look[starts].astype(np.int64), entry, exit_, np.nextafter(exit_, -np.inf), stop,
        lane_col, np.array(chunk_g, dtype=np.int64), np.array(chunk_j0, dtype=np.int64),
        np.array(chunk_j1, dtype=np.int64), np.array(chunk_simd, dtype=np.bool_),
    )


def _zmr(close, lookback, entry, exit, stop, cost_bps, bars_per_year, start, return_series,
         simd=True, kernels="lanes", backend="cpu", timings=None):
    """:func:`zmr_grid` (``simd=False``: the plain numba lanes everywhere, for tests;
    ``kernels``: "lanes" (the target CPU's SIMD kernels), "onepass" or "twopass" (either,
    bit-identical, for tests), "ceiling" (the benchmark's ceiling kernels, meaningless
    statistics);
    ``timings``: a dict for the GPU's time per step, for benchmarks)."""
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be 'cpu' or 'cuda', got {backend!r}")
    if backend == "cuda" and return_series:
        raise ValueError("return_series=True is not supported with backend='cuda'")
    matrix, one_d = _close_matrix(close)
    look, ent, ext, stp = _params(lookback, entry, exit, stop)
    cost = _check_number("cost_bps", cost_bps, positive=False) / 1e4
    ann = math.sqrt(_check_number("bars_per_year", bars_per_year, positive=True))
    first = _check_start(start, matrix.shape[1])
    n, n_bars = matrix.shape
    n_groups = np.unique(look).shape[0]
    # instruments per kernel call: as many as the buffers (z-score rows and returns of the
    # whole series) allow; a longer series alone runs in segments of bars
    batch = n if return_series else max(1, min(n, _BUFFER_BYTES // (8 * (n_groups + 1) * n_bars)))
    plan = _zmr_plan(look, ent, ext, stp, 1 if return_series else batch, simd and not return_series)
    segment = max(grid_nb.BLOCK, min(n_bars, _BUFFER_BYTES // (8 * batch * (n_groups + 1))))
    threads = numba.get_num_threads()
    # phase 1 pieces: enough jobs to balance the threads (twice the chunks' target: its
    # jobs are short and the returns job is shorter), each piece many windows long
    pieces = max(1, min(math.ceil(2 * _TASKS_PER_THREAD * threads / (batch * n_groups)),
                        segment // (8 * int(plan.lookbacks[-1]))))
    st = grid_nb.new_state(n, plan.entry.shape[0])
    common = (plan.chunk_g, plan.chunk_j0, plan.chunk_j1)
    if backend == "cuda":
        from quant_assets.backtest import grid_cuda  # imports numba.cuda: only when asked

        lane_g = np.empty(plan.entry.shape[0], dtype=np.int64)
        for g, j0, j1 in zip(*(a.tolist() for a in common), strict=True):
            lane_g[j0:j1] = g
        st = grid_cuda.run_lanes(matrix, plan.lookbacks, lane_g, plan.entry, plan.exit, plan.stop,
                                 cost, first, timings)
    elif return_series:
        series = np.zeros((look.shape[0], n_bars))
        grid_nb.zmr_grid_series_nb(
            matrix, plan.lookbacks, plan.entry, plan.exit, plan.stop, *common, plan.lane_col,
            cost, first, segment, pieces, st, series,
        )
        series /= n  # equal weight across instruments
    else:
        addrs = np.zeros(4, dtype=np.int64)
        if plan.chunk_simd.any():
            compiled = grid_simd.kernel_addresses(kernels)
            addrs[:] = [compiled[k] for k in (16, 12, 8, 4)]
        for i0 in range(0, n, batch):
            with numba.parallel_chunksize(1):  # jobs of unequal size: hand out one at a time
                grid_nb.zmr_grid_nb(
                    matrix[i0 : i0 + batch], plan.lookbacks, plan.entry, plan.exit_lo,
                    plan.exit, plan.stop, *common, plan.chunk_simd, cost, first, segment,
                    pieces, addrs, st[i0 : i0 + batch],
                )
    p = look.shape[0]
    out = GridResult(np.empty((n, p)), np.empty((n, p)), np.empty((n, p)), np.empty((n, p), dtype=np.int64))
    for i in range(n):
        grid_nb.finish_nb(st[i], n_bars - first, ann, plan.lane_col, *(o[i] for o in out))
    result = GridResult(*(o[0] for o in out)) if one_d else out
    return (result, series) if return_series else result


def zmr_grid(
    close: Any,
    lookback: Any,
    entry: Any,
    exit: Any,
    stop: Any,
    cost_bps: float = 5.0,
    bars_per_year: float = 252 * 390,
    *,
    start: int = 1,
    return_series: bool = False,
    backend: str = "cpu",
) -> GridResult | tuple[GridResult, np.ndarray]:
    """Z-score mean reversion over P parameter sets (conventions: module docstring).

    ``lookback`` (int >= 2), ``entry``, ``exit``, ``stop`` (finite; their ordering is not
    required) are 1-D of length P. The rolling z-score stays within ~1e-12 of an exact
    two-pass computation (shifted sums, recomputed exactly every L bars).

    ``start`` (default 1): bars before it only warm up the rolling statistic; positions are
    flat through bar ``start - 1`` and the statistics cover the ``T - start`` returns of
    bars ``start..T-1`` (``start = 1`` is the plain convention). ``return_series=True``
    also returns the per-bar returns (P, T) -- for a 2-D ``close`` their equal-weight mean
    over the instruments, so memory stays P x T whatever N -- as ``(result, returns)``.

    ``backend="cuda"`` runs the grid on a GPU (:mod:`quant_assets.backtest.grid_cuda`, numba
    CUDA): bit for bit the same results as the default ``"cpu"``; no ``return_series``.
    """
    return _zmr(close, lookback, entry, exit, stop, cost_bps, bars_per_year, start, return_series,
                backend=backend)


def breakout_grid(
    close: Any,
    lookback: Any,
    entry: Any,
    exit: Any,
    stop: Any,
    cost_bps: float = 5.0,
    bars_per_year: float = 252 * 390,
    *,
    start: int = 1,
    return_series: bool = False,
) -> GridResult | tuple[GridResult, np.ndarray]:
    """Donchian channel breakout over P parameter sets (conventions: module docstring).

    ``lookback`` (int >= 2) is the channel length, ``entry``/``exit`` channel coordinates
    and ``stop`` a fractional stop-loss from the entry close (all finite), 1-D of length P.
    ``start`` and ``return_series`` as in :func:`zmr_grid`.
    """
    return _run_grid(
        (grid_nb.breakout_grid_nb, grid_nb.breakout_grid_series_nb), close, lookback, entry,
        exit, stop, cost_bps, bars_per_year, start, return_series,
    )


def returns_matrix(series: Any, start: int = 1) -> np.ndarray:
    """The (T - start) x P matrix of per-bar returns that ``pbo_cscv`` (and the other
    trial statistics of :mod:`quant_assets.validation.stats`) take: rows are the evaluated
    bars ``start..T-1``, columns the parameter sets (trials), from the (P, T) ``series`` of
    ``zmr_grid`` / ``breakout_grid`` with ``return_series=True`` and the same ``start``."""
    array = np.asarray(series, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"series must be (P, T), got shape {array.shape}")
    first = _check_start(start, array.shape[1])
    return np.ascontiguousarray(array[:, first:].T)


def scenario_backtest(
    prices: Any,
    weight_bank: Any,
    tradable: Any,
    bank_index: Any,
    costs: Sequence[CostModel],
    volume: Any = None,
) -> ScenarioResult:
    """Many portfolio backtests (conventions of :mod:`quant_assets.backtest.portfolio`).

    Scenario s uses target weights ``weight_bank[bank_index[s]]`` ((B, T, N) bank) and
    ``costs[s]``, starts in cash with equity 1, and runs on the shared ``prices`` and
    ``tradable`` (T, N). Its net returns equal ``run_backtest(...).net_return`` for the same
    inputs; a wiped-out scenario does not stop the others (see :class:`ScenarioResult`).
    """
    price_matrix = np.asarray(prices)
    if price_matrix.ndim != 2 or not np.issubdtype(price_matrix.dtype, np.number):
        raise ValueError(f"prices must be a numeric (T, N) array, got shape {price_matrix.shape}")
    price_matrix = kernel_input(price_matrix, np.float64)
    shape = price_matrix.shape
    bank = np.asarray(weight_bank)
    if bank.ndim != 3 or bank.shape[1:] != shape or not np.issubdtype(bank.dtype, np.number):
        raise ValueError(f"weight_bank must be a numeric (B, T, N) array with (T, N) = {shape}")
    bank = kernel_input(bank, np.float64)
    tradable_matrix = np.asarray(tradable)
    if tradable_matrix.shape != shape or tradable_matrix.dtype != np.bool_:
        raise ValueError(f"tradable must be a boolean array of shape {shape}")
    tradable_matrix = kernel_input(tradable_matrix)
    index = np.asarray(bank_index)
    if index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError("bank_index must be a non-empty 1-D integer array")
    if index.min() < 0 or index.max() >= bank.shape[0]:
        raise ValueError(f"bank_index must be in [0, {bank.shape[0]}), got {index.min()}..{index.max()}")
    costs = list(costs)
    if len(costs) != index.shape[0] or not all(isinstance(c, CostModel) for c in costs):
        raise ValueError(f"costs must be {index.shape[0]} CostModel objects, one per scenario")

    finite = np.isfinite(price_matrix)
    if np.isinf(price_matrix).any() or (finite & ~(price_matrix > 0)).any():
        raise ValueError("prices must be > 0 where finite, and not +-inf")
    if (tradable_matrix & ~finite).any():
        raise ValueError("tradable is True where the price is NaN")
    if (tradable_matrix[None] & ~np.isfinite(bank)).any():
        raise ValueError("weight_bank must be finite on tradable names")
    impact = np.array([float(c.impact_coef) for c in costs])
    if (impact > 0).any():
        if volume is None:
            raise ValueError("a CostModel with impact_coef > 0 needs volume (shares, T x N)")
        volume_matrix = kernel_input(volume, np.float64)
        if volume_matrix.shape != shape:
            raise ValueError(f"volume must have shape {shape}")
        if (tradable_matrix & ~(np.isfinite(volume_matrix) & (volume_matrix > 0))).any():
            raise ValueError("volume must be finite and > 0 on tradable names")
    else:
        volume_matrix = kernel_input(np.zeros((0, 0)))  # unused by step_nb without impact

    n_scenarios = index.shape[0]
    net = np.full((n_scenarios, shape[0]), np.nan)
    equity = np.empty(n_scenarios)
    failed = np.empty(n_scenarios, dtype=np.int64)
    grid_nb.simulate_scenarios_nb(
        price_matrix, bank, index.astype(np.int64), tradable_matrix, volume_matrix,
        np.array([c.rate for c in costs]), impact, net, equity, failed,
    )
    return ScenarioResult(net, equity, failed)
