"""Benchmark of the parameter-grid engine and the portfolio simulator (prints a table).

    .venv/bin/python benchmarks/backtest.py            # full run (~several minutes)
    .venv/bin/python benchmarks/backtest.py --quick    # small sizes (< 1 minute)

Compared on the same synthetic data (a geometric random walk), medians of ``--repeats``
(the zmr_grid timings and the ceiling interleaved round by round, so load changes hit all):

* ``zmr_grid`` (1 and 2 numba threads), and beside the 2-thread speed-up the machine's own
  2-core scaling for the same work: two interpreters each running the 1-thread grid at once
  (``--scaling-only`` runs just these). On a VM two vCPUs may share a physical core, caches
  or memory bandwidth; no threading of one instrument can beat what two independent
  processes get;
* the machine's ceiling for this layout: the same run (z-score phase, same lanes, same SIMD
  loop and loads) with kernels that only decide positions (the threshold compares and
  selects, transitions counted) and book nothing; the gap between the two rows is the cost
  of the bookkeeping (returns, equity, Sharpe sums, drawdown);
* a straightforward per-parameter numba loop: one njit call per parameter set, recomputing
  its own rolling statistics;
* vectorbt ``Portfolio.from_signals`` with the equivalent long/short entry/exit signals, run
  from a separate interpreter (``--vbt-python``, default /tmp/vbt-venv/bin/python) because
  vectorbt is not a dependency; on a bar subset, extrapolated per bar-parameter;
* pandas rolling + a Python loop over bars, on a subset, extrapolated per bar-parameter.

Timings are ns per bar-parameter per core (wall time x threads / (bars x parameter sets)).
Peak memory is measured in a fresh subprocess (the peak resident memory during the call
over the resident memory before it, Linux's VmHWM reset first). The portfolio part runs ``scenario_backtest`` (``step_nb``'s arithmetic over
many weight scenarios, four at a time under prange) and reports instrument-days per second
per core. The options part (``--options-only`` runs it alone) times the portfolio-construction
options of one strategy run (sector-neutral weights, trailing betas, the beta-neutral
projection, borrow and a turnover limit in ``run_backtest``) next to the plain weight builder
and the plain ``run_backtest``. The machine may be shared: the 1-minute load average is printed next to each part
(a load above the core count inflates every timing, the 2-thread ones most).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_assets.backtest import (  # noqa: E402
    CostModel,
    grid,
    grid_simd,
    param_product,
    scenario_backtest,
    zmr_grid,
)

GRID = {
    "lookback": [20, 40, 60, 80, 100],
    "entry": [1.5, 2.0, 2.5],
    "exit": [0.25, 0.5, 0.75],
    "stop": [2.5, 3.0, 3.5],
}
COST_BPS = 5.0
BPY = 252 * 390


def walk(n_instruments: int, n_bars: int, seed: int = 0) -> np.ndarray:
    # In place: no temporaries, so the memory probe's high-water mark starts at the input.
    rng = np.random.default_rng(seed)
    close = rng.normal(0.0, 1e-3, (n_instruments, n_bars))
    np.cumsum(close, axis=1, out=close)
    np.exp(close, out=close)
    close *= 100.0
    return close


def vector_isa() -> str:
    """The host's widest vector unit, printed because the grid's figures depend on it: on an
    AVX-512 host the 32 vector registers hold two 8-lane groups' whole state, on an AVX2 one
    (16 registers of half the width) the state spills (0.62 against about 2 ns per
    bar-parameter on the 2-core machines this was measured on)."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    widest = "AVX-512" if features.get("avx512f") else "AVX2" if features.get("avx2") else "SSE/other"
    return f"host CPU {llvm.get_host_cpu_name()}, widest vectors {widest}"


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@njit(cache=True, error_model="numpy")
def zmr_single_nb(x, lookback, entry, exit_, stop, cost, ann):
    """The straightforward baseline: one parameter set, its own running sums, branches."""
    n_bars = x.shape[0]
    pos = 0
    equity = 1.0
    peak = 1.0
    mdd = 0.0
    s1 = 0.0
    s2 = 0.0
    trades = 0
    sm = 0.0
    sq = 0.0
    for t in range(n_bars):
        sm += x[t]
        sq += x[t] * x[t]
        if t >= lookback:
            sm -= x[t - lookback]
            sq -= x[t - lookback] * x[t - lookback]
        q = pos
        if t >= lookback - 1:
            mean = sm / lookback
            var = (sq - sm * mean) / (lookback - 1)
            if var > 0.0:
                z = (x[t] - mean) / math.sqrt(var)
                if pos == 0:
                    if -stop <= z < -entry:
                        q = 1
                    elif entry < z <= stop:
                        q = -1
                elif pos == 1:
                    if z > -exit_ or z < -stop:
                        q = 0
                elif z < exit_ or z > stop:
                    q = 0
        if t >= 1:
            r = pos * (x[t] / x[t - 1] - 1.0) - cost * abs(q - pos)
            equity *= 1.0 + r
            peak = max(peak, equity)
            mdd = max(mdd, 1.0 - equity / peak)
            s1 += r
            s2 += r * r
            if pos == 0 and q != 0:
                trades += 1
        pos = q
    n = n_bars - 1
    mean = s1 / n
    var = s2 / n - mean * mean
    sharpe = mean / math.sqrt(var) * ann if var > 0 else 0.0
    return equity - 1.0, sharpe, mdd, trades


