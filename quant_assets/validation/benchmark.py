"""The benchmark of the validation report: an explicit, named daily return series, chosen to
suit the book. Pure (polars and numpy).

Which benchmark suits which book (``benchmark_for_book``):

* real data with an index (e.g. the S&P 500 of the real-data source): the index;
* otherwise the market factor when one is given (on the simulator: the equal-weight return
  of the universe, the observable proxy of its market factor): a dollar-neutral long-short
  book should have beta ~0 to it, and beta and alpha are what it is read for, not the
  active return (a long-only market is not what a market-neutral book tries to beat);
* otherwise cash (a zero return every day): active return and information ratio are then
  the book's own mean return and Sharpe ratio, and beta is undefined (no market risk).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

KINDS = ("cash", "market", "index")
# |mean net exposure| at or below this share of mean gross exposure reads as dollar-neutral
NEUTRAL_NET_SHARE = 0.1


@dataclass(frozen=True)
class Benchmark:
    """``returns``: (date, return) simple daily returns, one row per day (empty for cash).
    ``name`` is shown in the report next to every benchmark-relative number; ``note`` says
    why this benchmark was chosen."""

    name: str
    returns: pl.DataFrame
    kind: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Benchmark.kind must be one of {KINDS}, got {self.kind!r}")
        missing = [c for c in ("date", "return") if c not in self.returns.columns]
        if missing:
            raise ValueError(
                f"benchmark {self.name!r}: returns is missing columns {missing} "
                f"(has {self.returns.columns})"
            )
        dup = self.returns.filter(pl.col("date").is_duplicated())
        if dup.height:
            raise ValueError(
                f"benchmark {self.name!r}: duplicated dates, e.g. {dup['date'][0]}"
            )

    @classmethod
    def cash(cls, note: str = "") -> Benchmark:
        empty = pl.DataFrame(schema={"date": pl.Date, "return": pl.Float64})
        return cls("cash (zero return)", empty, "cash", note)

    def aligned(self, dates: pl.Series) -> np.ndarray:
        """The benchmark's return on each of ``dates`` (float64, same order); cash is 0 every
        day, another benchmark is NaN on a day it has no return (left out of the paired
        statistics rather than read as a flat day)."""
        if self.kind == "cash":
            return np.zeros(len(dates))
        frame = pl.DataFrame({"date": pl.Series("date", dates).cast(pl.Date)}).with_row_index("_i")
        joined = frame.join(
            self.returns.select(pl.col("date").cast(pl.Date), pl.col("return").cast(pl.Float64)),
            on="date",
            how="left",
        ).sort("_i")
        return joined["return"].fill_null(np.nan).to_numpy().astype(float)

    def frame_on(self, dates: pl.Series) -> pl.DataFrame:
        """(date, benchmark) on ``dates``, as ``aligned``."""
        return pl.DataFrame({"date": pl.Series("date", dates).cast(pl.Date), "benchmark": self.aligned(dates)})


def is_dollar_neutral(net_exposure, gross_exposure) -> bool:
    """True when the book's mean |net exposure| is at most ``NEUTRAL_NET_SHARE`` of its mean
    gross exposure (days without a book are left out)."""
    net = np.asarray(net_exposure, dtype=float)
    gross = np.asarray(gross_exposure, dtype=float)
    held = np.isfinite(net) & np.isfinite(gross) & (gross > 0)
    if not held.any():
        return False
    return abs(float(net[held].mean())) <= NEUTRAL_NET_SHARE * float(gross[held].mean())


def benchmark_for_book(
    net_exposure,
    gross_exposure,
    market: Benchmark | None = None,
    index: Benchmark | None = None,
) -> Benchmark:
    """The benchmark that suits the book (module docstring), with a note saying why."""
    neutral = is_dollar_neutral(net_exposure, gross_exposure)
    book = "dollar-neutral long-short book" if neutral else "book with net market exposure"
    if index is not None:
        chosen, why = index, f"{book} on real data: the index"
    elif market is not None:
        why = (
            f"{book}: the market factor, for beta (expected ~0) and alpha; active return "
            "against a long-only market is not its target"
            if neutral
            else f"{book}: the market factor"
        )
        chosen = market
    else:
        chosen, why = Benchmark.cash(), f"{book}: cash, no market series given"
    return Benchmark(chosen.name, chosen.returns, chosen.kind, why)


def index_benchmark(frame: pl.DataFrame | None) -> Benchmark | None:
    """The index a data source gave (the ``benchmark`` table: date, name, close, return),
    or None when it gave none (no table, or an empty one: the simulator)."""
    if frame is None or frame.height == 0:
        return None
    returns = frame.sort("date").select("date", "return").drop_nulls("return")
    return Benchmark(str(frame["name"][0]), returns, "index")
