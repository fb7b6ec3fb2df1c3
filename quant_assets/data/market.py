"""What the raw data assets read, by source: the seeded simulator (embedded default), a data
directory in the documented layout (``QUANT_SOURCE=files``, ``sources.py``) or, for
``market_bars``, Parquet/CSV files in the landing folder.

Pure (no Dagster): ``resources/market_source.py`` only carries the configuration; the
``data`` assets call these with it.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

import polars as pl

from quant_assets.data.files import list_landing_files, read_market_bars_file
from quant_assets.data.quality import BAR_KEYS
from quant_assets.data.simulator import MarketData, SimulatorConfig, simulate_market
from quant_assets.data.sources import FileSourceData, Layout, load_data_dir, read_bars_file

SOURCES = ("simulator", "landing", "files")


@lru_cache(maxsize=4)
def simulated_market(n_instruments: int, seed: int, start: str, end: str) -> MarketData:
    """The simulated market of a configuration, once per process: every raw asset of a run
    slices the same simulation."""
    return simulate_market(
        SimulatorConfig(
            n_instruments=n_instruments,
            seed=seed,
            start=dt.date.fromisoformat(start),
            end=dt.date.fromisoformat(end),
        )
    )


def simulated_for(source) -> MarketData:
    """The simulation a market-source configuration (``n_instruments``, ``seed``, ``start``,
    ``end``, as the ``market_source`` resource carries them) describes."""
    return simulated_market(source.n_instruments, source.seed, source.start, source.end)


def data_dir_state(data_dir: str | Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime_ns) of every file under the data directory, sorted: a
    file added, replaced or edited changes it."""
    root = Path(data_dir)
    if not root.is_dir():
        return ()
    return tuple(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    )


def file_source(data_dir: str | Path) -> FileSourceData:
    """The data directory loaded and checked (``sources.load_data_dir``) once per process
    while its files stay the same: every raw asset of a run reads one load, and a file
    that arrives later (a new day's bars) is seen by the next call."""
    return _loaded(str(Path(data_dir).resolve()), data_dir_state(data_dir))


@lru_cache(maxsize=2)
def _loaded(data_dir: str, state: tuple) -> FileSourceData:  # state: the cache key only
    return load_data_dir(data_dir)


def landing_bars(landing_dir: str, layout: Layout | None = None) -> pl.DataFrame:
    """Every landing file's bars: strict contract files (``files.read_market_bars_file``),
    or, with a data directory's ``layout`` (file source), files in that layout. A bar that
    several files deliver (a vendor's re-delivery of a day beside its first file) is taken
    from the latest delivery (``latest_deliveries``), files in the order they landed."""
    files = list_landing_files(landing_dir)
    if not files:
        raise ValueError(f"landing folder {landing_dir!r} has no market_bars files")
    # arrival order: modification time (a producer renames a finished file into place),
    # then name, so that equal times still give one order
    files = sorted(files, key=lambda f: (f.stat().st_mtime_ns, f.name))
    return latest_deliveries([read_landing_file(f, layout) for f in files])


def latest_deliveries(deliveries: list[pl.DataFrame]) -> pl.DataFrame:
    """The bars of ``deliveries`` (contract frames, in arrival order) with each bar, keyed
    by (date, instrument_id), from one delivery only: the one that knows it latest
    (``knowledge_time``), and of equal knowledge times the later arrival (a correction
    re-sent with the day's own times). Rows keep their delivery's order. Duplicates within
    one delivery are kept, so the table's duplicate_key rule still names them."""
    if len(deliveries) == 1:
        return deliveries[0]
    frame = pl.concat(
        [d.with_columns(pl.lit(i, pl.Int32).alias("_delivery")) for i, d in enumerate(deliveries)],
        how="vertical",
    )
    winner = pl.col("_delivery").sort_by(["knowledge_time", "_delivery"]).last().over(list(BAR_KEYS))
    return frame.filter(pl.col("_delivery") == winner).drop("_delivery")


def read_landing_file(path: str | Path, layout: Layout | None = None) -> pl.DataFrame:
    """One landing file as contract bars (see ``landing_bars``)."""
    if layout is None:
        return read_market_bars_file(path)
    return read_bars_file(path, layout)


def bars_between(bars: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Bars with start <= date < end, sorted by (date, instrument_id)."""
    return bars.filter((pl.col("date") >= start) & (pl.col("date") < end)).sort(
        "date", "instrument_id"
    )
