"""Leakage guard: recompute sampled days of a feature frame from inputs truncated at each
day's cutoff and report every difference (pure polars; no Dagster).

The point-in-time engine promises that a feature of day D depends only on rows with
knowledge_time <= cutoff(D) and bars dated <= D. The property tests check that promise for
the registered library; this guard checks it at run time, on the data actually processed,
so that a feature definition that peeks ahead (e.g. a cross-sectional expression that
reads the next day of the batch with ``shift(-1).over("instrument_id")``) is caught before
anything is written. For each sampled day D the inputs are cut to what was knowable at
cutoff(D) and the day is recomputed on its own; it must equal the stored rows bit for bit.

Whole days are recomputed (every instrument of D's universe), not a subset of instruments:
the market return and the sector ranks read the full cross-section, so a day's features
cannot be computed for a few instruments alone, and comparing all of them costs nothing
extra.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from quant_assets.features import pit
from quant_assets.features.registry import FeatureConfig, compute_features

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
    cutoff_time: dt.time,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The inputs as they stood at cutoff(day): rows known by then, bars dated <= day."""
    cut = pl.lit(day).pipe(pit.cutoff_expr, cutoff_time)
    known = pl.col("knowledge_time") <= cut
    bars = pit.with_utc(market_bars, "knowledge_time").filter(known & (pl.col("date") <= day))
    actions = pit.with_utc(corporate_actions, "knowledge_time").filter(known)
    funds = pit.with_utc(fundamentals, "knowledge_time").filter(known)
    return bars.collect(engine=pit.ENGINE), actions.collect(engine=pit.ENGINE), funds.collect(engine=pit.ENGINE)


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


def find_leaks(
    stored: pl.DataFrame,
    universe: pl.DataFrame,
    market_bars: pl.DataFrame,
    corporate_actions: pl.DataFrame,
    fundamentals: pl.DataFrame,
    days: Sequence[dt.date],
    config: FeatureConfig | None = None,
) -> list[Leak]:
    """Recompute each of `days` from inputs truncated at its cutoff; compare with `stored`.

    `stored` holds the features as computed for a range containing `days` (columns
    date, instrument_id, features). Empty list: no leak on these days.
    """
    cfg = config or FeatureConfig()
    features = tuple(c for c in stored.columns if c not in KEY)
    cfg = FeatureConfig(
        cutoff_time=cfg.cutoff_time,
        features=features,
        batch_days=cfg.batch_days,
        max_fundamental_age_days=cfg.max_fundamental_age_days,
    )
    leaks: list[Leak] = []
    for day in sorted(set(days)):
        bars, actions, funds = truncate_at_cutoff(market_bars, corporate_actions, fundamentals, day, cfg.cutoff_time)
        recomputed = compute_features(universe, bars, actions, funds, [day], cfg)
        leaks += compare_day(stored.filter(pl.col("date") == day), recomputed, day)
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
