"""Numba kernels of the parameter-grid engine (no Python objects, no polars, no Dagster).

The conventions are documented in :mod:`quant_assets.backtest.grid`; these kernels trust
their caller to have validated the inputs.

Lanes. Parameter sets are sorted by lookback (the rolling statistic they share) and laid out
as *lanes*: each lookback group is padded to a multiple of ``LANES`` with lanes that never
trade. A lane's state is one column of an (``N_STATE``, lanes) block, the rows below; one
pass over the bars advances all lanes of a chunk, so the work per bar-parameter is a few
compares and multiply-adds. Nothing is reduced across threads and a lane's arithmetic only
depends on its instrument and lookback, so results do not depend on the number of threads,
the chunking or the order of the parameter sets.

Z-score grid (:func:`zmr_grid_nb`), per segment of bars: phase 1 computes the z-scores of
every (instrument, lookback) and the returns of every instrument into buffers (in parallel,
long series cut into pieces); phase 2 advances every (instrument, chunk of lanes) over the
segment (in parallel). Computing the rolling statistic once per lookback, not once per
chunk, is what lets a single instrument use both cores. Phase 2 runs the SIMD kernel of
:mod:`quant_assets.backtest.grid_simd` for chunks whose entries are all >= 0 and
:func:`zmr_lanes_nb` (the plain numba loop, any thresholds, optionally recording per-bar
returns) otherwise; both book bit-identical arithmetic (``_book_nb``).

Booking (one place, mirrored by the SIMD kernel): ``r = fma(p, ret, -c)`` with ``c`` the
cost on a bar where the position changes (|q - p| = 1: never long <-> short directly);
``equity = fma(equity, r, equity)``; ``s1 += r``; ``s2 = fma(r, r, s2)``; the drawdown keeps
the running peak and the worst (equity, peak) pair by cross-multiplication (no division per
bar); transitions are counted (trades = (transitions + |final position|) / 2).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from quant_assets.backtest import nb

# Relative size below which a one-pass variance is indistinguishable from rounding error.
_VAR_EPS = 8.0 * 2.220446049250313e-16

# Bars per block of the per-chunk kernels (breakout, series mode): the shared per-bar
# statistics of a block are computed first, then the lanes run over it from L1 cache.
BLOCK = 512
# Breakout lanes are padded to a multiple of this so that LLVM's vector loop over parameter
# sets has no scalar remainder (16 doubles = two 512-bit vectors).
LANES = 16
# Z-score lanes are padded per lookback to a multiple of this: the SIMD kernels take 16, 12,
# 8 or 4 lanes (a 4-lane vector costs half an 8-lane one), so 27 sets take 28 lanes, not 32.
ZMR_LANES = 4

# State rows of a lane (rows 0-7 are also the SIMD kernel's layout; row 8 only breakout's).
_POS, _EQ, _S1, _S2, _NT, _PEAK, _WT, _WP, _PRICE_IN = range(9)
N_STATE = 9


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma``): the same operation as the SIMD kernel's."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d, d]), "llvm.fma.f64")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _simd_lanes(typingctx, addr, st, st_off, ld, m, z, z_off, ret, r_off, n, ent, xlo, stp, p_off, cost):
    """Call a kernel of :mod:`grid_simd` at ``addr`` on lanes ``p_off..p_off+m`` of ``st``
    (state block starting ``st_off`` doubles into ``st``, rows ``ld`` apart) over bars
    ``z[z_off:z_off+n]`` / ``ret[r_off:r_off+n]``. The address is a run-time argument, so
    the calling kernel stays cacheable."""
    sig = types.void(addr, st, st_off, ld, m, z, z_off, ret, r_off, n, ent, xlo, stp, p_off, cost)

    def codegen(context, builder, signature, args):
        (addr_v, st_v, st_off_v, ld_v, m_v, z_v, z_off_v, r_v, r_off_v, n_v, ent_v, xlo_v,
         stp_v, p_off_v, cost_v) = args
        tys = signature.args

        def data(k, value, off):
            array = context.make_array(tys[k])(context, builder, value)
            return builder.gep(array.data, [off])

        pd = ir.DoubleType().as_pointer()
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [pd, i64, i64, pd, pd, i64, pd, pd, pd, ir.DoubleType()])
        fn = builder.inttoptr(addr_v, fnty.as_pointer())
        builder.call(fn, [
            data(1, st_v, st_off_v), ld_v, m_v, data(5, z_v, z_off_v), data(7, r_v, r_off_v), n_v,
            data(10, ent_v, p_off_v), data(11, xlo_v, p_off_v), data(12, stp_v, p_off_v), cost_v,
        ])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, error_model="numpy")
def zscore_recompute_nb(x, t, lookback):
    """Exact two-pass sums of the window ``x[t-L+1..t]`` around its mean ``k``.

    Returns ``(k, a1, a2)`` with ``a1 = sum(x - k)`` (~0) and ``a2 = sum((x - k)^2)``. Each
    sum runs as four interleaved partial sums (a fixed order, so results are deterministic):
    one chain of dependent adds would cost its latency per element.
    """
    lo = t - lookback + 1
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    u = lo
    while u + 3 <= t:
        s0 += x[u]
        s1 += x[u + 1]
        s2 += x[u + 2]
        s3 += x[u + 3]
        u += 4
    while u <= t:
        s0 += x[u]
        u += 1
    k = ((s0 + s1) + (s2 + s3)) / lookback
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    b0 = 0.0
    b1 = 0.0
    b2 = 0.0
    b3 = 0.0
    u = lo
    while u + 3 <= t:
        d0 = x[u] - k
        d1 = x[u + 1] - k
        d2 = x[u + 2] - k
        d3 = x[u + 3] - k
        a0 += d0
        a1 += d1
        a2 += d2
        a3 += d3
        b0 += d0 * d0
        b1 += d1 * d1
        b2 += d2 * d2
        b3 += d3 * d3
        u += 4
    while u <= t:
        d0 = x[u] - k
        a0 += d0
        b0 += d0 * d0
        u += 1
    return k, (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)


@njit(cache=True, error_model="numpy")
def _zscores_nb(out, dev_x, s1, s2, changed, u0, lookback):
    """z from the window sums of bars ``u0..`` (apart from the sequential loop so that
    the divisions and square roots vectorise): ``dev_x = x - k``, ``s1``/``s2`` the sums
    of ``x - k`` and its square, ``changed`` the last bar whose close moved."""
    inv_l = 1.0 / lookback
    inv_l1 = 1.0 / (lookback - 1)
    for i in range(out.shape[0]):
        a1 = s1[i]
        dev = a1 * inv_l
        var = (s2[i] - a1 * dev) * inv_l1
        ok = (changed[i] > u0 + i - lookback + 1) & (var > 0.0)
        out[i] = ((dev_x[i] - dev) / math.sqrt(var)) if ok else np.nan


@njit(cache=True, error_model="numpy")
def zscore_range_nb(x, lookback, ta, tb, out):
    """Z-scores of bars ``ta..tb-1`` into ``out[0:tb-ta]`` (NaN: no transition).

    ``z_t = (x_t - mean) / std`` over the window ``x[t-L+1..t]`` (ddof=1), NaN before bar
    L-1 and where the window is constant. Sums are kept of ``x - k`` (shifted by the window
    mean ``k`` of the last exact recompute, which keeps the one-pass variance well
    conditioned) and slid by one bar; they are recomputed exactly by two passes at bars
    L-1, 2L-1, 3L-1, ..., so rounding drift never accumulates over more than L updates. The
    value at a bar does not depend on ``ta`` (a range starts from the recompute at or
    before it), so a series can be cut into pieces computed in parallel. A constant window
    is detected exactly (the last bar whose close differs from the one before), not through
    a rounded variance.
    """
    first = lookback - 1
    for t in range(ta, min(tb, first)):
        out[t - ta] = np.nan
    if tb <= first:
        return
    t_begin = max(ta, first)
    t = first + (t_begin - first) // lookback * lookback
    # the last bar <= t whose close differs from the previous one (older ones do not matter)
    changed = t - lookback + 1
    for u in range(t, t - lookback + 1, -1):
        if x[u] != x[u - 1]:
            changed = u
            break
    # per-bar sums of the bars not yet turned into z (every ~BLOCK bars)
    cap = BLOCK + lookback
    dev_x = np.empty(cap)
    s1 = np.empty(cap)
    s2 = np.empty(cap)
    moved = np.empty(cap, np.int64)
    done = t_begin
    while t < tb:
        # one recompute interval: the exact sums at bar t, then L - 1 one-bar slides
        k, a1, a2 = zscore_recompute_nb(x, t, lookback)
        end = min(t + lookback, tb)
        u = t
        while u < t_begin:  # first interval only: slide to the first bar wanted
            u += 1
            dn = x[u] - k
            do = x[u - lookback] - k
            a1 += dn - do
            a2 += dn * dn - do * do
            changed = u if x[u] != x[u - 1] else changed
        changed = u if x[u] != x[u - 1] else changed
        dn = x[u] - k
        while True:
            i = u - done
            dev_x[i] = dn
            s1[i] = a1
            s2[i] = a2
            moved[i] = changed
            u += 1
            if u >= end:
                break
            dn = x[u] - k
            do = x[u - lookback] - k
            a1 += dn - do
            a2 += dn * dn - do * do
            changed = u if x[u] != x[u - 1] else changed
        t = end
        if t - done >= BLOCK or t >= tb:
            n = t - done
            _zscores_nb(out[done - ta : t - ta], dev_x[:n], s1[:n], s2[:n], moved[:n], done, lookback)
            done = t


@njit(cache=True, error_model="numpy")
def rolling_zscore_nb(x, lookback):
    """The z-score series (T,) that the grid kernels see (NaN where no transition happens)."""
    out = np.empty(x.shape[0])
    zscore_range_nb(x, lookback, 0, x.shape[0], out)
    return out


@njit(cache=True, error_model="numpy")
def returns_range_nb(x, ta, tb, out):
    """Close-to-close returns of bars ``ta..tb-1`` into ``out[0:tb-ta]`` (bar 0: 0)."""
    for t in range(max(ta, 1), tb):
        out[t - ta] = x[t] / x[t - 1] - 1.0
    if ta == 0 and tb > 0:
        out[0] = 0.0


@njit(cache=True, error_model="numpy")
def new_state(n_instruments, n_lanes):
    """Lane states (N, N_STATE, lanes): equity, peak and the worst pair start at 1."""
    state = np.zeros((n_instruments, N_STATE, n_lanes))
    for r in (_EQ, _PEAK, _WT, _WP):
        state[:, r, :] = 1.0
    return state


@njit(cache=True, error_model="numpy", inline="always")
def _book_nb(st, j, p, q, ret, cost):
    """Book the bar's return of lane ``j`` moving from position ``p`` to ``q``; returns r."""
    trans = q != p
    c = cost if trans else 0.0
    r = fma(p, ret, -c)
    e = st[_EQ, j]
    e = fma(e, r, e)
    st[_EQ, j] = e
    st[_S1, j] += r
    st[_S2, j] = fma(r, r, st[_S2, j])
    st[_NT, j] += 1.0 if trans else 0.0
    pk = st[_PEAK, j]
    pk = e if e > pk else pk
    st[_PEAK, j] = pk
    wt = st[_WT, j]
    wp = st[_WP, j]
    worse = e * wp < wt * pk
    st[_WT, j] = e if worse else wt
    st[_WP, j] = pk if worse else wp
    st[_POS, j] = q
    return r


