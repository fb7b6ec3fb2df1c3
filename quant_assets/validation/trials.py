"""The trial set of the validation report: the strategy variants evaluated on the same
predictions, plus a sweep's trials when a sweep has run. Pure (polars and numpy).

Sweep tables (written by the sweep stage, ``models/assets.py``; both optional):

* the trial registry ``sweep_trials`` (or a table named ``trial_registry``): one row per trial,
  ``trial_id`` and its per-period Sharpe ratio of daily net returns, ``sharpe_per_period``
  when the table has that column, else ``sharpe``. Every row, of every sweep run so far,
  counts as a trial in the DSR (count and Sharpe variance): all trials tried, not only the
  last sweep's, are what deflates the Sharpe ratio.
* ``trial_returns``: ``date``, ``trial_id``, ``net_return``. The trials' daily returns join
  the variants' as columns of the PBO matrix, over the days all of them have.

The monthly flow's trials (both optional, ``monthly_returns``): the monthly model sweep
(``model_sweep``, trials named ``msweep:...``) and the strategy grid's parameter sets
(``strategy_grid_returns``, ``grid:...``), each a frame of ``date``, ``trial_id``,
``net_return`` that grows by a month at a time. Each trial counts in the DSR with its
per-period Sharpe ratio over the backtest's days, and joins the PBO matrix like a sweep's.

If the common days are too few for CSCV (``report.PBO_SPLITS`` blocks of at least
``report.PBO_MIN_ROWS_PER_BLOCK`` days), PBO falls back to the variants alone, which always
share the backtest's days; ``pbo_n_trials`` in the report says which set was used.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from quant_assets.backtest.strategy import StrategySpec
from quant_assets.validation.report import PBO_MIN_ROWS_PER_BLOCK, PBO_SPLITS, SWEEP_PREFIX
from quant_assets.validation.stats import sharpe_per_period

# The variants evaluated on the same predictions (the report's own trials): the backtested
# spec with the quantile and the weighting scheme varied.
VARIANT_QUANTILES = (0.1, 0.2, 0.3)
VARIANT_SCHEMES = ("equal", "score")


def strategy_variants(base: StrategySpec) -> dict[str, StrategySpec]:
    """Trial name ("q0.2-equal") -> the variant of ``base`` it names."""
    return {
        f"q{q:.1f}-{scheme}": dataclasses.replace(base, quantile=q, scheme=scheme)
        for q, scheme in itertools.product(VARIANT_QUANTILES, VARIANT_SCHEMES)
    }

REGISTRY_COLUMNS = ("trial_id",)
PER_PERIOD_SHARPE_COLUMNS = ("sharpe_per_period", "sharpe")  # first present wins
RETURNS_COLUMNS = ("date", "trial_id", "net_return")


@dataclass(frozen=True)
class TrialSet:
    extra_sharpes: dict[str, float]  # sweep trials, named "sweep:<trial_id>"
    pbo_returns: np.ndarray  # (T x N) on common days
    pbo_names: tuple[str, ...]  # the N column names


def _check(frame: pl.DataFrame, name: str, cols: tuple[str, ...]) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} is missing columns {missing} (has {frame.columns})")


def _wide(returns: pl.DataFrame, prefix: str, name: str) -> pl.DataFrame:
    """(date, one column per trial) of a long (date, trial_id, net_return) frame."""
    _check(returns, name, RETURNS_COLUMNS)
    named = returns.select(
        "date",
        (pl.lit(prefix) + pl.col("trial_id").cast(pl.Utf8)).alias("trial_id"),
        pl.col("net_return").cast(pl.Float64),
    )
    dup = named.filter(pl.struct("date", "trial_id").is_duplicated())
    if dup.height:
        raise ValueError(f"{name} has several returns for one (date, trial_id): {dup.head(3).rows()}")
    # sorted by date: the pivot keeps the order rows arrived in (a Delta read's file order),
    # and a trial's Sharpe summed in another order differs in the last bit between reruns
    return named.pivot(on="trial_id", index="date", values="net_return", sort_columns=True).sort("date")


def build_trial_set(
    dates: pl.Series,
    variant_returns: dict[str, np.ndarray],
    registry: pl.DataFrame | None = None,
    sweep_returns: pl.DataFrame | None = None,
    monthly_returns: Mapping[str, pl.DataFrame] | None = None,
) -> TrialSet:
    """``dates``: the backtest days the variants' returns are aligned with.
    ``monthly_returns``: name -> (date, trial_id, net_return) of the monthly flow's trials,
    whose ``trial_id`` already carries its source's prefix."""
    if any(len(v) != len(dates) for v in variant_returns.values()):
        raise ValueError("every variant's returns must be aligned with the backtest dates")
    extra: dict[str, float] = {}
    if registry is not None and registry.height:
        _check(registry, "trial_registry", REGISTRY_COLUMNS)
        sharpe_col = next((c for c in PER_PERIOD_SHARPE_COLUMNS if c in registry.columns), None)
        if sharpe_col is None:
            raise ValueError(
                f"trial_registry has none of the Sharpe columns {PER_PERIOD_SHARPE_COLUMNS} "
                f"(has {registry.columns})"
            )
        dup = registry.filter(pl.col("trial_id").is_duplicated())["trial_id"].unique().sort()
        if dup.len():
            raise ValueError(f"trial_registry has duplicated trial_id values: {dup.to_list()[:5]}")
        for trial_id, sharpe in registry.select("trial_id", sharpe_col).sort("trial_id").iter_rows():
            extra[f"{SWEEP_PREFIX}{trial_id}"] = float(sharpe) if sharpe is not None else float("nan")

    names = tuple(variant_returns)
    base = pl.DataFrame({"date": dates, **{n: np.asarray(v, dtype=float) for n, v in variant_returns.items()}})
    matrix = base
    wides = []
    if sweep_returns is not None and sweep_returns.height:
        wides.append(_wide(sweep_returns, SWEEP_PREFIX, "trial_returns"))
    first, last = dates.min(), dates.max()
    for name, frame in (monthly_returns or {}).items():
        if frame is None or not frame.height:
            continue
        wide = _wide(frame, "", name)
        wides.append(wide)
        # the DSR counts each trial with its Sharpe over the backtest's days
        span = wide.filter(pl.col("date").is_between(first, last))
        for trial in (c for c in wide.columns if c != "date"):
            if trial in extra or trial in variant_returns:
                raise ValueError(f"trial {trial!r} of {name} is named twice")
            values = span[trial].drop_nulls().to_numpy()
            extra[trial] = sharpe_per_period(values) if values.size > 1 else float("nan")
    if wides:
        joined = base
        for wide in wides:
            joined = joined.join(wide, on="date", how="inner")
        joined = joined.drop_nulls().sort("date")
        if joined.height >= PBO_SPLITS * PBO_MIN_ROWS_PER_BLOCK:
            matrix = joined
            names = tuple(c for c in joined.columns if c != "date")
    matrix = matrix.sort("date")
    return TrialSet(extra, matrix.select(list(names)).to_numpy().astype(float), names)
