"""Leakage guard: recompute sampled days of a feature frame from inputs truncated at each
day's cutoff and report every difference (pure polars; no Dagster).

The point-in-time engine promises that a feature of day D depends only on rows with
knowledge_time <= cutoff(D) and bars dated <= D. The property tests check that promise for
the registered library; this guard checks it at run time, on the data actually processed,
so that a feature definition that peeks ahead (e.g. a cross-sectional expression that
reads the next day of the batch with ``shift(-1).over("instrument_id")``) is caught before
anything is written. For each sampled day D the inputs are cut to what was knowable at
cutoff(D) and the day is recomputed on its own; it must equal the stored rows bit for bit.

A sample of the day's instruments is recomputed (all of them when `instruments` is None):
their rows are computed exactly as in the full run (the market return and the sector
ranks still read the whole cross-section, `FeatureConfig.instruments`), while the series
features of the other instruments, most of the cost, are skipped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from quant_assets.calendar import Cutoff
from quant_assets.features import pit
from quant_assets.features.engine import FeatureConfig, compute_features

KEY = ("date", "instrument_id")
# The pseudo-feature name of a difference in the set of rows (an instrument present on one
# side only).
ROW_SET = "<rows>"


@dataclass(frozen=True)
class Leak:
    """Stored and recomputed values of one feature differ on one day."""

    day: dt.date
    feature: str
    instruments: tuple[str, ...]  # sorted
    stored: tuple[float | None, ...]  # values of the first instruments, for the message
    recomputed: tuple[float | None, ...]

    def describe(self, max_instruments: int = 5) -> str:
        shown = ", ".join(self.instruments[:max_instruments])
        more = f" and {len(self.instruments) - max_instruments} more" if len(self.instruments) > max_instruments else ""
        if self.feature == ROW_SET:
            return f"{self.day}: instruments {shown}{more} are on one side only (stored vs recomputed)"
        pairs = ", ".join(f"{s!r} vs {r!r}" for s, r in zip(self.stored, self.recomputed, strict=True))
        return (
            f"{self.feature} on {self.day}: instruments {shown}{more} differ "
            f"(stored vs recomputed from inputs cut at the cutoff: {pairs})"
        )


def sample_days(days: Sequence[dt.date], n: int, seed: int) -> list[dt.date]:
    """`n` distinct days of `days` (all if fewer), sorted; the same for the same days and seed.

    The range itself enters the seed, so different partitions sample different days while a
    rerun of a partition samples the same ones.
    """
    unique = sorted(set(days))
    if n >= len(unique):
        return unique
    if n <= 0:
        return []
    rng = np.random.default_rng([seed, unique[0].toordinal(), unique[-1].toordinal(), len(unique)])
    picked = rng.choice(len(unique), size=n, replace=False)
    return sorted(unique[int(i)] for i in picked)


def truncate_at_cutoff(
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    fundamentals: pl.DataFrame,
    day: dt.date,
    cutoff_time: Cutoff,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The inputs as they stood at cutoff(day): rows known by then, bars dated <= day."""
    cut = pl.lit(day).pipe(pit.cutoff_expr, cutoff_time)
    known = pl.col("knowledge_time") <= cut
    bars = pit.with_utc(market_bars, "knowledge_time").filter(known & (pl.col("date") <= day))
    actions = pit.with_utc(corporate_actions, "knowledge_time").filter(known)
    funds = pit.with_utc(fundamentals, "knowledge_time").filter(known)
    return bars.collect(engine=pit.ENGINE), actions.collect(engine=pit.ENGINE), funds.collect(engine=pit.ENGINE)


def universe_at_cutoff(universe: pl.DataFrame, day: dt.date, cutoff_time: Cutoff) -> pl.DataFrame:
    """The universe versions known at cutoff(day) (all rows of a universe without
    knowledge_time): the universe is bitemporal too, so a leak through a later listing or
    delisting shows up as a difference."""
    if "knowledge_time" not in universe.columns:
        return universe
    cut = pl.lit(day).pipe(pit.cutoff_expr, cutoff_time)
    return pit.with_utc(universe, "knowledge_time").filter(pl.col("knowledge_time") <= cut).collect(engine=pit.ENGINE)


