"""Z-score grid sweeps over bars stored as Parquet, one instrument at a time.

The bars of each instrument are a partition (``instrument=<name>/bars.parquet``, a
``close`` column in bar order). :func:`sweep_zmr_parquet` streams the partitions through
:func:`quant_assets.backtest.grid.zmr_grid` and writes, as Parquet (pyarrow):

* ``sets.parquet``: one row per parameter set (``set_id``, lookback, entry, exit, stop);
* ``stats.parquet``: one row per (instrument, set): total return, Sharpe, max drawdown,
  trades, written in row groups as instruments finish;
* ``summary.parquet``: one row per set, over instruments: mean and standard deviation of
  the Sharpe ratio, mean total return, mean and worst max drawdown, total trades.

Memory stays bounded whatever the number of instruments: one instrument's closes, the
grid's fixed-size buffers and per-set running sums are held at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant_assets.backtest.grid import zmr_grid

# pyarrow is imported where files are touched: the generator alone (the GPU benchmark's
# data, generated in memory) runs without it.

__all__ = [
    "SweepReport",
    "bar_partitions",
    "random_walk_closes",
    "sweep_zmr_parquet",
    "write_random_walk_bars",
]

def _stats_schema():
    import pyarrow as pa

    return pa.schema([
        ("instrument", pa.string()),
        ("set_id", pa.int32()),
        ("total_return", pa.float64()),
        ("sharpe", pa.float64()),
        ("max_drawdown", pa.float64()),
        ("n_trades", pa.int64()),
    ])


@dataclass(frozen=True)
class SweepReport:
    """What a sweep did and where its time went (seconds)."""

    instruments: int
    bars: int  # over all instruments
    sets: int
    read_s: float
    grid_s: float
    write_s: float
    wall_s: float

    @property
    def bar_parameters(self) -> int:
        return self.bars * self.sets


def random_walk_closes(instrument: int, n_bars: int, seed: int = 0, vol: float = 8e-4) -> np.ndarray:
    """Seeded geometric random walk of ``n_bars`` closes from 100 (per-bar log-return sd
    ``vol``); depends only on (``seed``, ``instrument``)."""
    close = np.random.default_rng([seed, instrument]).normal(0.0, vol, n_bars)
    np.cumsum(close, out=close)
    np.exp(close, out=close)
    close *= 100.0
    return close


def write_random_walk_bars(directory: str | Path, n_instruments: int, n_bars: int, seed: int = 0,
                           vol: float = 8e-4) -> list[Path]:
    """:func:`random_walk_closes` of instruments 0..n-1, one Parquet partition each
    (``instrument=I0000/bars.parquet``). Returns the partition files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(directory)
    paths = []
    for i in range(n_instruments):
        close = random_walk_closes(i, n_bars, seed, vol)
        path = root / f"instrument=I{i:04d}" / "bars.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"close": close}), path)
        paths.append(path)
    return paths


def bar_partitions(directory: str | Path) -> list[tuple[str, Path]]:
    """(instrument, file) of every partition under ``directory``, sorted by instrument."""
    found = []
    for path in sorted(Path(directory).glob("instrument=*/*.parquet")):
        found.append((path.parent.name.split("=", 1)[1], path))
    if not found:
        raise FileNotFoundError(f"no instrument=<name>/*.parquet partitions under {directory}")
    return found


def _read_close(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["close"]).column("close")
    if column.null_count:
        raise ValueError(f"{path}: close has {column.null_count} missing values")
    return column.to_numpy().astype(np.float64, copy=False)


def sweep_zmr_parquet(
    bars_dir: str | Path,
    out_dir: str | Path,
    lookback,
    entry,
    exit,
    stop,
    cost_bps: float = 5.0,
    bars_per_year: float = 252 * 390,
    *,
    start: int = 1,
    backend: str = "cpu",
    instruments: int | None = None,
) -> SweepReport:
    """Run the z-score grid (parameter arrays as in ``zmr_grid``) over every partition of
    ``bars_dir`` (the first ``instruments`` if given) and write the tables above to
    ``out_dir``. Returns the :class:`SweepReport`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wall = time.perf_counter()
    schema = _stats_schema()
    parts = bar_partitions(bars_dir)[:instruments]
    params = {k: np.asarray(v) for k, v in
              {"lookback": lookback, "entry": entry, "exit": exit, "stop": stop}.items()}
    n_sets = params["lookback"].shape[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_ids = np.arange(n_sets, dtype=np.int32)
    pq.write_table(pa.table({"set_id": set_ids, **params}), out / "sets.parquet")
    sums = {k: np.zeros(n_sets) for k in ("sharpe", "sharpe_sq", "total_return", "max_drawdown")}
    worst = np.zeros(n_sets)
    trades = np.zeros(n_sets, dtype=np.int64)
    read_s = grid_s = write_s = 0.0
    bars = 0
    with pq.ParquetWriter(out / "stats.parquet", schema) as writer:
        for name, path in parts:
            t0 = time.perf_counter()
            close = _read_close(path)
            t1 = time.perf_counter()
            res = zmr_grid(close, **params, cost_bps=cost_bps, bars_per_year=bars_per_year,
                           start=start, backend=backend)
            t2 = time.perf_counter()
            writer.write_table(pa.table({
                "instrument": pa.array([name] * n_sets, pa.string()),
                "set_id": set_ids,
                "total_return": res.total_return,
                "sharpe": res.sharpe,
                "max_drawdown": res.max_drawdown,
                "n_trades": res.n_trades,
            }, schema=schema))
            sums["sharpe"] += res.sharpe
            sums["sharpe_sq"] += res.sharpe**2
            sums["total_return"] += res.total_return
            sums["max_drawdown"] += res.max_drawdown
            np.maximum(worst, res.max_drawdown, out=worst)
            trades += res.n_trades
            bars += close.shape[0]
            read_s += t1 - t0
            grid_s += t2 - t1
            write_s += time.perf_counter() - t2
    t3 = time.perf_counter()
    n = len(parts)
    mean_sharpe = sums["sharpe"] / n
    pq.write_table(pa.table({
        "set_id": set_ids,
        **params,
        "mean_sharpe": mean_sharpe,
        "std_sharpe": np.sqrt(np.maximum(sums["sharpe_sq"] / n - mean_sharpe**2, 0.0)),
        "mean_total_return": sums["total_return"] / n,
        "mean_max_drawdown": sums["max_drawdown"] / n,
        "worst_max_drawdown": worst,
        "n_trades": trades,
        "n_instruments": np.full(n_sets, n, dtype=np.int32),
    }), out / "summary.parquet")
    write_s += time.perf_counter() - t3
    return SweepReport(n, bars, n_sets, read_s, grid_s, write_s, time.perf_counter() - wall)
