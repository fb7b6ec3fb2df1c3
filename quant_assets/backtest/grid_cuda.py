"""The z-score grid on a GPU (numba.cuda): same semantics, bit for bit the same results.

Selected with ``zmr_grid(..., backend="cuda")``. The work is the CPU engine's two phases
(:mod:`quant_assets.backtest.grid_nb`), one GPU thread per job:

* phase 1: one thread per piece of ``PIECE`` bars of one (instrument, lookback) z-score row
  or of one instrument's returns (a piece starts from the exact recompute at or before it,
  as on the CPU, so its values do not depend on where it starts);
* phase 2: one thread per (instrument, parameter lane) walks every bar with its state in
  registers; the threads of a warp share the instrument and lookback, so each bar's z-score
  and return are one broadcast load.

Why a port and not the CPU functions: CUDA kernels cannot call CPU-compiled numba functions.
The arithmetic is the CPU kernels' operation for operation, and it stays bit-identical
because (1) division and square root are IEEE (numba's default, no fastmath), (2) every
product that feeds an addition goes through ``_mul`` (``__dmul_rn``, which the CUDA compiler
never fuses into an FMA: it fuses a separate multiply and add by default, the CPU code does
not), and (3) the fused operations of the CPU booking are explicit ``_fma`` on both sides.
The statistics are finished on the host by the CPU code (``grid_nb.finish_nb``).

Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, for tests without a GPU) kernels run
as Python: products are plain, and fma is computed exactly with fractions (the simulator's
own ``cuda.fma`` rounds twice).
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numba
import numpy as np
from numba import cuda

from quant_assets.backtest import grid_nb

__all__ = ["PIECE", "run_lanes"]

PIECE = 4096  # bars per phase-1 thread
THREADS = 128  # threads per block
# device memory for one batch of instruments (closes, z-score rows, returns): at most this,
# and at most half the device's free memory
BATCH_BYTES = 32 * 2**30

if numba.config.ENABLE_CUDASIM:

    def _fma_exact(a, b, c):
        exact = Fraction(a) * Fraction(b) + Fraction(c)
        if exact != 0:
            return float(exact)
        product = a * b
        return product + c if product == 0 and c == 0 else 0.0  # IEEE signed zeros

    _fma = cuda.jit(device=True)(_fma_exact)
    _mul = cuda.jit(device=True)(lambda a, b: a * b)
else:
    from numba.cuda import libdevice

    _fma = libdevice.fma
    _mul = libdevice.dmul_rn


@cuda.jit(device=True)
def _imax(a, b):
    # (the builtin max/min of integers does not compile for CUDA in numba 0.68)
    return a if a > b else b


@cuda.jit(device=True)
def _imin(a, b):
    return a if a < b else b


@cuda.jit(device=True)
def _recompute(x, t, lookback):
    """``grid_nb.zscore_recompute_nb``: the same four partial sums in the same order."""
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
        b0 += _mul(d0, d0)
        b1 += _mul(d1, d1)
        b2 += _mul(d2, d2)
        b3 += _mul(d3, d3)
        u += 4
    while u <= t:
        d0 = x[u] - k
        a0 += d0
        b0 += _mul(d0, d0)
        u += 1
    return k, (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)


@cuda.jit(device=True)
def _zscore_piece(x, lookback, ta, tb, out, o0):
    """``grid_nb.zscore_range_nb`` for bars ``ta..tb-1`` into ``out[o0 + t - ta]``."""
    first = lookback - 1
    for t in range(ta, _imin(tb, first)):
        out[o0 + t - ta] = math.nan
    if tb <= first:
        return
    t_begin = _imax(ta, first)
    t = first + (t_begin - first) // lookback * lookback
    changed = t - lookback + 1
    for u in range(t, t - lookback + 1, -1):
        if x[u] != x[u - 1]:
            changed = u
            break
    inv_l = 1.0 / lookback
    inv_l1 = 1.0 / (lookback - 1)
    while t < tb:
        k, a1, a2 = _recompute(x, t, lookback)
        end = _imin(t + lookback, tb)
        u = t
        while u < t_begin:
            u += 1
            dn = x[u] - k
            do = x[u - lookback] - k
            a1 += dn - do
            a2 += _mul(dn, dn) - _mul(do, do)
            changed = u if x[u] != x[u - 1] else changed
        changed = u if x[u] != x[u - 1] else changed
        dn = x[u] - k
        while True:
            dev = _mul(a1, inv_l)
            var = _mul(a2 - _mul(a1, dev), inv_l1)
            ok = (changed > u - lookback + 1) and (var > 0.0)
            out[o0 + u - ta] = ((dn - dev) / math.sqrt(var)) if ok else math.nan
            u += 1
            if u >= end:
                break
            dn = x[u] - k
            do = x[u - lookback] - k
            a1 += dn - do
            a2 += _mul(dn, dn) - _mul(do, do)
            changed = u if x[u] != x[u - 1] else changed
        t = end


@cuda.jit
def _phase1(close, lookbacks, pieces, zbuf, rbuf):
    """One thread per piece of a z-score row (rows 0..G-1) or of the returns (row G)."""
    job = cuda.grid(1)
    n_inst, n_bars = close.shape
    rows = lookbacks.shape[0] + 1
    if job >= n_inst * rows * pieces:
        return
    i = job // (rows * pieces)
    rest = job - i * rows * pieces
    row = rest // pieces
    piece = rest - row * pieces
    a = n_bars * piece // pieces
    b = n_bars * (piece + 1) // pieces
    if b <= a:
        return
    x = close[i]
    if row == rows - 1:
        r = rbuf[i]
        for t in range(_imax(a, 1), b):
            r[t] = x[t] / x[t - 1] - 1.0
        if a == 0:
            r[0] = 0.0
        return
    _zscore_piece(x, lookbacks[row], a, b, zbuf[i, row], a)


@cuda.jit(device=True)
def _target(p, z, e, xt, s):
    """``grid_nb._zmr_target`` (any thresholds; NaN z: no transition)."""
    go_long = (z < -e) and (z >= -s)
    go_short = (z > e) and (z <= s)
    q_flat = 1.0 if go_long else (-1.0 if go_short else 0.0)
    q_long = 0.0 if (z > -xt) or (z < -s) else 1.0
    q_short = 0.0 if (z < xt) or (z > s) else -1.0
    return q_flat if p == 0.0 else (q_long if p > 0.0 else q_short)


@cuda.jit
def _phase2(zbuf, rbuf, lookbacks, lane_g, entry, exit_, stop, cost, start, st):
    """One thread per (instrument, lane): ``grid_nb.zmr_lanes_nb`` with ``_book_nb``."""
    job = cuda.grid(1)
    n_inst = st.shape[0]
    n_lanes = st.shape[2]
    if job >= n_inst * n_lanes:
        return
    i = job // n_lanes
    j = job - i * n_lanes
    g = lane_g[j]
    e = entry[j]
    xt = exit_[j]
    s = stop[j]
    lane = st[i]
    p = lane[0, j]
    eq = lane[1, j]
    s1 = lane[2, j]
    s2 = lane[3, j]
    nt = lane[4, j]
    pk = lane[5, j]
    wt = lane[6, j]
    wp = lane[7, j]
    z_row = zbuf[i, g]
    r_row = rbuf[i]
    for t in range(_imax(lookbacks[g] - 1, start), r_row.shape[0]):
        q = _target(p, z_row[t], e, xt, s)
        trans = q != p
        c = cost if trans else 0.0
        r = _fma(p, r_row[t], -c)
        eq = _fma(eq, r, eq)
        s1 += r
        s2 = _fma(r, r, s2)
        nt += 1.0 if trans else 0.0
        pk = eq if eq > pk else pk
        if _mul(eq, wp) < _mul(wt, pk):
            wt = eq
            wp = pk
        p = q
    lane[0, j] = p
    lane[1, j] = eq
    lane[2, j] = s1
    lane[3, j] = s2
    lane[4, j] = nt
    lane[5, j] = pk
    lane[6, j] = wt
    lane[7, j] = wp


class _Clock:
    """Seconds per step, synchronising the device at each lap (only when asked)."""

    def __init__(self, timings: dict | None):
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        cuda.synchronize()
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


def run_lanes(matrix: np.ndarray, lookbacks: np.ndarray, lane_g: np.ndarray, entry: np.ndarray,
              exit_: np.ndarray, stop: np.ndarray, cost: float, start: int,
              timings: dict | None = None) -> np.ndarray:
    """Lane states (N, N_STATE, lanes) after every bar of ``matrix`` (N, T), computed on
    the GPU in batches of instruments (the layout of ``grid._zmr_plan``; ``lane_g`` is the
    lookback group of each lane). ``timings``, if given, gets the seconds spent in
    transfers, phase 1 and phase 2 (synchronising after each: for benchmarks)."""
    n_inst, n_bars = matrix.shape
    n_groups = lookbacks.shape[0]
    st = grid_nb.new_state(n_inst, entry.shape[0])
    per_instrument = (n_groups + 2) * n_bars * 8 + st[0].nbytes
    budget = BATCH_BYTES
    if not numba.config.ENABLE_CUDASIM:
        budget = min(budget, cuda.current_context().get_memory_info().free // 2)
    batch = max(1, min(n_inst, budget // per_instrument))
    clock = _Clock(timings)
    pieces = max(1, -(-n_bars // PIECE))
    params = [cuda.to_device(np.ascontiguousarray(a)) for a in (lookbacks, lane_g, entry, exit_, stop)]
    d_look, d_lane_g, d_entry, d_exit, d_stop = params
    for i0 in range(0, n_inst, batch):
        i1 = min(i0 + batch, n_inst)
        close = cuda.to_device(matrix[i0:i1])
        d_st = cuda.to_device(st[i0:i1])
        zbuf = cuda.device_array((i1 - i0, n_groups, n_bars))
        rbuf = cuda.device_array((i1 - i0, n_bars))
        clock.lap("transfer_s")
        jobs = (i1 - i0) * (n_groups + 1) * pieces
        _phase1[-(-jobs // THREADS), THREADS](close, d_look, pieces, zbuf, rbuf)
        clock.lap("phase1_s")
        jobs = (i1 - i0) * entry.shape[0]
        _phase2[-(-jobs // THREADS), THREADS](
            zbuf, rbuf, d_look, d_lane_g, d_entry, d_exit, d_stop, cost, start, d_st
        )
        clock.lap("phase2_s")
        st[i0:i1] = d_st.copy_to_host()
        clock.lap("transfer_s")
        del close, zbuf, rbuf, d_st
    return st
