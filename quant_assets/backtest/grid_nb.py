"""Numba kernels of the parameter-grid engine (no Python objects, no polars, no Dagster).

The conventions are documented in :mod:`quant_assets.backtest.grid`; these kernels trust
their caller to have validated the inputs.

Layout. Work is split into *tasks*: one instrument x one lookback x one contiguous chunk
of the parameter sets sharing that lookback (parameters are sorted by lookback by the
caller). A task computes its rolling statistic once per bar and then advances every
parameter set of its chunk in an inner loop over small state arrays, so the work per
bar-parameter is a few compares and a multiply-add. Tasks run under ``prange``; each writes
only its own output cells and nothing is reduced across threads, so results do not depend
on the number of threads (or on the chunking: a parameter set's arithmetic only depends on
its instrument and lookback).

The inner loops are written branch-free (selects instead of ``if``) so that LLVM can
vectorise them across parameter sets; ``error_model="numpy"`` (IEEE division, no Python
zero-division checks) keeps them so. The z-score kernel advances each lane by two bars per
pass (``_zmr_lanes2_nb``): the lane's state is loaded and stored once per two bars, which
measured ~3x faster than one bar per pass (state traffic, not arithmetic, was the bound);
the arithmetic per bar is unchanged, so results are bit-identical. Four bars per pass
measured no faster.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from quant_assets.backtest import nb

# Relative size below which a one-pass variance is indistinguishable from rounding error.
_VAR_EPS = 8.0 * 2.220446049250313e-16


# Bars per block: the shared per-bar statistics of a block are computed first (their
# divisions and square roots vectorise), then the lanes run over the block from L1 cache.
BLOCK = 512
# Lanes are padded to a multiple of this so that LLVM's vector loop over parameter sets has
# no scalar remainder (16 doubles = two 512-bit vectors). Measured: as fast per lane as 32,
# and it lets a 27-set lookback group split into two 16-lane chunks (balanced threads) for
# the same 32 lanes of work that one unsplit chunk costs.
LANES = 16

# State rows of a task (one (N_STATE, lanes) block keeps a task's state together and lets
# LLVM vectorise across lanes without alias checks between many separate arrays).
_POS, _EQ, _PEAK, _TROUGH, _WORST_T, _WORST_P, _S1, _S2, _ENTRIES, _PRICE_IN = range(10)
N_STATE = 10


@njit(cache=True, error_model="numpy")
def zscore_recompute_nb(x, t, lookback):
    """Exact two-pass sums of the window ``x[t-L+1..t]`` around its mean ``k``.

    Returns ``(k, a1, a2)`` with ``a1 = sum(x - k)`` (~0) and ``a2 = sum((x - k)^2)``.
    """
    s = 0.0
    for u in range(t - lookback + 1, t + 1):
        s += x[u]
    k = s / lookback
    a1 = 0.0
    a2 = 0.0
    for u in range(t - lookback + 1, t + 1):
        d = x[u] - k
        a1 += d
        a2 += d * d
    return k, a1, a2


@njit(cache=True, error_model="numpy")
def zscore_block_nb(x, t0, t1, lookback, zb, roll, run):
    """Z-scores of bars ``t0..t1-1`` into ``zb`` (NaN: no transition); returns ``run``.

    ``roll`` = [k, a1, a2, countdown] carries the rolling state between blocks. Sums are
    kept of ``x - k`` (shifted by a recent window mean ``k``, which keeps the one-pass
    variance well conditioned) and slid by one bar; every ``L`` bars (when the window has
    fully turned over) they are recomputed exactly by two passes, so rounding drift never
    accumulates over more than ``L`` updates. ``run`` is the length of the streak of equal
    closes ending at the bar: a constant window (std = 0) is detected exactly instead of
    through a rounded variance.
    """
    k = roll[0]
    a1 = roll[1]
    a2 = roll[2]
    countdown = np.int64(roll[3])
    inv_l = 1.0 / lookback
    inv_l1 = 1.0 / (lookback - 1)
    for t in range(t0, t1):
        i = t - t0
        if t > 0:
            run = run + 1 if x[t] == x[t - 1] else 1
        if t < lookback - 1:
            zb[i] = np.nan
            continue
        if countdown == 0:
            k, a1, a2 = zscore_recompute_nb(x, t, lookback)
            countdown = lookback
        else:
            dn = x[t] - k
            do = x[t - lookback] - k
            a1 += dn - do
            a2 += dn * dn - do * do
        countdown -= 1
        dev = a1 * inv_l
        var = (a2 - a1 * dev) * inv_l1
        # Numerator now, division by the std in a separate (vectorised) pass below.
        zb[i] = (x[t] - k) - dev if (run < lookback) & (var > 0.0) else np.nan
        roll[4 + i] = var if var > 0.0 else 1.0
    for i in range(t1 - t0):
        zb[i] = zb[i] / math.sqrt(roll[4 + i])
    roll[0] = k
    roll[1] = a1
    roll[2] = a2
    roll[3] = countdown
    return run


@njit(cache=True, error_model="numpy")
def rolling_zscore_nb(x, lookback):
    """The z-score series (T,) that the grid kernel sees (NaN where no transition happens)."""
    n_bars = x.shape[0]
    out = np.empty(n_bars)
    roll = np.zeros(4 + BLOCK)
    run = 1
    for t0 in range(0, n_bars, BLOCK):
        t1 = min(t0 + BLOCK, n_bars)
        run = zscore_block_nb(x, t0, t1, lookback, out[t0:t1], roll, run)
    return out


@njit(cache=True, error_model="numpy")
def _new_state(m):
    """Per-lane state: equity, peak and the drawdown ratios start at 1, the rest at 0."""
    state = np.zeros((N_STATE, m))
    for r in (_EQ, _PEAK, _TROUGH, _WORST_T, _WORST_P):
        state[r, :] = 1.0
    return state


@njit(cache=True, error_model="numpy", inline="always")
def _book_nb(st, j, p, q, ret, cost):
    """Book the bar's return of lane ``j`` moving from position ``p`` to ``q``.

    Max drawdown without a division per bar: within one episode (between new peaks) the
    deepest point is the lowest equity, so only the trough is tracked; when a new peak ends
    the episode its ratio trough / peak is compared with the worst so far by
    cross-multiplication (all values are > 0).
    """
    r = p * ret - cost * abs(q - p)
    e = st[_EQ, j] * (1.0 + r)
    st[_EQ, j] = e
    st[_S1, j] += r
    st[_S2, j] += r * r
    st[_ENTRIES, j] += 1.0 if (p == 0.0) & (q != 0.0) else 0.0
    pk = st[_PEAK, j]
    tr = st[_TROUGH, j]
    wt = st[_WORST_T, j]
    wp = st[_WORST_P, j]
    new_peak = e > pk
    worse = new_peak & (tr * wp < wt * pk)
    st[_WORST_T, j] = tr if worse else wt
    st[_WORST_P, j] = pk if worse else wp
    st[_PEAK, j] = e if new_peak else pk
    st[_TROUGH, j] = e if new_peak else min(tr, e)
    st[_POS, j] = q
    return r


@njit(cache=True, error_model="numpy")
def _finish_nb(st, m, n_returns, ann, order, k0, out_total, out_sharpe, out_mdd, out_trades):
    """Summary statistics of a task's first ``m`` lanes, scattered to their original columns."""
    for j in range(m):
        col = order[k0 + j]
        out_total[col] = st[_EQ, j] - 1.0
        sharpe = 0.0
        if n_returns > 0:
            mean = st[_S1, j] / n_returns
            mean_sq = st[_S2, j] / n_returns
            var = mean_sq - mean * mean
            # One-pass variance: below its rounding resolution it is taken as 0 (std = 0).
            if var > _VAR_EPS * mean_sq:
                sharpe = mean / math.sqrt(var) * ann
        out_sharpe[col] = sharpe
        tr = st[_TROUGH, j]
        pk = st[_PEAK, j]
        wt = st[_WORST_T, j]
        wp = st[_WORST_P, j]
        if tr * wp < wt * pk:  # close the last, still open episode
            wt = tr
            wp = pk
        out_mdd[col] = 1.0 - wt / wp
        out_trades[col] = np.int64(st[_ENTRIES, j])