def compare_day(stored: pl.DataFrame, recomputed: pl.DataFrame, day: dt.date) -> list[Leak]:
    """Every difference between two feature frames of one day (exact, nulls equal)."""
    features = [c for c in stored.columns if c not in KEY]
    if features != [c for c in recomputed.columns if c not in KEY]:
        raise ValueError(f"feature columns differ: {features} vs {recomputed.columns}")
    in_stored = pl.col("_in_stored").is_not_null()
    in_recomputed = pl.col("_in_recomputed").is_not_null()
    joined = stored.with_columns(pl.lit(True).alias("_in_stored")).join(
        recomputed.with_columns(pl.lit(True).alias("_in_recomputed")),
        on=list(KEY),
        how="full",
        suffix="_re",
        coalesce=True,
    )
    leaks: list[Leak] = []
    one_sided = joined.filter(~(in_stored & in_recomputed)).get_column("instrument_id").sort()
    if one_sided.len():
        leaks.append(Leak(day, ROW_SET, tuple(one_sided.to_list()), (), ()))
    both = joined.filter(in_stored & in_recomputed).sort("instrument_id")
    for name in features:
        differs = both.filter(~pl.col(name).eq_missing(pl.col(f"{name}_re")))
        if differs.height:
            head = differs.head(3)
            leaks.append(
                Leak(
                    day,
                    name,
                    tuple(differs.get_column("instrument_id").to_list()),
                    tuple(head.get_column(name).to_list()),
                    tuple(head.get_column(f"{name}_re").to_list()),
                )
            )
    return leaks


def sample_instruments(stored: pl.DataFrame, day: dt.date, n: int | None, seed: int) -> tuple[str, ...] | None:
    """`n` instruments of `day`'s rows of `stored` (None: all), the same for the same seed."""
    ids = sorted(stored.filter(pl.col("date") == day)["instrument_id"].to_list())
    if n is None or n >= len(ids):
        return None
    rng = np.random.default_rng([seed, day.toordinal(), len(ids)])
    return tuple(sorted(ids[int(i)] for i in rng.choice(len(ids), size=n, replace=False)))


def find_leaks(
    stored: pl.DataFrame,
    universe: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    fundamentals: pl.DataFrame,
    days: Sequence[dt.date],
    config: FeatureConfig | None = None,
    *,
    instruments: int | None = None,
    seed: int = 0,
) -> list[Leak]:
    """Recompute each of `days` from inputs truncated at its cutoff; compare with `stored`.

    `stored` holds the features as computed for a range containing `days` (columns
    date, instrument_id, features). `instruments`: how many of each day's instruments to
    recompute (a seeded sample; None: all). Empty list: no leak on these days.
    """
    cfg = config or FeatureConfig()
    features = tuple(c for c in stored.columns if c not in KEY)
    cfg = dataclasses.replace(cfg, features=features)
    leaks: list[Leak] = []
    for day in sorted(set(days)):
        bars, actions, funds = truncate_at_cutoff(market_bars, corporate_actions, fundamentals, day, cfg.cutoff_time)
        sample = sample_instruments(stored, day, instruments, seed)
        day_cfg = dataclasses.replace(cfg, instruments=sample)
        recomputed = compute_features(universe_at_cutoff(universe, day, cfg.cutoff_time), bars, actions, funds,
                                      [day], day_cfg)
        expected = stored.filter(pl.col("date") == day)
        if sample is not None:
            expected = expected.filter(pl.col("instrument_id").is_in(list(sample)))
        leaks += compare_day(expected, recomputed, day)
    return leaks


def format_leaks(leaks: Sequence[Leak], limit: int = 10) -> str:
    features = sorted({leak.feature for leak in leaks})
    days = sorted({leak.day.isoformat() for leak in leaks})
    head = (
        f"look-ahead leak: {len(features)} feature(s) differ from their recomputation on inputs "
        f"cut at the as-of cutoff: {', '.join(features)}; day(s) {', '.join(days)}"
    )
    lines = [head, *(f"- {leak.describe()}" for leak in leaks[:limit])]
    if len(leaks) > limit:
        lines.append(f"- ... {len(leaks) - limit} more")
    return "\n".join(lines)
