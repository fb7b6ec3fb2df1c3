"""The z-score grid on one GPU against the CPU kernel on the same host's cores.

    python benchmarks/grid_gpu.py                      # the seeds' case: 500 x 491,400 x 1,000
    python benchmarks/grid_gpu.py --fraction 0.1       # 50 of the 500 instruments
    python benchmarks/grid_gpu.py --instruments 8 --bars 50000 --cpu-instruments 4

The data are the seed case's (``benchmarks/grid_seed_case.py``): seeded random walks of
491,400 one-minute closes per instrument, generated here in memory (same generator and
seeds as the Parquet cache) -- no files needed. The grid is the same 1,000 sets.

* GPU: ``zmr_grid(..., backend="cuda")`` on all instruments (compiled first on a small
  input, outside the timing); its time per step (host<->device transfers, phase 1: z-scores
  and returns, phase 2: the parameter lanes) is measured in a second, synchronised run.
* CPU: ``zmr_grid`` (SIMD kernel, numba threads = all cores) on ``--cpu-instruments``
  instruments (default: all), one instrument per call as the seed case streams them.
* Self-check: the GPU results of the instruments the CPU ran must equal the CPU's, all four
  statistics of every set, bit for bit; prints "equal" or what differs.

Prints both wall times (median of ``--repeats``) with bar-parameters per second and the ratio.

Needs numpy, numba (and llvmlite), a CUDA driver, and NVVM + libdevice: from a CUDA
toolkit (``CUDA_HOME``) or from the ``nvidia-cuda-nvcc-cu12`` wheel (with libcudart from
``nvidia-cuda-runtime-cu12``, which torch brings), found in site-packages and linked into a
temporary CUDA_HOME because numba's built-in CUDA target only looks for versioned files in a
toolkit layout. polars is not needed (a stand-in is registered when it is missing: the
package's portfolio module imports it, the grid never uses it).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _polars_stand_in() -> None:
    try:
        import polars  # noqa: F401
    except ImportError:
        sys.modules["polars"] = types.ModuleType("polars")


def _cuda_home_from_wheels() -> str:
    """Point numba at NVVM/libdevice/cudart; returns where they come from."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return f"CUDA_HOME={os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')}"
    import site

    roots = [Path(p) / "nvidia" for p in [*site.getsitepackages(), site.getusersitepackages()]]
    roots += [Path(p) / "nvidia" for p in sys.path if p]

    def first(pattern: str) -> Path | None:
        for root in roots:
            if root.is_dir():
                hits = sorted(root.glob(pattern))
                if hits:
                    return hits[-1]
        return None

    nvvm = first("*/nvvm/lib64/libnvvm.so*")
    libdevice = first("*/nvvm/libdevice/libdevice.10.bc")
    if nvvm is None or libdevice is None:
        return "system (no nvidia-cuda-nvcc wheel found; numba searches the usual places)"
    home = Path(tempfile.mkdtemp(prefix="cuda-home-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    (home / "nvvm" / "lib64").mkdir(parents=True)
    (home / "nvvm" / "libdevice").mkdir(parents=True)
    (home / "lib64").mkdir()
    (home / "nvvm" / "lib64" / "libnvvm.so.4").symlink_to(nvvm)
    (home / "nvvm" / "libdevice" / "libdevice.10.bc").symlink_to(libdevice)
    cudart = first("*/lib/libcudart.so.*")
    if cudart is not None:
        (home / "lib64" / cudart.name).symlink_to(cudart)
    os.environ["CUDA_HOME"] = str(home)
    return f"wheels: {nvvm}, {libdevice}, {cudart or 'cudart: system loader'}"


_polars_stand_in()
TOOLKIT = _cuda_home_from_wheels()

import numba  # noqa: E402
import numpy as np  # noqa: E402

from quant_assets.backtest import GridResult, grid, param_product, zmr_grid  # noqa: E402
from quant_assets.backtest.grid_parquet import random_walk_closes  # noqa: E402

BARS = 5 * 252 * 390
INSTRUMENTS = 500
GRID = {  # the seed case's 1,000 sets (benchmarks/grid_seed_case.py)
    "lookback": [20, 30, 45, 60, 90, 120, 180, 240, 360, 480],
    "entry": [1.0, 1.5, 2.0, 2.5, 3.0],
    "exit": [0.0, 0.25, 0.5, 0.75],
    "stop": [3.0, 3.5, 4.0, 4.5, 5.0],
}
COST_BPS = 5.0


def closes(n_inst: int, n_bars: int) -> np.ndarray:
    out = np.empty((n_inst, n_bars))

    def one(i: int) -> None:
        out[i] = random_walk_closes(i, n_bars)

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # numpy's generators release the GIL
        list(pool.map(one, range(n_inst)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="of the 500 instruments")
    parser.add_argument("--instruments", type=int, help="instruments (overrides --fraction)")
    parser.add_argument("--bars", type=int, default=BARS, help=f"bars per instrument ({BARS:,})")
    parser.add_argument("--cpu-instruments", type=int, help="instruments the CPU runs (all)")
    parser.add_argument("--repeats", type=int, default=3, help="GPU timings (median)")
    args = parser.parse_args()

    from numba import cuda

    n_inst = args.instruments or max(1, round(INSTRUMENTS * args.fraction))
    n_cpu = min(n_inst, args.cpu_instruments or n_inst)
    g = param_product(**GRID)
    n_sets = g["lookback"].shape[0]
    if numba.config.ENABLE_CUDASIM:
        print("GPU: numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): a dry run, timings meaningless")
    else:
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        print(f"GPU: {name}, compute capability {device.compute_capability}; toolkit: {TOOLKIT}")
    print(f"CPU: {os.cpu_count()} cores, numba {numba.__version__} threads "
          f"{numba.config.NUMBA_NUM_THREADS}; load average {os.getloadavg()[0]:.2f}")
    print(f"case: {n_inst} instruments x {args.bars:,} bars x {n_sets:,} sets = "
          f"{n_inst * args.bars * n_sets:.3e} bar-parameters (CPU: {n_cpu} instruments)")

    t = time.perf_counter()
    x = closes(n_inst, args.bars)
    print(f"data: {x.nbytes / 2**30:.2f} GiB generated in memory in {time.perf_counter() - t:.1f} s")

    # compile both backends outside the timings
    t = time.perf_counter()
    zmr_grid(x[:2, :5000], **g, backend="cuda")
    zmr_grid(x[0, :5000], **g)
    print(f"compile / warm-up: {time.perf_counter() - t:.1f} s")

    gpu_times = []
    gpu = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        gpu = zmr_grid(x, **g, cost_bps=COST_BPS, backend="cuda")
        gpu_times.append(time.perf_counter() - t)
    steps: dict = {}
    grid._zmr(x, g["lookback"], g["entry"], g["exit"], g["stop"], COST_BPS, 252 * 390, 1,
              False, backend="cuda", timings=steps)

    cpu_rows = []
    t = time.perf_counter()
    for i in range(n_cpu):
        cpu_rows.append(zmr_grid(x[i], **g, cost_bps=COST_BPS))
    cpu_s = time.perf_counter() - t

    gpu_s = statistics.median(gpu_times)
    bp_gpu = n_inst * args.bars * n_sets
    bp_cpu = n_cpu * args.bars * n_sets
    cpu_full = cpu_s * n_inst / n_cpu
    print(f"\nGPU: {gpu_s:.2f} s median of {args.repeats} ({', '.join(f'{v:.2f}' for v in gpu_times)}) "
          f"-> {bp_gpu / gpu_s:.3e} bar-parameters/s; synchronised run: "
          + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in steps.items()))
    print(f"CPU: {cpu_s:.2f} s for {n_cpu} instruments on {numba.get_num_threads()} threads "
          f"-> {bp_cpu / cpu_s:.3e} bar-parameters/s "
          f"({cpu_s * numba.get_num_threads() * 1e9 / bp_cpu:.3f} ns per bar-parameter per core)")
    print(f"GPU vs CPU: {cpu_full / gpu_s:.2f}x faster (CPU time for all {n_inst} instruments: "
          f"{cpu_full:.1f} s{' extrapolated' if n_cpu < n_inst else ''})")

    diffs = []
    for i, row in enumerate(cpu_rows):
        for name in GridResult._fields:
            a = getattr(gpu, name)[i]
            b = getattr(row, name)
            if not np.array_equal(a, b):
                bad = np.flatnonzero(a != b)
                diffs.append(f"instrument {i} {name}: {bad.size} sets differ, max |diff| "
                             f"{np.max(np.abs(a[bad] - b[bad])):.3g}")
    trades = int(sum(r.n_trades.sum() for r in cpu_rows))
    if diffs:
        print(f"self-check: NOT equal ({len(diffs)} instrument-statistics differ)")
        for line in diffs[:10]:
            print("  " + line)
        sys.exit(1)
    print(f"self-check: equal -- GPU and CPU agree bit for bit on {n_cpu} instruments x "
          f"{n_sets} sets x 4 statistics ({trades:,} trades)")


if __name__ == "__main__":
    main()
