"""The Parquet sweep of the z-score grid (the seed case's pipeline) on a tiny size: its
tables hold, for every (instrument, set), what the reference kernels give."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_backtest_grid import BPY, assert_matches, ref_stats, ref_zmr_positions

from quant_assets.backtest import grid, grid_parquet, param_product


def test_sweep_tables_match_the_reference(tmp_path):
    bars = tmp_path / "bars"
    grid_parquet.write_random_walk_bars(bars, n_instruments=3, n_bars=1200, seed=7, vol=4e-3)
    g = param_product(lookback=[5, 20], entry=[0.5, 1.5], exit=[0.0, 0.5], stop=[2.5, 9.0])
    report = grid_parquet.sweep_zmr_parquet(bars, tmp_path / "out", **g, cost_bps=3.0)
    assert (report.instruments, report.bars, report.sets) == (3, 3600, 16)
    assert report.bar_parameters == 3600 * 16

    stats = pq.read_table(tmp_path / "out" / "stats.parquet").to_pandas()
    assert len(stats) == 3 * 16
    names = [name for name, _ in grid_parquet.bar_partitions(bars)]
    assert names == ["I0000", "I0001", "I0002"] and sorted(stats.instrument.unique()) == names
    sets = pq.read_table(tmp_path / "out" / "sets.parquet").to_pandas()
    assert np.array_equal(sets.lookback, g["lookback"]) and np.array_equal(sets.stop, g["stop"])
    per_inst = []
    for i, name in enumerate(names):
        x = grid_parquet.random_walk_closes(i, 1200, seed=7, vol=4e-3)
        rows = stats[stats.instrument == name].sort_values("set_id")
        # the plain numba lanes (the reference kernel of the SIMD one), bit for bit
        ref = grid._zmr(x, g["lookback"], g["entry"], g["exit"], g["stop"], 3.0, BPY, 1, False,
                        simd=False)
        for field in ref._fields:
            assert np.array_equal(rows[field].to_numpy(), getattr(ref, field)), field
        # and the spec's pure-Python reference for a few sets
        for k in (0, 5, 15):
            pos, _ = ref_zmr_positions(list(x), int(g["lookback"][k]), g["entry"][k], g["exit"][k], g["stop"][k])
            assert_matches(ref, ref_stats(list(x), pos, 3.0, BPY), k)
        per_inst.append(ref)
    assert sum(int(r.n_trades.sum()) for r in per_inst) > 100  # positions were taken

    summary = pq.read_table(tmp_path / "out" / "summary.parquet").to_pandas()
    sharpe = np.stack([r.sharpe for r in per_inst])
    assert np.allclose(summary.mean_sharpe, sharpe.mean(axis=0), rtol=1e-12, atol=1e-12)
    assert np.allclose(summary.std_sharpe, sharpe.std(axis=0), rtol=1e-9, atol=1e-9)
    assert np.array_equal(summary.n_trades, sum(r.n_trades for r in per_inst))
    assert np.array_equal(summary.worst_max_drawdown, np.max([r.max_drawdown for r in per_inst], axis=0))


def test_missing_partitions_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="instrument="):
        grid_parquet.sweep_zmr_parquet(tmp_path, tmp_path / "out", [5], [1.0], [0.5], [3.0])