@njit(cache=True, error_model="numpy")
def finish_nb(st, n_returns, ann, lane_col, out_total, out_sharpe, out_mdd, out_trades):
    """Summary statistics of lanes (N_STATE, lanes), written to columns ``lane_col``
    (-1: a padding lane, not reported)."""
    for j in range(lane_col.shape[0]):
        col = lane_col[j]
        if col < 0:
            continue
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
        out_mdd[col] = 1.0 - st[_WT, j] / st[_WP, j]
        out_trades[col] = np.int64(st[_NT, j] + abs(st[_POS, j])) // 2


@njit(cache=True, error_model="numpy")
def _lanes(values, k0, k1):
    """Parameter values ``k0:k1`` padded with zeros to a multiple of LANES (padding lanes
    never enter a position: 0 < a <= 0 never holds)."""
    m = k1 - k0
    out = np.zeros((m + LANES - 1) // LANES * LANES)
    # a loop, not ``out[:m] = values[k0:k1]``: numba 0.68 compiles a shape-mismatch message
    # (str of tuples, f-strings) into every slice assignment, 2-3 s on a cold cache
    for i in range(m):
        out[i] = values[k0 + i]
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _zmr_target(p, z, e, xt, s):
    """Position after a bar of z-score ``z`` from position ``p`` (branch-free selects; NaN
    z makes every comparison False: no transition)."""
    go_long = (z < -e) & (z >= -s)
    go_short = (z > e) & (z <= s)
    q_flat = 1.0 if go_long else (-1.0 if go_short else 0.0)
    q_long = 0.0 if (z > -xt) | (z < -s) else 1.0
    q_short = 0.0 if (z < xt) | (z > s) else -1.0
    return q_flat if p == 0.0 else (q_long if p > 0.0 else q_short)


@njit(cache=True, error_model="numpy")
def zmr_lanes_nb(st, j0, j1, zb, z0, rb, r0, n, entry, exit_, stop, cost, rec):
    """Advance lanes ``j0..j1`` of ``st`` (N_STATE, lanes) over ``n`` bars: z-scores
    ``zb[z0:z0+n]``, returns ``rb[r0:r0+n]``; any thresholds. When ``rec`` is not empty
    ((j1-j0, n)) each lane's per-bar return is stored in it. The plain numba form of the
    SIMD kernel (bit-identical results), one bar per pass over the lanes."""
    keep = rec.shape[0] > 0
    for i in range(n):
        z = zb[z0 + i]
        ret = rb[r0 + i]
        for j in range(j0, j1):
            p = st[_POS, j]
            q = _zmr_target(p, z, entry[j], exit_[j], stop[j])
            r = _book_nb(st, j, p, q, ret, cost)
            if keep:
                rec[j - j0, i] = r


@njit(cache=True, error_model="numpy")
def _z_phase_job(close, lookbacks, t0, t1, pieces, zbuf, rbuf, job):
    """Phase 1 job ``job``: one piece of one (instrument, lookback) z-score row, or one
    instrument's returns, for bars ``t0..t1-1`` of the segment."""
    per = lookbacks.shape[0] * pieces + 1
    i = job // per
    k = job - i * per
    x = close[i]
    if k == per - 1:
        returns_range_nb(x, t0, t1, rbuf[i])
        return
    g = k // pieces
    piece = k - g * pieces
    a = t0 + (t1 - t0) * piece // pieces
    b = t0 + (t1 - t0) * (piece + 1) // pieces
    if b > a:
        zscore_range_nb(x, lookbacks[g], a, b, zbuf[i, g, a - t0 :])


@njit(cache=True, error_model="numpy")
def _lane_phase_job(
    close, lookbacks, entry, exit_lo, exit_, stop, chunk_g, chunk_j0, chunk_j1, chunk_simd,
    cost, start, t0, t1, zbuf, rbuf, st, addrs, job,
):
    """Phase 2 job: chunk ``job % C`` of instrument ``job // C`` over bars ``t0..t1-1``.
    ``addrs``: the SIMD kernels for 16, 12, 8 and 4 lanes."""
    n_chunks = chunk_g.shape[0]
    i = job // n_chunks
    c = job - i * n_chunks
    g = chunk_g[c]
    first = max(lookbacks[g] - 1, start)
    a = max(t0, first)
    if a >= t1:
        return  # still warming up: every position is flat, nothing to book
    j0 = chunk_j0[c]
    j1 = chunk_j1[c]
    n = t1 - a
    zrow = zbuf[i, g]
    rrow = rbuf[i]
    if chunk_simd[c]:
        n_lanes = st.shape[2]
        base = i * st.shape[1] * n_lanes
        m16 = (j1 - j0) // 16 * 16
        if m16 > 0:
            _simd_lanes(addrs[0], st, base + j0, n_lanes, m16, zrow, a - t0, rrow, a - t0, n,
                        entry, exit_lo, stop, j0, cost)
        rest = j1 - j0 - m16  # 12, 8 or 4 lanes: addrs[1], [2], [3]
        if rest > 0:
            _simd_lanes(addrs[4 - rest // 4], st, base + j0 + m16, n_lanes, rest, zrow, a - t0,
                        rrow, a - t0, n, entry, exit_lo, stop, j0 + m16, cost)
    else:
        zmr_lanes_nb(st[i], j0, j1, zrow, a - t0, rrow, a - t0, n, entry, exit_, stop, cost,
                     np.zeros((0, 0)))


@njit(cache=True, error_model="numpy", parallel=True)
def zmr_grid_nb(
    close, lookbacks, entry, exit_lo, exit_, stop, chunk_g, chunk_j0, chunk_j1, chunk_simd,
    cost, start, segment, pieces, addrs, st,
):
    """Advance the lane states ``st`` (N, N_STATE, lanes) of the z-score grid over every bar
    of ``close`` (N, T). Lane parameters are the padded, lookback-sorted ``entry``,
    ``exit_lo`` (the double below ``exit_``), ``exit_`` and ``stop``; chunk c holds lanes
    ``chunk_j0[c]..chunk_j1[c]`` of lookback ``lookbacks[chunk_g[c]]`` and runs the SIMD
    kernels (``addrs``: 16, 12, 8, 4 lanes) when ``chunk_simd[c]``. Bars go in segments of
    ``segment`` (bounding the z/return buffers); each lookback row is cut into ``pieces``
    for phase 1. Call it under ``numba.parallel_chunksize(1)``: jobs differ in size
    (returns vs z rows, 16- vs 12-lane chunks) and are best handed out one at a time."""
    n_inst, n_bars = close.shape
    n_groups = lookbacks.shape[0]
    width = min(segment, n_bars)
    zbuf = np.empty((n_inst, n_groups, width))
    rbuf = np.empty((n_inst, width))
    n_z = n_inst * (n_groups * pieces + 1)
    n_l = n_inst * chunk_g.shape[0]
    for t0 in range(0, n_bars, segment):
        t1 = min(t0 + segment, n_bars)
        for job in prange(n_z):
            _z_phase_job(close, lookbacks, t0, t1, pieces, zbuf, rbuf, job)
        for job in prange(n_l):
            _lane_phase_job(
                close, lookbacks, entry, exit_lo, exit_, stop, chunk_g, chunk_j0, chunk_j1,
                chunk_simd, cost, start, t0, t1, zbuf, rbuf, st, addrs, job,
            )


@njit(cache=True, error_model="numpy")
def _add_series_nb(series, rec, lane_col, j0, t0, n_rows, n):
    """Add recorded returns (lanes x bars) to the series rows of their columns at bar t0."""
    for j in range(n_rows):
        col = lane_col[j0 + j]
        if col < 0:
            continue
        row = series[col]
        for i in range(n):
            row[t0 + i] += rec[j, i]


@njit(cache=True, error_model="numpy", parallel=True)
def zmr_grid_series_nb(
    close, lookbacks, entry, exit_, stop, chunk_g, chunk_j0, chunk_j1, lane_col, cost,
    start, segment, pieces, st, series,
):
    """As :func:`zmr_grid_nb` (plain numba lanes), also summing each set's per-bar returns
    over instruments into ``series`` (P, T). Chunks run in parallel and each loops over the
    instruments in order, so every row is summed by one thread in a fixed order."""
    n_inst, n_bars = close.shape
    n_groups = lookbacks.shape[0]
    width = min(segment, n_bars)
    zbuf = np.empty((n_inst, n_groups, width))
    rbuf = np.empty((n_inst, width))
    n_z = n_inst * (n_groups * pieces + 1)
    for t0 in range(0, n_bars, segment):
        t1 = min(t0 + segment, n_bars)
        for job in prange(n_z):
            _z_phase_job(close, lookbacks, t0, t1, pieces, zbuf, rbuf, job)
        for c in prange(chunk_g.shape[0]):
            g = chunk_g[c]
            j0 = chunk_j0[c]
            j1 = chunk_j1[c]
            a = max(t0, max(lookbacks[g] - 1, start))
            rec = np.empty((j1 - j0, BLOCK))
            for i in range(n_inst):
                for b0 in range(a, t1, BLOCK):
                    n = min(BLOCK, t1 - b0)
                    zmr_lanes_nb(st[i], j0, j1, zbuf[i, g], b0 - t0, rbuf[i], b0 - t0, n, entry,
                                 exit_, stop, cost, rec)
                    _add_series_nb(series, rec, lane_col, j0, b0, j1 - j0, n)


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
    """Donchian breakout for one instrument ``x`` (T,) and the lookback-sorted parameter
    sets ``k0:k1`` (columns ``order[k0:k1]``). Positions stay flat and nothing is booked
    before bar ``start``; when ``series`` is not empty ((P, T)), each set's per-bar return
    is added to its row."""
    ent = _lanes(entry, k0, k1)
    ext = _lanes(exit_, k0, k1)
    stp = _lanes(stop, k0, k1)
    m = ent.shape[0]
    lane_col = np.full(m, -1, np.int64)
    lane_col[: k1 - k0] = order[k0:k1]
    keep = series.shape[0] > 0
    # Stop levels as multipliers of the entry close, hoisted out of the bar loop.
    long_stop = 1.0 - stp
    short_stop = 1.0 + stp
    st = new_state(1, m)[0]
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
        returns_range_nb(x, t0, t1, rb)
        i0 = max(0, first - t0)
        if keep:
            for i in range(i0, t1 - t0):
                _breakout_lanes_nb(
                    st, m, ub[i], rb[i], x[t0 + i], ent, ext, long_stop, short_stop, cost,
                    rec, i, True,
                )
            _add_series_nb(series, rec[:, i0:], lane_col, 0, t0 + i0, m, t1 - t0 - i0)
        else:
            for i in range(i0, t1 - t0):
                _breakout_lanes_nb(
                    st, m, ub[i], rb[i], x[t0 + i], ent, ext, long_stop, short_stop, cost,
                    rec, i, False,
                )
    finish_nb(st, n_bars - start, ann, lane_col, out_total, out_sharpe, out_mdd, out_trades)


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