def per_param_loop(close: np.ndarray, g: dict) -> None:
    ann = math.sqrt(BPY)
    for row in close:
        for k in range(g["lookback"].shape[0]):
            zmr_single_nb(
                row, int(g["lookback"][k]), g["entry"][k], g["exit"][k], g["stop"][k],
                COST_BPS / 1e4, ann,
            )


def pandas_loop(close: np.ndarray, g: dict) -> None:
    """pandas rolling z-scores + a plain Python loop over bars for each parameter set."""
    import pandas as pd

    series = pd.Series(close)
    cost = COST_BPS / 1e4
    for k in range(g["lookback"].shape[0]):
        lookback = int(g["lookback"][k])
        e, xx, s = g["entry"][k], g["exit"][k], g["stop"][k]
        roll = series.rolling(lookback)
        z = ((series - roll.mean()) / roll.std(ddof=1)).to_numpy()
        pos, equity, peak, mdd, rets = 0, 1.0, 1.0, 0.0, []
        for t in range(1, close.shape[0]):
            q = pos
            zt = z[t]
            if zt == zt:
                if pos == 0:
                    q = 1 if -s <= zt < -e else (-1 if e < zt <= s else 0)
                elif pos == 1:
                    q = 0 if (zt > -xx or zt < -s) else 1
                else:
                    q = 0 if (zt < xx or zt > s) else -1
            r = pos * (close[t] / close[t - 1] - 1.0) - cost * abs(q - pos)
            rets.append(r)
            equity *= 1.0 + r
            peak = max(peak, equity)
            mdd = max(mdd, 1.0 - equity / peak)
            pos = q


VBT_SCRIPT = r"""
import json, sys, time
import numpy as np, pandas as pd
import vectorbt as vbt
n_bars, repeats = int(sys.argv[1]), int(sys.argv[2])
grid = json.loads(sys.argv[3]); cost = float(sys.argv[4])
mesh = np.meshgrid(*[np.asarray(v) for v in grid.values()], indexing="ij")
g = {k: m.ravel() for k, m in zip(grid, mesh)}
rng = np.random.default_rng(0)
close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, (1, 1_000_000)), axis=1))[0, :n_bars]

def run(x):
    s = pd.Series(x)
    cols = []
    for L in np.unique(g["lookback"]):
        r = s.rolling(int(L))
        cols.append(((s - r.mean()) / r.std(ddof=1)).to_numpy())
    zs = np.stack(cols, axis=1)
    z = zs[:, np.searchsorted(np.unique(g["lookback"]), g["lookback"])]
    e, xx, st = g["entry"], g["exit"], g["stop"]
    entries = (z < -e) & (z >= -st)
    exits = (z > -xx) | (z < -st)
    short_entries = (z > e) & (z <= st)
    short_exits = (z < xx) | (z > st)
    pf = vbt.Portfolio.from_signals(
        pd.Series(x), entries, exits, short_entries=short_entries, short_exits=short_exits,
        fees=cost, upon_opposite_entry="ignore", freq="1min",
    )
    return pf.total_return(), pf.sharpe_ratio(), pf.max_drawdown(), pf.trades.count()

run(close[:2000])  # compile
times = []
for _ in range(repeats):
    t = time.perf_counter(); run(close); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": float(np.median(times)), "version": vbt.__version__}))
"""


