"""The seeds' headline case, run end to end: 500 instruments x 5 years of 1-minute bars x
1,000 z-score mean-reversion parameter sets (2.46e11 bar-parameters).

    .venv/bin/python benchmarks/grid_seed_case.py            # the full case
    .venv/bin/python benchmarks/grid_seed_case.py --quick    # 4 instruments (smoke test)
    .venv/bin/python benchmarks/grid_seed_case.py --instruments 50 --bars 100000

Published references for the same workload: a Rust + Ray rebuild, 45 minutes on 50 nodes;
the pandas original, 18 hours.

1. Data (once, cached): seeded geometric random walks, 491,400 one-minute closes per
   instrument (5 years x 252 days x 390 minutes), one Parquet partition per instrument
   (``instrument=I0000/bars.parquet``) under ``--cache-dir`` (default
   ``.quant/bench/seed_case/``). A complete cache is reused.
2. The sweep, timed, in a fresh child process (so that its peak RSS is its own): for each
   instrument in turn, read its partition (pyarrow), run ``zmr_grid`` over the 1,000 sets
   on all cores, append the (instrument, set) statistics to ``stats.parquet``; at the end
   write the per-set summary (``summary.parquet``) and the sets (``sets.parquet``).
3. Baseline in the same run: the straightforward per-parameter numba loop of
   ``benchmarks/backtest.py`` on the first instrument for a few sets (one per lookback),
   extrapolated per bar-parameter to the whole case.

Prints the wall time, where it went, bar-parameters per second, peak RSS and the ratio to the
baseline; the load average is printed before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numba  # noqa: E402
import numpy as np  # noqa: E402

from quant_assets.backtest import grid_parquet, param_product  # noqa: E402

BARS = 5 * 252 * 390  # 491,400
INSTRUMENTS = 500
SEED = 0
GRID = {  # 10 x 5 x 4 x 5 = 1,000 sets
    "lookback": [20, 30, 45, 60, 90, 120, 180, 240, 360, 480],
    "entry": [1.0, 1.5, 2.0, 2.5, 3.0],
    "exit": [0.0, 0.25, 0.5, 0.75],
    "stop": [3.0, 3.5, 4.0, 4.5, 5.0],
}
COST_BPS = 5.0


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def ensure_bars(cache: Path, n_instruments: int, n_bars: int) -> tuple[Path, float | None]:
    """The cached partitions for this size and seed (written if missing); generation time."""
    directory = cache / f"bars-{n_instruments}x{n_bars}-seed{SEED}"
    marker = directory / "_COMPLETE"
    if marker.exists():
        return directory, None
    t = time.perf_counter()
    grid_parquet.write_random_walk_bars(directory, n_instruments, n_bars, seed=SEED)
    marker.write_text(json.dumps({"instruments": n_instruments, "bars": n_bars, "seed": SEED}))
    return directory, time.perf_counter() - t


def child(bars_dir: str, out_dir: str) -> None:
    """The timed sweep (fresh interpreter): prints a JSON report."""
    g = param_product(**GRID)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # compile (or load the cache) and build the SIMD kernels outside the timing
    from quant_assets.backtest import zmr_grid

    zmr_grid(np.linspace(100.0, 101.0, 2000) + np.sin(np.arange(2000.0)), **g)
    report = grid_parquet.sweep_zmr_parquet(bars_dir, out_dir, **g, cost_bps=COST_BPS)
    print(json.dumps({
        "instruments": report.instruments, "bars": report.bars, "sets": report.sets,
        "read_s": report.read_s, "grid_s": report.grid_s, "write_s": report.write_s,
        "wall_s": report.wall_s, "rss_before": rss0,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": numba.get_num_threads(),
    }))


def baseline_ns(bars_dir: Path, repeats: int = 3) -> float:
    """Per-parameter numba loop (benchmarks/backtest.py) on instrument 0, one set per
    lookback: median ns per bar-parameter."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from backtest import zmr_single_nb  # the straightforward kernel

    close = grid_parquet._read_close(grid_parquet.bar_partitions(bars_dir)[0][1])
    sets = [(L, 2.0, 0.5, 4.0) for L in GRID["lookback"]]
    ann = math.sqrt(252 * 390)
    zmr_single_nb(close[:5000], 20, 2.0, 0.5, 4.0, COST_BPS / 1e4, ann)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for L, e, x, s in sets:
            zmr_single_nb(close, L, e, x, s, COST_BPS / 1e4, ann)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e9 / (close.shape[0] * len(sets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 instruments (smoke test)")
    parser.add_argument("--instruments", type=int, help=f"instruments ({INSTRUMENTS})")
    parser.add_argument("--bars", type=int, help=f"1-minute bars per instrument ({BARS:,})")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".quant" / "bench" / "seed_case")
    parser.add_argument("--out-dir", type=Path, help="result tables (default: under the cache)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    n_inst = args.instruments or (4 if args.quick else INSTRUMENTS)
    n_bars = args.bars or BARS
    n_sets = math.prod(len(v) for v in GRID.values())
    print(f"cpu threads available: {os.cpu_count()}, numba threads: {numba.config.NUMBA_NUM_THREADS}")
    print(f"load average at start (1/5/15 min): {load_average()}")
    print(f"case: {n_inst} instruments x {n_bars:,} 1-minute bars x {n_sets:,} sets {GRID}; "
          f"cost {COST_BPS} bps -> {n_inst * n_bars * n_sets:.3e} bar-parameters")

    bars_dir, gen_s = ensure_bars(args.cache_dir, n_inst, n_bars)
    size = sum(p.stat().st_size for _, p in grid_parquet.bar_partitions(bars_dir))
    print(f"data: {bars_dir} ({size / 2**30:.2f} GiB Parquet, one partition per instrument): "
          + (f"generated in {gen_s:.1f} s" if gen_s is not None else "cached"))

    out_dir = args.out_dir or (args.cache_dir / f"results-{n_inst}x{n_bars}")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(bars_dir), str(out_dir)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    bar_params = rep["bars"] * rep["sets"]
    print(f"load average after the sweep: {load_average()}")
    print(f"\nsweep ({rep['threads']} threads): wall {rep['wall_s']:.1f} s "
          f"({rep['wall_s'] / 60:.2f} min) = read {rep['read_s']:.1f} s + grid {rep['grid_s']:.1f} s "
          f"+ write {rep['write_s']:.1f} s (+ {rep['wall_s'] - rep['read_s'] - rep['grid_s'] - rep['write_s']:.1f} s other)")
    print(f"  {bar_params:.3e} bar-parameters -> {bar_params / rep['wall_s']:.3e} bar-parameters/s "
          f"end to end ({rep['wall_s'] * 1e9 * rep['threads'] / bar_params:.3f} ns per bar-parameter per core)")
    print(f"  peak RSS {rep['peak_rss'] / 2**20:.0f} MiB (after imports and compilation: "
          f"{rep['rss_before'] / 2**20:.0f} MiB); input data {size / 2**20:.0f} MiB on disk")
    print(f"  tables: {out_dir}/stats.parquet ({rep['instruments'] * rep['sets']:,} rows), "
          f"summary.parquet, sets.parquet")

    ns_base = baseline_ns(bars_dir)
    base_s = ns_base * 1e-9 * bar_params / rep["threads"]
    print(f"\nbaseline (same run): per-parameter numba loop {ns_base:.2f} ns per bar-parameter "
          f"(instrument 0, one set per lookback, median of 3) -> {base_s / 60:.1f} min for this "
          f"case on {rep['threads']} cores if perfectly parallel; the sweep is "
          f"{base_s / rep['wall_s']:.1f}x faster end to end")
    print("published: Rust + Ray rebuild 45 min on 50 nodes; pandas original 18 h")

    import pyarrow.parquet as pq

    summary = pq.read_table(out_dir / "summary.parquet").to_pandas()
    traded = summary[summary.n_trades > 0]
    best = traded.sort_values("mean_sharpe", ascending=False).head(3)
    print(f"\n{len(traded)} of {len(summary)} sets traded; the best 3 by mean Sharpe across "
          "instruments (random walks with costs: all should be <= 0):")
    print(best[["lookback", "entry", "exit", "stop", "mean_sharpe", "std_sharpe",
                "mean_total_return", "n_trades"]].to_string(index=False))


if __name__ == "__main__":
    main()
