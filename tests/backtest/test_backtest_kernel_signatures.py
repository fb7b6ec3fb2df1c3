"""The kernels compile once per process whatever buffers the caller hands them.

numba types read-only and writable arrays apart. Prices from polars, Arrow or Parquet are
read-only, computed arrays are not, so before ``portfolio.kernel_input`` a process that
saw both compiled each grid kernel twice: 4-8 s more per kernel on a cold cache, as on a
fresh clone, a fresh pod or the first demo. In a fresh interpreter (its own dispatchers),
every public entry point is called with writable and read-only inputs, with and without
the optional matrices, and each kernel must end with exactly one signature.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    from quant_assets.backtest import grid_nb, nb
    from quant_assets.backtest.grid import breakout_grid, scenario_backtest, zmr_grid
    from quant_assets.backtest.portfolio import CostModel, run_backtest
    from quant_assets.backtest.weights import trailing_betas

    def frozen(a):
        a = np.array(a)
        a.flags.writeable = False
        return a

    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (2, 400)), axis=1))
    grid = dict(lookback=[10, 30], entry=[1.0, 1.5], exit=[0.0, 0.0], stop=[3.0, 3.0])
    prices = close.T.copy()
    targets = np.tile([0.5, -0.5], (prices.shape[0], 1))
    tradable = np.ones(prices.shape, dtype=bool)
    returns = np.diff(np.log(prices), axis=0)
    for make in (np.array, frozen):
        zmr_grid(make(close), **grid)
        zmr_grid(make(close), **grid, return_series=True)
        breakout_grid(make(close), **grid)
        breakout_grid(make(close), **grid, return_series=True)
        for borrow in (None, 50.0, make(np.full(prices.shape, 50.0))):
            run_backtest(make(prices), make(targets), make(tradable), CostModel(commission_bps=5.0),
                         borrow_bps=borrow)
        scenario_backtest(make(prices), make(targets[None]), make(tradable), [0, 0],
                          [CostModel(commission_bps=5.0), CostModel(commission_bps=9.0)])
        trailing_betas(make(returns), make(returns.mean(axis=1)), window=20, min_obs=10)
    kernels = {
        "zmr_grid_nb": grid_nb.zmr_grid_nb,
        "zmr_grid_series_nb": grid_nb.zmr_grid_series_nb,
        "breakout_grid_nb": grid_nb.breakout_grid_nb,
        "breakout_grid_series_nb": grid_nb.breakout_grid_series_nb,
        "first_bad_close_nb": grid_nb.first_bad_close_nb,
        "simulate_nb": nb.simulate_nb,
        "simulate_scenarios_nb": grid_nb.simulate_scenarios_nb,
        "trailing_betas_nb": nb.trailing_betas_nb,
    }
    print(json.dumps({name: [str(s) for s in k.signatures] for name, k in kernels.items()}))
    """
)


def test_each_kernel_compiles_one_signature_for_writable_and_read_only_inputs():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    signatures = json.loads(done.stdout.strip().splitlines()[-1])
    more = {name: sigs for name, sigs in signatures.items() if len(sigs) != 1}
    assert not more, f"kernels compiled more than once (or never): {json.dumps(more, indent=1)}"