def vectorbt_time(python: str, n_bars: int, repeats: int) -> tuple[float | None, str]:
    if not Path(python).exists():
        return None, "vectorbt: not installed"
    proc = subprocess.run(
        [python, "-c", VBT_SCRIPT, str(n_bars), str(repeats), json.dumps(GRID), str(COST_BPS / 1e4)],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return None, f"vectorbt: not installed or failed ({tail[0][:120]})"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["seconds"], f"vectorbt {out['version']}"


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_probe(n_instruments: int, n_bars: int) -> dict:
    """Runs in a fresh interpreter: the peak resident memory during one zmr_grid call over
    the resident memory before it. The peak (VmHWM) is reset first: compiling may have
    peaked higher than the call does."""
    g = param_product(**GRID)
    zmr_grid(walk(1, 3000)[0], **g)  # compile / load the cache first
    close = walk(n_instruments, n_bars)
    close = close[0] if n_instruments == 1 else close
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_bytes("VmRSS")
    zmr_grid(close, **g)
    return {"input": close.nbytes, "extra": max(0, _status_bytes("VmHWM") - before)}


def run_memory_probe(n_instruments: int, n_bars: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--mem-probe", str(n_instruments), str(n_bars)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def solo_probe(n_bars: int, repeats: int) -> None:
    """Runs in a fresh interpreter: the 1-thread zmr_grid on its own copy of the 1-instrument
    series, after the parent's go (a line on stdin), ``repeats`` times; prints the times."""
    numba.set_num_threads(1)
    g = param_product(**GRID)
    close = walk(1, n_bars)[0]
    zmr_grid(close[:2000], **g)  # compile / load the cache before the go
    print("ready", flush=True)
    sys.stdin.readline()
    times = [timed(lambda: zmr_grid(close, **g)) for _ in range(repeats)]
    print(json.dumps(times), flush=True)


def processes_side_by_side(n_procs: int, n_bars: int, repeats: int) -> list[float]:
    """Per-call times of `n_procs` interpreters each running the 1-thread grid at once (they
    share nothing: no memory, no threads, no scheduling of numba's): how a whole grid scales
    over this machine's cores when nothing in the engine can be the reason it does not."""
    procs = [subprocess.Popen([sys.executable, __file__, "--solo-probe", str(n_bars), str(repeats)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(n_procs)]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("solo probe failed to start")
    for proc in procs:  # the go as close together as pipes allow
        proc.stdin.write("go\n")
        proc.stdin.flush()
    times = []
    for proc in procs:
        out, _ = proc.communicate()
        times += json.loads(out.strip().splitlines()[-1])
    return times


def machine_scaling(n_bars: int, repeats: int) -> float:
    """The machine's 2-core scaling for this work: the throughput of two independent 1-thread
    processes over one alone, rounds interleaved (medians). On a VM whose two vCPUs share a
    physical core or its caches, no threading can beat this figure."""
    alone, pair = [], []
    for _ in range(repeats):
        alone.append(statistics.median(processes_side_by_side(1, n_bars, 3)))
        pair.append(statistics.median(processes_side_by_side(2, n_bars, 3)))
    scaling = 2 * statistics.median(alone) / statistics.median(pair)
    print(f"1 x {n_bars:,} bars: 1-thread grid alone {statistics.median(alone):.3f} s a call, "
          f"two processes at once {statistics.median(pair):.3f} s a call each (medians of {repeats} "
          f"interleaved rounds x 3 calls) -> the machine's 2-core scaling {scaling:.2f}x")
    return scaling


def two_thread(rows: list) -> float:
    """The first case's 2-thread row's per-core ratio."""
    return next(row[4] for row in rows if "2 threads" in row[1])


def scaling_line(per_core_ratio: float, scaling: float) -> None:
    speed_up = 2 * per_core_ratio
    print(f"2-thread speed-up of one instrument {speed_up:.2f}x against the machine's 2-core scaling "
          f"{scaling:.2f}x: {speed_up / scaling:.0%} of what two cores give this work here")


def grid_rows(label: str, close: np.ndarray, g: dict, repeats: int, base_repeats: int) -> list:
    n_inst = 1 if close.ndim == 1 else close.shape[0]
    bar_params = close.size * g["lookback"].shape[0]
    args = (g["lookback"], g["entry"], g["exit"], g["stop"], COST_BPS, BPY, 1, False)
    zmr_grid(close[..., :2000], **g)
    grid._zmr(close[..., :2000], *args, kernels="ceiling")
    # the SIMD kernel this host does not run (one-pass on AVX-512 hosts, two-pass elsewhere)
    other = "twopass" if grid_simd.wide_registers() else "onepass"
    grid._zmr(close[..., :2000], *args, kernels=other)
    runs = {"t1": [], "t2": [], "ceiling": [], "other": []}
    for _ in range(repeats):  # interleaved rounds: a load change hits every engine alike
        numba.set_num_threads(1)
        runs["t1"].append(timed(lambda: zmr_grid(close, **g)))
        runs["ceiling"].append(timed(lambda: grid._zmr(close, *args, kernels="ceiling")))
        runs["other"].append(timed(lambda: grid._zmr(close, *args, kernels=other)))
        numba.set_num_threads(2)
        runs["t2"].append(timed(lambda: zmr_grid(close, **g)))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    t1, t2, tc, to = (statistics.median(runs[k]) for k in ("t1", "t2", "ceiling", "other"))
    nso = to * 1e9 / bar_params
    ns1 = t1 * 1e9 / bar_params
    ns2 = t2 * 2 * 1e9 / bar_params
    nsc = tc * 1e9 / bar_params
    matrix = close.reshape(n_inst, -1)
    per_param_loop(matrix[:, :2000], g)
    tb = median_time(lambda: per_param_loop(matrix, g), base_repeats)
    nsb = tb * 1e9 / bar_params
    rows = []
    chosen = "one-pass" if other == "twopass" else "two-pass"
    rows.append((label, f"zmr_grid, 1 thread ({chosen} SIMD kernel)", t1, ns1, 1.0))
    rows.append((label, f"the {other.replace('pass', '-pass')} kernel instead, 1 thread", to, nso, ns1 / nso))
    rows.append((label, f"zmr_grid, 2 threads (speed-up {t1 / t2:.2f}x)", t2, ns2, ns1 / ns2))
    rows.append((label, "ceiling: positions only, no booking, 1 thread", tc, nsc, ns1 / nsc))
    rows.append((label, "per-parameter numba loop, 1 thread", tb, nsb, ns1 / nsb))
    spread = {k: f"{min(v) * 1e9 / bar_params:.2f}-{max(v) * 1e9 / bar_params:.2f}" for k, v in runs.items()}
    print(f"{label}: runs (ns/bar-param, min-max of {repeats}): 1 thread {spread['t1']}, "
          f"2 threads {spread['t2']} (wall), ceiling {spread['ceiling']}, {other} {spread['other']}")
    return rows


def options_part(quick: bool, repeats: int) -> None:
    """The portfolio-construction options of one strategy run, each timed next to its plain
    counterpart in the same run (median of ``repeats``, one numba thread)."""
    from quant_assets.backtest import long_short_quantile, run_backtest
    from quant_assets.backtest.weights import (
        beta_neutral,
        equal_weight_market,
        sector_neutral_quantile,
        trailing_betas,
    )

    numba.set_num_threads(1)
    n_names, n_days = (200, 1260) if quick else (500, 2520)
    rng = np.random.default_rng(3)
    market = rng.normal(0, 0.01, n_days)
    returns = rng.uniform(0.5, 1.5, n_names) * market[:, None] + rng.normal(0, 0.015, (n_days, n_names))
    prices = 50.0 * np.cumprod(1.0 + returns, axis=0)
    tradable = np.ones((n_days, n_names), dtype=bool)
    scores = rng.normal(size=(n_days, n_names))
    sectors = np.arange(n_names) % 10
    costs = CostModel(commission_bps=1.0, half_spread_bps=2.0)
    plain_book = long_short_quantile(scores, tradable)
    betas = trailing_betas(returns, equal_weight_market(returns), 60, 40)
    eligible = np.where(np.isfinite(betas), scores, np.nan)
    sector_book = sector_neutral_quantile(eligible, tradable, sectors)
    bps = rng.uniform(10, 300, n_names)
    # warm the numba caches
    run_backtest(prices[:5], plain_book[:5], tradable[:5], costs, borrow_bps=bps, max_turnover=0.5)
    beta_neutral(sector_book[:5], betas[:5], sectors)

    cases = [
        ("weights: long_short_quantile", "baseline",
         lambda: long_short_quantile(scores, tradable)),
        ("weights: sector_neutral_quantile, 10 sectors", "weights",
         lambda: sector_neutral_quantile(eligible, tradable, sectors)),
        ("weights: trailing_betas, 60 days", "weights",
         lambda: trailing_betas(returns, equal_weight_market(returns), 60, 40)),
        ("weights: beta_neutral projection (sectors)", "weights",
         lambda: beta_neutral(sector_book, betas, sectors)),
        ("run_backtest: plain", "baseline",
         lambda: run_backtest(prices, plain_book, tradable, costs)),
        ("run_backtest: borrow + turnover limit", "run_backtest",
         lambda: run_backtest(prices, plain_book, tradable, costs, borrow_bps=bps, max_turnover=0.3)),
    ]
    print(f"\nportfolio-construction options, {n_names} names x {n_days} days, 1 thread, "
          f"median of {repeats}:")
    print(f"{'case':<48} {'median s':>10} {'vs plain':>10}")
    base = {}
    for name, group, fn in cases:
        seconds = median_time(fn, repeats)
        if group == "baseline":
            base[name.split(":")[0]] = seconds
            ratio = "1.00x"
        else:
            ratio = f"{seconds / base[group]:.2f}x"
        print(f"{name:<48} {seconds:>10.4f} {ratio:>10}")
    print(f"load average after the options timings: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument("--bars", type=int, help="bars of the single-instrument case (1M)")
    parser.add_argument("--instruments", type=int, help="instruments of the panel case (100)")
    parser.add_argument("--panel-bars", type=int, help="bars per instrument, panel case (100k)")
    parser.add_argument("--subset-bars", type=int, help="bars for vectorbt/pandas (100k/20k)")
    parser.add_argument("--scenarios", type=int, help="portfolio weight scenarios (1000)")
    parser.add_argument("--repeats", type=int, help="repeats per timing (median)")
    parser.add_argument("--vbt-python", default="/tmp/vbt-venv/bin/python")
    parser.add_argument("--mem-probe", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--solo-probe", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scaling-only", action="store_true",
                        help="only the 2-thread speed-up beside the machine's 2-core scaling")
    parser.add_argument("--options-only", action="store_true",
                        help="only the portfolio-construction options part")
    args = parser.parse_args()
    if args.mem_probe:
        print(json.dumps(memory_probe(*args.mem_probe)))
        return
    if args.solo_probe:
        solo_probe(*args.solo_probe)
        return
    if args.options_only:
        options_part(args.quick, args.repeats or (3 if args.quick else 5))
        return

    quick = args.quick
    bars = args.bars or (50_000 if quick else 1_000_000)
    n_inst = args.instruments or (4 if quick else 100)
    panel_bars = args.panel_bars or (20_000 if quick else 100_000)
    subset = args.subset_bars or (10_000 if quick else 100_000)
    scenarios = args.scenarios or (50 if quick else 1000)
    repeats = args.repeats or (3 if quick else 5)
    g = param_product(**GRID)
    n_params = g["lookback"].shape[0]
    print(f"cpu threads available: {os.cpu_count()}, numba threads: {numba.config.NUMBA_NUM_THREADS}; "
          f"{vector_isa()}")
    print(f"load average at start (1/5/15 min): {load_average()}")
    print(f"grid: {n_params} parameter sets {GRID}; cost {COST_BPS} bps\n")

    single = walk(1, bars)[0]
    if args.scaling_only:
        rows = grid_rows(f"1 x {bars:,} bars", single, g, repeats, 1)
        scaling_line(two_thread(rows), machine_scaling(bars, repeats))
        return
    panel = walk(n_inst, panel_bars, seed=1)
    rows = grid_rows(f"1 x {bars:,} bars", single, g, repeats, max(1, repeats // 2))
    rows += grid_rows(f"{n_inst} x {panel_bars:,} bars", panel, g, max(1, repeats // 2), 1)
    ns_grid = rows[0][3]

    # vectorbt and pandas on subsets, extrapolated per bar-parameter.
    t_vbt, vbt_label = vectorbt_time(args.vbt_python, min(subset, bars), max(1, repeats // 2))
    if t_vbt is not None:
        ns_vbt = t_vbt * 1e9 / (min(subset, bars) * n_params)
        rows.append((f"1 x {min(subset, bars):,} bars (subset)", f"{vbt_label} from_signals",
                     t_vbt, ns_vbt, ns_grid / ns_vbt))
    else:
        print(vbt_label)
    pd_bars = min(subset // 5, bars)
    pd_g = {k: v[:27] for k, v in g.items()}  # one lookback group
    t_pd = median_time(lambda: pandas_loop(single[:pd_bars], pd_g), 1)
    ns_pd = t_pd * 1e9 / (pd_bars * 27)
    rows.append((f"1 x {pd_bars:,} bars x 27 sets (subset)", "pandas rolling + Python loop",
                 t_pd, ns_pd, ns_grid / ns_pd))

    print(f"{'case':<34} {'engine':<48} {'median s':>10} {'ns/bar-param/core':>18} {'vs zmr_grid':>12}")
    for case, engine, seconds, ns, ratio in rows:
        rel = "1.00x" if ratio == 1.0 else f"{1 / ratio:.1f}x slower" if ratio < 1 else f"{ratio:.2f}x"
        if "2 threads" in engine:
            rel = "(per core)"
        if "ceiling" in engine:
            rel = f"grid {ratio:.2f}x"
        print(f"{case:<34} {engine:<48} {seconds:>10.3f} {ns:>18.2f} {rel:>12}")
    print("(vectorbt and pandas rows: measured on the subset shown; their ns/bar-param is the "
          "extrapolation to the full sizes)")

    print(f"load average after the grid timings: {load_average()}")
    scaling_line(two_thread(rows), machine_scaling(bars, max(1, repeats // 2)))

    # Peak memory of zmr_grid (fresh interpreter each).
    print()
    for shape in ((1, bars), (n_inst, panel_bars)):
        mem = run_memory_probe(*shape)
        print(f"peak memory {shape[0]} x {shape[1]:,}: input {mem['input'] / 2**20:.1f} MiB, "
              f"extra during zmr_grid {mem['extra'] / 2**20:.1f} MiB "
              f"-> peak / input = {(mem['input'] + mem['extra']) / mem['input']:.2f}x")

    # Portfolio simulator: many weight scenarios through nb.step_nb.
    n_names, n_days = (500, 2520) if not quick else (200, 1260)
    rng = np.random.default_rng(2)
    prices = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_days, n_names)), axis=0))
    tradable = np.ones((n_days, n_names), dtype=bool)
    bank = rng.normal(0, 1.0 / n_names, (4, n_days, n_names))
    index = np.arange(scenarios) % bank.shape[0]
    costs = [CostModel(commission_bps=1.0 + (s % 10)) for s in range(scenarios)]
    scenario_backtest(prices[:50], bank[:, :50], tradable[:50], index[:2], costs[:2])
    print()
    inst_days = n_names * n_days * scenarios
    speeds = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        t = median_time(lambda: scenario_backtest(prices, bank, tradable, index, costs), max(1, repeats // 2))
        speeds[threads] = inst_days / t / threads
        print(f"portfolio {n_names} x {n_days} days x {scenarios} scenarios, {threads} thread(s): "
              f"{t:.2f} s, {speeds[threads] / 1e6:.0f} M instrument-days/s/core")
    print(f"portfolio 2-thread speed-up: {2 * speeds[2] / speeds[1]:.2f}x")
    print(f"load average after the portfolio timings: {load_average()}")

    options_part(quick, repeats)

    # The seeds' headline case is run end to end by benchmarks/grid_seed_case.py.
    total = 252 * 390 * 5 * 500 * 1000
    core_s = total * ns_grid * 1e-9
    print(f"\nat {ns_grid:.2f} ns: 5y of 1-min bars (491,400) x 500 instruments x 1,000 sets "
          f"= {total:.2e} bar-params -> {core_s / 60:.1f} core-minutes of grid "
          f"(run end to end: benchmarks/grid_seed_case.py)")


if __name__ == "__main__":
    main()
