"""The GPU z-score grid (numba CUDA) against the CPU kernels, through numba's CUDA simulator.

The simulator is switched on by an environment variable read when numba is imported, so
it runs in a child interpreter: the other tests of this process keep real numba."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quant_assets.backtest import zmr_grid

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
import numpy as np
from numba import cuda
from quant_assets.backtest import GridResult, grid_cuda, grid_nb, zmr_grid

grid_cuda.PIECE = 50            # rows cut into many pieces (phase 1)
grid_cuda.BATCH_BYTES = 30_000  # instruments in several batches
rng = np.random.default_rng(4)
# rounded closes repeat: constant windows (NaN z) while positions are open
x = np.round(100 * np.exp(np.cumsum(rng.normal(0, 4e-3, (3, 240)), axis=1)), 1)
g = {
    "lookback": np.array([2, 3, 9, 9, 9, 40, 3]),
    "entry": np.array([0.5, -0.3, 1.0, 0.0, 1.5, 0.8, 2.0]),
    "exit": np.array([0.0, 0.5, -0.5, 0.25, 0.5, 0.0, -1.0]),
    "stop": np.array([2.0, 3.0, 1.5, 9.0, 2.5, 3.0, 0.5]),
}
out = {}
for start in (1, 17):
    gpu = zmr_grid(x, **g, cost_bps=7.0, start=start, backend="cuda")
    cpu = zmr_grid(x, **g, cost_bps=7.0, start=start)
    out[f"start{start}"] = {f: bool(np.array_equal(getattr(gpu, f), getattr(cpu, f))) for f in GridResult._fields}
    out[f"trades{start}"] = int(cpu.n_trades.sum())
# phase 1 on its own: z-score rows and returns equal the CPU's bit for bit
look = np.array([2, 9, 40])
pieces = -(-x.shape[1] // grid_cuda.PIECE)
zbuf = np.empty((3, 3, x.shape[1]))
rbuf = np.empty((3, x.shape[1]))
jobs = 3 * 4 * pieces
grid_cuda._phase1[-(-jobs // 32), 32](x, look, pieces, zbuf, rbuf)
z_equal = all(
    np.array_equal(zbuf[i, k], grid_nb.rolling_zscore_nb(x[i], int(look[k])), equal_nan=True)
    for i in range(3) for k in range(3)
)
ret = np.empty_like(rbuf)
for i in range(3):
    grid_nb.returns_range_nb(x[i], 0, x.shape[1], ret[i])
out["z"] = bool(z_equal)
out["returns"] = bool(np.array_equal(rbuf, ret))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def simulated() -> dict:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_grid_equals_cpu_grid_bit_for_bit(simulated):
    for start in (1, 17):
        assert simulated[f"start{start}"] == {
            "total_return": True, "sharpe": True, "max_drawdown": True, "n_trades": True
        }
        assert simulated[f"trades{start}"] > 20  # positions were taken: the check can fail


def test_gpu_phase1_equals_cpu_zscores_and_returns(simulated):
    assert simulated["z"] and simulated["returns"]


def test_backend_is_validated():
    x = np.linspace(1.0, 2.0, 50)
    with pytest.raises(ValueError, match="backend"):
        zmr_grid(x, [5], [1.0], [0.5], [3.0], backend="tpu")
    with pytest.raises(ValueError, match="return_series"):
        zmr_grid(x, [5], [1.0], [0.5], [3.0], backend="cuda", return_series=True)