@njit(cache=True, error_model="numpy")
def _lanes(values, k0, k1):
    """Parameter values ``k0:k1`` padded with zeros to a multiple of LANES (padding lanes
    run like the others and are never reported)."""
    m = k1 - k0
    out = np.zeros((m + LANES - 1) // LANES * LANES)
    out[:m] = values[k0:k1]
    return out


@njit(cache=True, error_model="numpy")
def _returns_block_nb(x, t0, t1, rb):
    for t in range(max(t0, 1), t1):
        rb[t - t0] = x[t] / x[t - 1] - 1.0


@njit(cache=True, error_model="numpy", inline="always")
def _zmr_target(p, z, e, xt, s):
    """Position after a bar of z-score ``z`` from position ``p`` (branch-free selects)."""
    go_long = (z < -e) & (z >= -s)
    go_short = (z > e) & (z <= s)
    q_flat = 1.0 if go_long else (-1.0 if go_short else 0.0)
    q_long = 0.0 if (z > -xt) | (z < -s) else 1.0
    q_short = 0.0 if (z < xt) | (z > s) else -1.0
    return q_flat if p == 0.0 else (q_long if p > 0.0 else q_short)


@njit(cache=True, error_model="numpy", inline="always")
def _book_values(p, q, ret, cost, eq, s1, s2, ent, pk, tr, wt, wp):
    """``_book_nb`` on values instead of a state column (same operations, same order)."""
    r = p * ret - cost * abs(q - p)
    e = eq * (1.0 + r)
    s1 += r
    s2 += r * r
    ent += 1.0 if (p == 0.0) & (q != 0.0) else 0.0
    new_peak = e > pk
    worse = new_peak & (tr * wp < wt * pk)
    wt2 = tr if worse else wt
    wp2 = pk if worse else wp
    pk2 = e if new_peak else pk
    tr2 = e if new_peak else min(tr, e)
    return e, s1, s2, ent, pk2, tr2, wt2, wp2


@njit(cache=True, error_model="numpy", inline="always")
def _zmr_lanes2_nb(st, m, za, ra, zb, rb, ent, ext, stp, cost):
    """Two consecutive bars per lane: the lane's state is loaded and stored once for both,
    which halves the state traffic that bounds the one-bar loop."""
    for j in range(m):
        p = st[_POS, j]
        e = ent[j]
        xt = ext[j]
        s = stp[j]
        eq = st[_EQ, j]
        s1 = st[_S1, j]
        s2 = st[_S2, j]
        n_in = st[_ENTRIES, j]
        pk = st[_PEAK, j]
        tr = st[_TROUGH, j]
        wt = st[_WORST_T, j]
        wp = st[_WORST_P, j]
        q = _zmr_target(p, za, e, xt, s)
        eq, s1, s2, n_in, pk, tr, wt, wp = _book_values(p, q, ra, cost, eq, s1, s2, n_in, pk, tr, wt, wp)
        q2 = _zmr_target(q, zb, e, xt, s)
        eq, s1, s2, n_in, pk, tr, wt, wp = _book_values(q, q2, rb, cost, eq, s1, s2, n_in, pk, tr, wt, wp)
        st[_POS, j] = q2
        st[_EQ, j] = eq
        st[_S1, j] = s1
        st[_S2, j] = s2
        st[_ENTRIES, j] = n_in
        st[_PEAK, j] = pk
        st[_TROUGH, j] = tr
        st[_WORST_T, j] = wt
        st[_WORST_P, j] = wp


@njit(cache=True, error_model="numpy", inline="always")
def _zmr_lanes_nb(st, m, z, ret, ent, ext, stp, cost, rec, i, keep):
    """Advance the ``m`` lanes of a task by one bar of z-score ``z`` and return ``ret``.

    ``keep`` is a literal at each call site, so the copy without ``rec`` writes is the
    plain (vectorised) loop.
    """
    # NaN z makes every comparison False: no transition, as the spec asks.
    for j in range(m):
        p = st[_POS, j]
        q = _zmr_target(p, z, ent[j], ext[j], stp[j])
        r = _book_nb(st, j, p, q, ret, cost)
        if keep:
            rec[j, i] = r


@njit(cache=True, error_model="numpy")
def _add_series_nb(series, rec, order, k0, n_sets, t0, i0, i1):
    """Add the recorded returns of bars ``t0+i0 .. t0+i1-1`` to their columns' series."""
    for j in range(n_sets):
        row = series[order[k0 + j]]
        for i in range(i0, i1):
            row[t0 + i] += rec[j, i]


@njit(cache=True, error_model="numpy")
def zmr_task_nb(
    x, lookback, k0, k1, entry, exit_, stop, order, cost, ann, start,
    out_total, out_sharpe, out_mdd, out_trades, series,
):
    """Z-score mean reversion for one instrument ``x`` (T,) and parameter sets ``k0:k1``.

    Positions stay flat and nothing is booked before bar ``start`` (the bars before it
    only warm up the rolling statistic); statistics cover the returns of bars start..T-1.
    When ``series`` is not empty ((P, T)), each set's per-bar return is added to its row.
    """
    ent = _lanes(entry, k0, k1)
    ext = _lanes(exit_, k0, k1)
    stp = _lanes(stop, k0, k1)
    m = ent.shape[0]
    keep = series.shape[0] > 0
    st = _new_state(m)
    zb = np.empty(BLOCK)
    rb = np.zeros(BLOCK)
    rec = np.zeros((m if keep else 0, BLOCK))
    roll = np.zeros(4 + BLOCK)
    run = 1
    n_bars = x.shape[0]
    first = max(lookback - 1, start)
    for t0 in range(0, n_bars, BLOCK):
        t1 = min(t0 + BLOCK, n_bars)
        run = zscore_block_nb(x, t0, t1, lookback, zb, roll, run)
        if t1 <= first:
            continue  # every position is still flat: returns are 0, nothing to book
        _returns_block_nb(x, t0, t1, rb)
        i0 = max(0, first - t0)
        if keep:
            # one bar per pass here: every return is stored anyway (series mode is for the
            # validation statistics, not the sweep's hot path)
            for i in range(i0, t1 - t0):
                _zmr_lanes_nb(st, m, zb[i], rb[i], ent, ext, stp, cost, rec, i, True)
            _add_series_nb(series, rec, order, k0, k1 - k0, t0, i0, t1 - t0)
        else:
            i = i0
            while i + 1 < t1 - t0:
                _zmr_lanes2_nb(st, m, zb[i], rb[i], zb[i + 1], rb[i + 1], ent, ext, stp, cost)
                i += 2
            if i < t1 - t0:
                _zmr_lanes_nb(st, m, zb[i], rb[i], ent, ext, stp, cost, rec, i, False)
    _finish_nb(st, k1 - k0, n_bars - start, ann, order, k0, out_total, out_sharpe, out_mdd, out_trades)


@njit(cache=True, error_model="numpy")
def channel_block_nb(x, t0, t1, lookback, ub, deques, ends):
    """Donchian channel coordinates of bars ``t0..t1-1`` into ``ub``.

    ``u_t = (x_t - mid) / half`` with ``hi``/``lo`` the max/min of the previous ``L`` closes
    (bar t excluded), ``mid = (hi + lo) / 2`` and ``half = (hi - lo) / 2``: +1 at the old
    high, -1 at the old low; NaN before bar L and where the channel is flat. The window
    extremes come from two monotone deques (ring buffers of indices, rows of ``deques``;
    ``ends`` = [head_max, tail_max, head_min, tail_min] carries them between blocks), so
    each bar costs O(1) amortised whatever L is.
    """
    cap = deques.shape[1]
    qmax = deques[0]
    qmin = deques[1]
    hmax = ends[0]
    tmax = ends[1]
    hmin = ends[2]
    tmin = ends[3]
    for t in range(t0, t1):
        ub[t - t0] = np.nan
        if t == 0:
            continue
        # Admit bar t-1 (dropping dominated indices), then expire indices older than t-L;
        # at most one expires per bar.
        while tmax != hmax:
            last = tmax - 1 if tmax > 0 else cap - 1
            if x[qmax[last]] <= x[t - 1]:
                tmax = last
            else:
                break
        qmax[tmax] = t - 1
        tmax = tmax + 1 if tmax + 1 < cap else 0
        while tmin != hmin:
            last = tmin - 1 if tmin > 0 else cap - 1
            if x[qmin[last]] >= x[t - 1]:
                tmin = last
            else:
                break
        qmin[tmin] = t - 1
        tmin = tmin + 1 if tmin + 1 < cap else 0
        if qmax[hmax] < t - lookback:
            hmax = hmax + 1 if hmax + 1 < cap else 0
        if qmin[hmin] < t - lookback:
            hmin = hmin + 1 if hmin + 1 < cap else 0
        if t < lookback:
            continue
        hi = x[qmax[hmax]]
        lo = x[qmin[hmin]]
        if hi > lo:
            ub[t - t0] = (x[t] - 0.5 * (hi + lo)) / (0.5 * (hi - lo))
    ends[0] = hmax
    ends[1] = tmax
    ends[2] = hmin
    ends[3] = tmin


@njit(cache=True, error_model="numpy")
def _channel_buffers(lookback):
    # L + 1 live indices before the expiry, plus the empty slot of a ring buffer.
    return np.empty((2, lookback + 2), np.int64), np.zeros(4, np.int64)


@njit(cache=True, error_model="numpy")
def channel_position_nb(x, lookback):
    """The channel coordinate series (T,) that the breakout kernel sees."""
    n_bars = x.shape[0]
    out = np.empty(n_bars)
    deques, ends = _channel_buffers(lookback)
    for t0 in range(0, n_bars, BLOCK):
        t1 = min(t0 + BLOCK, n_bars)
        channel_block_nb(x, t0, t1, lookback, out[t0:t1], deques, ends)
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _breakout_lanes_nb(st, m, u, ret, xt, ent, ext, long_stop, short_stop, cost, rec, i, keep):
    """Advance the ``m`` lanes of a task by one bar (channel coordinate ``u``, close ``xt``)."""
    for j in range(m):
        p = st[_POS, j]
        e = ent[j]
        xe = ext[j]
        pin = st[_PRICE_IN, j]
        q_flat = 1.0 if u > e else (-1.0 if u < -e else 0.0)
        q_long = 0.0 if (u < -xe) | (xt <= pin * long_stop[j]) else 1.0
        q_short = 0.0 if (u > xe) | (xt >= pin * short_stop[j]) else -1.0
        q = q_flat if p == 0.0 else (q_long if p > 0.0 else q_short)
        st[_PRICE_IN, j] = xt if (p == 0.0) & (q != 0.0) else pin
        r = _book_nb(st, j, p, q, ret, cost)
        if keep:
            rec[j, i] = r


@njit(cache=True, error_model="numpy")
def breakout_task_nb(
    x, lookback, k0, k1, entry, exit_, stop, order, cost, ann, start,
    out_total, out_sharpe, out_mdd, out_trades, series,
):
    """Donchian breakout for one instrument ``x`` (T,) and parameter sets ``k0:k1``
    (``start`` and ``series`` as in :func:`zmr_task_nb`)."""
    ent = _lanes(entry, k0, k1)
    ext = _lanes(exit_, k0, k1)
    stp = _lanes(stop, k0, k1)
    m = ent.shape[0]
    keep = series.shape[0] > 0
    # Stop levels as multipliers of the entry close, hoisted out of the bar loop.
    long_stop = 1.0 - stp
    short_stop = 1.0 + stp
    st = _new_state(m)
    ub = np.empty(BLOCK)
    rb = np.zeros(BLOCK)
    rec = np.zeros((m if keep else 0, BLOCK))
    deques, ends = _channel_buffers(lookback)
    n_bars = x.shape[0]
    first = max(lookback, start)
    for t0 in range(0, n_bars, BLOCK):
        t1 = min(t0 + BLOCK, n_bars)
        channel_block_nb(x, t0, t1, lookback, ub, deques, ends)
        if t1 <= first:
            continue  # no channel yet (or still warming up): every position is flat
        _returns_block_nb(x, t0, t1, rb)
        i0 = max(0, first - t0)
        if keep:
            for i in range(i0, t1 - t0):
                _breakout_lanes_nb(
                    st, m, ub[i], rb[i], x[t0 + i], ent, ext, long_stop, short_stop, cost,
                    rec, i, True,
                )
            _add_series_nb(series, rec, order, k0, k1 - k0, t0, i0, t1 - t0)
        else:
            for i in range(i0, t1 - t0):
                _breakout_lanes_nb(
                    st, m, ub[i], rb[i], x[t0 + i], ent, ext, long_stop, short_stop, cost,
                    rec, i, False,
                )
    _finish_nb(st, k1 - k0, n_bars - start, ann, order, k0, out_total, out_sharpe, out_mdd, out_trades)


@njit(cache=True, error_model="numpy", parallel=True)
def zmr_grid_nb(
    close, task_lookback, task_k0, task_k1, entry, exit_, stop, order, cost, ann, start,
    out_total, out_sharpe, out_mdd, out_trades,
):
    """Run every (instrument, task) pair of the z-score grid; ``close`` is (N, T)."""
    n_tasks = task_lookback.shape[0]
    no_series = np.zeros((0, 0))
    for job in prange(close.shape[0] * n_tasks):
        i = job // n_tasks
        g = job - i * n_tasks
        zmr_task_nb(
            close[i], task_lookback[g], task_k0[g], task_k1[g], entry, exit_, stop, order,
            cost, ann, start, out_total[i], out_sharpe[i], out_mdd[i], out_trades[i], no_series,
        )


@njit(cache=True, error_model="numpy", parallel=True)
def zmr_grid_series_nb(
    close, task_lookback, task_k0, task_k1, entry, exit_, stop, order, cost, ann, start,
    out_total, out_sharpe, out_mdd, out_trades, series,
):
    """As :func:`zmr_grid_nb`, also summing each set's per-bar returns over instruments into
    ``series`` (P, T). Tasks (parameter chunks) run in parallel and each loops over the
    instruments in order, so every row is summed by one thread in a fixed order."""
    for g in prange(task_lookback.shape[0]):
        for i in range(close.shape[0]):
            zmr_task_nb(
                close[i], task_lookback[g], task_k0[g], task_k1[g], entry, exit_, stop, order,
                cost, ann, start, out_total[i], out_sharpe[i], out_mdd[i], out_trades[i], series,
            )


@njit(cache=True, error_model="numpy", parallel=True)
def breakout_grid_nb(
    close, task_lookback, task_k0, task_k1, entry, exit_, stop, order, cost, ann, start,
    out_total, out_sharpe, out_mdd, out_trades,
):
    """Run every (instrument, task) pair of the breakout grid; ``close`` is (N, T)."""
    n_tasks = task_lookback.shape[0]
    no_series = np.zeros((0, 0))
    for job in prange(close.shape[0] * n_tasks):
        i = job // n_tasks
        g = job - i * n_tasks
        breakout_task_nb(
            close[i], task_lookback[g], task_k0[g], task_k1[g], entry, exit_, stop, order,
            cost, ann, start, out_total[i], out_sharpe[i], out_mdd[i], out_trades[i], no_series,
        )


@njit(cache=True, error_model="numpy", parallel=True)
def breakout_grid_series_nb(
    close, task_lookback, task_k0, task_k1, entry, exit_, stop, order, cost, ann, start,
    out_total, out_sharpe, out_mdd, out_trades, series,
):
    """As :func:`breakout_grid_nb` with per-bar return sums (see :func:`zmr_grid_series_nb`)."""
    for g in prange(task_lookback.shape[0]):
        for i in range(close.shape[0]):
            breakout_task_nb(
                close[i], task_lookback[g], task_k0[g], task_k1[g], entry, exit_, stop, order,
                cost, ann, start, out_total[i], out_sharpe[i], out_mdd[i], out_trades[i], series,
            )


@njit(cache=True, error_model="numpy")
def first_bad_close_nb(close):
    """Flat index of the first close that is NaN/inf or <= 0, or -1 (no temporaries)."""
    flat = close.ravel()
    for idx in range(flat.shape[0]):
        v = flat[idx]
        if not (v > 0.0 and v < np.inf):
            return idx
    return -1


# Scenarios advanced together by the linear-cost kernel: their column-order sums are
# independent dependency chains, so interleaving four hides the add latency that bounds a
# single scenario's sums (each scenario's own sum order is unchanged).
GROUP = 4


@njit(cache=True, error_model="numpy", inline="always")
def _returns_row_nb(row, weights, last_prices, ret):
    # element-wise (vectorised): a held name's return since its last price, else 0
    for i in range(row.shape[0]):
        w = weights[i]
        p = row[i]
        ret[i] = p / last_prices[i] - 1.0 if (w != 0.0) & (p == p) else 0.0


@njit(cache=True, error_model="numpy", inline="always")
def _rebalance_row_nb(row, target_row, tradable_row, growth, weights, last_prices, ret, trade):
    # element-wise (vectorised): drift, then the target of step_nb's rules, traded amount
    for i in range(row.shape[0]):
        w = weights[i]
        w = w * (1.0 + ret[i]) / growth if w != 0.0 else w
        p = row[i]
        has_price = p == p
        # tradable: its target; held without a price: closed (delisted); else: kept
        target = target_row[i] if tradable_row[i] else (0.0 if (w != 0.0) & ~has_price else w)
        trade[i] = abs(target - w)
        weights[i] = target
        last_prices[i] = p if has_price else last_prices[i]


@njit(cache=True, error_model="numpy")
def _scenario_group_nb(
    prices, weight_bank, banks, tradable, rates, live, net_out, out_rows, equity_out, failed_out
):
    """``GROUP`` scenarios without impact costs, in lockstep over the rows: ``nb.step_nb``'s
    arithmetic rearranged for speed, value for value the same.

    Each pass of ``step_nb`` is split into an element-wise loop (divisions, selects:
    vectorised) and a column-order sum over its results; the four scenarios' sums run in one
    loop as four independent chains. Nothing the scenarios do not report (contributions,
    exposures) is computed. ``live[k]`` False marks a padding slot or, later, a wiped-out
    scenario: it keeps being computed (harmlessly) but nothing of it is recorded any more.
    Scenario k writes row ``out_rows[k]`` of the outputs.
    """
    n_rows, n = prices.shape
    weights = np.zeros((GROUP, n))
    last_prices = np.full((GROUP, n), np.nan)
    ret = np.empty((GROUP, n))
    trade = np.empty((GROUP, n))
    equity = np.ones(GROUP)
    growth = np.empty(GROUP)
    gross = np.empty(GROUP)
    for t in range(n_rows):
        row = prices[t]
        for k in range(GROUP):
            _returns_row_nb(row, weights[k], last_prices[k], ret[k])
        w0, w1, w2, w3 = weights[0], weights[1], weights[2], weights[3]
        r0, r1, r2, r3 = ret[0], ret[1], ret[2], ret[3]
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        g3 = 0.0
        for i in range(n):
            g0 += w0[i] * r0[i]
            g1 += w1[i] * r1[i]
            g2 += w2[i] * r2[i]
            g3 += w3[i] * r3[i]
        gross[0] = g0
        gross[1] = g1
        gross[2] = g2
        gross[3] = g3
        for k in range(GROUP):
            growth[k] = 1.0 + gross[k]
            if live[k] and not growth[k] > 0.0:
                live[k] = False
                failed_out[out_rows[k]] = t
            _rebalance_row_nb(
                row, weight_bank[banks[k], t], tradable[t], growth[k], weights[k],
                last_prices[k], ret[k], trade[k],
            )
        d0, d1, d2, d3 = trade[0], trade[1], trade[2], trade[3]
        u0 = 0.0
        u1 = 0.0
        u2 = 0.0
        u3 = 0.0
        for i in range(n):
            u0 += d0[i]
            u1 += d1[i]
            u2 += d2[i]
            u3 += d3[i]
        turnover = (u0, u1, u2, u3)
        any_live = False
        for k in range(GROUP):
            if not live[k]:
                continue
            impact = 0.0
            cost = (turnover[k] * rates[k] + impact) * growth[k]
            net = gross[k] - cost
            new_equity = equity[k] * (1.0 + net)
            if not new_equity > 0.0:
                live[k] = False
                failed_out[out_rows[k]] = t
                continue
            equity[k] = new_equity
            net_out[out_rows[k], t] = net
            any_live = True
        if not any_live:
            break
    for k in range(GROUP):
        if out_rows[k] >= 0:
            equity_out[out_rows[k]] = equity[k]


@njit(cache=True, error_model="numpy", parallel=True)
def simulate_scenarios_nb(
    prices, weight_bank, bank_index, tradable, volume, cost_rates, impact_coefs,
    net_out, equity_out, failed_out,
):
    """Many portfolio scenarios in one call: scenario s runs ``nb.step_nb``'s arithmetic over
    all rows with target weights ``weight_bank[bank_index[s]]`` (T, N) and its own cost rate /
    impact. Scenarios without impact run in groups of ``GROUP`` (``_scenario_group_nb``),
    the others through ``step_nb`` itself.

    Every scenario starts in cash with equity 1. Writes net returns (S, T), final equity (S,)
    and the row at which equity was wiped out (or -1); rows from a failure on stay NaN.
    Scenarios (and groups) are independent under ``prange`` and each has its own (N,) state
    rows, so the results do not depend on thread count or grouping.
    """
    n_rows, n = prices.shape
    n_scenarios = bank_index.shape[0]
    linear = np.flatnonzero(impact_coefs == 0.0)
    with_impact = np.flatnonzero(impact_coefs != 0.0)
    for s in range(n_scenarios):
        failed_out[s] = -1
    n_groups = (linear.shape[0] + GROUP - 1) // GROUP
    for job in prange(n_groups + with_impact.shape[0]):
        if job < n_groups:
            banks = np.zeros(GROUP, np.int64)
            rates = np.zeros(GROUP)
            live = np.zeros(GROUP, np.bool_)
            out_rows = np.full(GROUP, -1, np.int64)
            for k in range(GROUP):
                idx = job * GROUP + k
                if idx < linear.shape[0]:
                    s = linear[idx]
                    banks[k] = bank_index[s]
                    rates[k] = cost_rates[s]
                    live[k] = True
                    out_rows[k] = s
            _scenario_group_nb(
                prices, weight_bank, banks, tradable, rates, live, net_out, out_rows,
                equity_out, failed_out,
            )
            continue
        s = with_impact[job - n_groups]
        targets = weight_bank[bank_index[s]]
        weights = np.zeros(n)
        last_prices = np.full(n, np.nan)
        scratch = np.empty(n)
        contribution_row = np.empty(n)
        equity = 1.0
        failed = -1
        for t in range(n_rows):
            status, gross, cost, _, _, _, new_equity = nb.step_nb(
                t, prices, targets, tradable, volume, cost_rates[s], impact_coefs[s],
                weights, last_prices, equity, scratch, contribution_row,
            )
            if status != nb.STATUS_OK:
                failed = t
                break
            equity = new_equity
            net_out[s, t] = gross - cost
        equity_out[s] = equity
        failed_out[s] = failed
