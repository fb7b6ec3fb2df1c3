"""The z-score grid's SIMD kernels (one-pass and two-pass) and its phases: bit-identical to the
plain numba lanes, and results independent of how the work is cut (pieces, segments, chunks,
threads, blocks of bars)."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_backtest_grid import (
    BPY,
    assert_matches,
    random_walk,
    ref_stats,
    ref_zmr_positions,
    ref_zscore,
)

from quant_assets.backtest import GridResult, grid, grid_nb, param_product, zmr_grid


def run(close, g, simd=True, cost_bps=5.0, start=1, kernels="lanes"):
    return grid._zmr(close, g["lookback"], g["entry"], g["exit"], g["stop"], cost_bps, BPY,
                     start, False, simd=simd, kernels=kernels)


def assert_same(a: GridResult, b: GridResult) -> None:
    for name in GridResult._fields:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def closes(seed: int, n_inst: int, n_bars: int, rounded: bool) -> np.ndarray:
    x = np.stack([random_walk(seed + i, n_bars, vol=4e-3) for i in range(n_inst)])
    # rounded closes repeat: constant windows (no z-score) while positions are open
    return np.round(x, 0) if rounded else x


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_inst=st.integers(1, 2),
    n_bars=st.integers(2, 700),
    rounded=st.booleans(),
    groups=st.lists(
        st.tuples(st.sampled_from([2, 3, 5, 17, 40]), st.integers(1, 21)), min_size=1, max_size=3
    ),
    thresholds=st.lists(
        st.tuples(st.floats(0.0, 2.5), st.floats(-1.0, 2.0), st.floats(0.0, 4.0)), min_size=21, max_size=21
    ),
    cost_bps=st.sampled_from([0.0, 5.0]),
    start=st.integers(1, 700),
)
def test_simd_kernel_is_bit_identical_to_numba_lanes(
    seed, n_inst, n_bars, rounded, groups, thresholds, cost_bps, start
):
    # group sizes 1..21 exercise every kernel (16, 12, 8, 4 lanes) and padding; entries
    # >= 0 (0 included) keep every chunk on the SIMD path
    look, ent, ext, stp = [], [], [], []
    for lookback, count in groups:
        for e, x_, s in thresholds[:count]:
            look.append(lookback)
            ent.append(e)
            ext.append(x_)
            stp.append(s)
    g = {"lookback": np.array(look), "entry": np.array(ent), "exit": np.array(ext), "stop": np.array(stp)}
    x = closes(seed, n_inst, n_bars, rounded)
    start = min(start, n_bars - 1) if n_bars > 1 else 1
    plan = grid._zmr_plan(*grid._params(g["lookback"], g["entry"], g["exit"], g["stop"]), n_inst, True)
    assert plan.chunk_simd.all()
    reference = run(x, g, False, cost_bps, start)
    # both SIMD kernels, whichever this host runs: the one-pass one (AVX-512 hosts) and the
    # two-pass one (blocks of 256 bars: up to 700 bars cross block edges, NaN runs included)
    for kernels in ("onepass", "twopass"):
        assert_same(run(x, g, True, cost_bps, start, kernels), reference)


def test_simd_path_matches_the_reference_across_nan_bars():
    # Rounded closes: z is undefined (constant window) in the middle of open positions.
    x = np.round(random_walk(11, 1500, vol=3e-3), 0)
    z = grid_nb.rolling_zscore_nb(x, 5)
    assert np.isnan(z[4:]).sum() > 50
    g = param_product(lookback=[5], entry=[0.0, 0.8, 1.5], exit=[-0.5, 0.0, 0.5], stop=[1.2, 9.0])
    res = zmr_grid(x, **g, cost_bps=7.0)
    for k in range(g["lookback"].shape[0]):
        pos, _ = ref_zmr_positions(list(x), 5, g["entry"][k], g["exit"][k], g["stop"][k])
        assert_matches(res, ref_stats(list(x), pos, 7.0, BPY), k)


def test_negative_entries_take_the_numba_lanes_with_the_same_results():
    x = random_walk(3, 900, vol=5e-3)
    g = {"lookback": np.array([9, 9, 9, 9, 9]), "entry": np.array([-0.3, 0.5, 1.0, -1.0, 2.0]),
         "exit": np.array([0.5, 0.0, 0.25, 1.0, 0.5]), "stop": np.array([2.0, 3.0, 3.0, 0.5, 4.0])}
    plan = grid._zmr_plan(*grid._params(g["lookback"], g["entry"], g["exit"], g["stop"]), 1, True)
    assert not plan.chunk_simd.any()  # the chunk holds an entry < 0
    res = zmr_grid(x, **g)
    for k in range(5):
        pos, _ = ref_zmr_positions(list(x), 9, g["entry"][k], g["exit"][k], g["stop"][k])
        assert_matches(res, ref_stats(list(x), pos, 5.0, BPY), k)
    # the same set alone (a SIMD chunk) gives the same bits
    alone = zmr_grid(x, [9], [1.0], [0.25], [3.0])
    for name in GridResult._fields:
        assert getattr(alone, name)[0] == getattr(res, name)[2]


@pytest.mark.parametrize("lookback", [2, 3, 7, 60])
def test_zscore_pieces_equal_the_whole_series(lookback):
    rng = np.random.default_rng(lookback)
    x = np.round(random_walk(lookback, 3000, vol=3e-3), 1)
    whole = grid_nb.rolling_zscore_nb(x, lookback)
    ref = np.array(ref_zscore(x, lookback))
    assert np.array_equal(np.isnan(whole), np.isnan(ref))
    assert np.nanmax(np.abs(whole - ref)) < 1e-9
    for _ in range(20):
        cuts = np.sort(rng.choice(np.arange(1, 3000), size=rng.integers(1, 6), replace=False))
        edges = np.r_[0, cuts, 3000]
        pieces = np.empty(3000)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            out = np.empty(b - a)
            grid_nb.zscore_range_nb(x, lookback, a, b, out)
            pieces[a:b] = out
        assert np.array_equal(pieces, whole, equal_nan=True)


def test_lane_layout_pads_to_four_and_splits_for_threads():
    g = param_product(lookback=[20, 40], entry=[1.5, 2.0, 2.5], exit=[0.25, 0.5, 0.75], stop=[2.5, 3.0, 3.5])
    params = grid._params(g["lookback"], g["entry"], g["exit"], g["stop"])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        plan = grid._zmr_plan(*params, 1, True)
        assert plan.entry.shape == (56,)  # 27 sets -> 28 lanes per lookback
        assert (plan.lane_col >= 0).sum() == 54
        assert sorted(plan.lane_col[plan.lane_col >= 0].tolist()) == list(range(54))
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        split = grid._zmr_plan(*params, 1, True)
    finally:
        numba.set_num_threads(before)
    sizes = (split.chunk_j1 - split.chunk_j0).tolist()
    assert all(s % 4 == 0 for s in sizes) and sum(sizes) == 56
    assert np.array_equal(plan.exit_lo, np.nextafter(plan.exit, -np.inf))


def test_segments_pieces_and_threads_do_not_change_results(monkeypatch):
    x = closes(5, 3, 5000, rounded=False)
    g = param_product(lookback=[5, 12, 33], entry=[0.5, 1.0, 2.0], exit=[0.0, 0.5], stop=[2.0, 9.0])
    base = zmr_grid(x, **g)
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            # small buffers: many segments of bars; a lone lookback: rows cut into pieces
            monkeypatch.setattr(grid, "_BUFFER_BYTES", 1)
            assert_same(zmr_grid(x, **g), base)
            monkeypatch.undo()
            one = {k: v[:6] for k, v in g.items()}
            assert_same(zmr_grid(x[0], **one), GridResult(*(getattr(base, f)[0, :6] for f in GridResult._fields)))
    finally:
        numba.set_num_threads(before)
    # the series mode (numba lanes, recorded returns) books the same summary
    res, _ = zmr_grid(x, **g, return_series=True)
    assert_same(res, base)


@pytest.mark.parametrize("kernels", ["ceiling", "onepass_ceiling", "twopass_ceiling"])
def test_ceiling_kernels_run_on_the_same_layout(kernels):
    # the benchmark's ceiling: same phases and lanes, positions only (statistics meaningless);
    # 3000 bars cross the two-pass layout's blocks
    x = random_walk(2, 3000, vol=3e-3)
    g = param_product(lookback=[5, 20], entry=[1.0, 2.0], exit=[0.0], stop=[3.0])
    res = grid._zmr(x, g["lookback"], g["entry"], g["exit"], g["stop"], 5.0, BPY, 1, False,
                    kernels=kernels)
    full = zmr_grid(x, **g)
    assert np.array_equal(res.n_trades, full.n_trades)  # the same positions were decided
    assert (res.total_return == 0).all() and not math.isnan(res.sharpe.sum())


def test_the_host_runs_the_kernel_its_registers_suit():
    # "lanes" is the one-pass kernel on AVX-512 hosts and the two-pass one elsewhere
    from quant_assets.backtest import grid_simd

    chosen = "onepass" if grid_simd.wide_registers() else "twopass"
    assert grid_simd.kernel_addresses("lanes") == grid_simd.kernel_addresses(chosen)
    assert grid_simd.kernel_addresses("ceiling") == grid_simd.kernel_addresses(f"{chosen}_ceiling")
    with pytest.raises(ValueError, match="unknown kernels"):
        grid_simd.kernel_addresses("fastest")
