"""Walk-forward training windows: which labelled rows the model of month M may learn from.

Pure polars + the trading calendar (no Dagster, no MLflow).

Inputs are feature frames (`date`, `instrument_id`, Float64 feature columns) and label frames
(`date`, `instrument_id`, `t0` Date, `t1` Date, `fwd_return`, `fwd_return_demeaned`,
`fwd_return_rank`). A label of day D describes the return over (t0, t1].

Rule (purge + embargo): the model of month M is fitted before M starts trading, so it may
only use rows whose label interval has ended strictly before the *training cutoff*:

    cutoff(M) = first trading day of M, shifted back by `embargo_days` trading days
    training rows: t1 < cutoff(M)

With embargo 0 this is `t1 < first trading day of M`: no training label overlaps the month
being predicted. With a rolling window the rows are further restricted to
`t0 >= cutoff(M) - rolling_days trading days`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import polars as pl

from quant_assets.calendar import is_trading_day, next_month, shift_trading_days
from quant_assets.calendar import month_start as _month_start

KEYS = ("date", "instrument_id")
LABEL_COLUMNS = ("t0", "t1", "fwd_return", "fwd_return_demeaned", "fwd_return_rank")



class NotEnoughHistory(ValueError):
    """Too few training rows for a model month: the same on every attempt (not retried)."""

@dataclass(frozen=True)
class WalkForwardConfig:
    embargo_days: int = 5
    window: Literal["expanding", "rolling"] = "expanding"
    rolling_days: int = 504
    min_train_rows: int = 1000

    def __post_init__(self) -> None:
        if self.embargo_days < 0:
            raise ValueError(f"embargo_days={self.embargo_days} must be >= 0")
        if self.window not in ("expanding", "rolling"):
            raise ValueError(f"window={self.window!r} must be 'expanding' or 'rolling'")
        if self.rolling_days < 1:
            raise ValueError(f"rolling_days={self.rolling_days} must be >= 1")
        if self.min_train_rows < 1:
            raise ValueError(f"min_train_rows={self.min_train_rows} must be >= 1")


def first_trading_day(month: dt.date) -> dt.date:
    """First trading day of the month containing `month`."""
    day = _month_start(month)
    while not is_trading_day(day):
        day += dt.timedelta(days=1)
    return day


def training_cutoff(month_start: dt.date, embargo_days: int) -> dt.date:
    """Rows with `t1 < training_cutoff(M, e)` may train the model of month M.

    The first trading day of M shifted back by `embargo_days` trading days.
    """
    if embargo_days < 0:
        raise ValueError(f"embargo_days={embargo_days} must be >= 0")
    return shift_trading_days(first_trading_day(month_start), -embargo_days)


def window_start(month_start: dt.date, config: WalkForwardConfig) -> dt.date | None:
    """Earliest allowed `t0` (rolling window), or None for an expanding window."""
    if config.window == "expanding":
        return None
    cutoff = training_cutoff(month_start, config.embargo_days)
    return shift_trading_days(cutoff, -config.rolling_days)


def _require_columns(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}; has {frame.columns}")


def select_training_rows(
    labels: pl.DataFrame, month_start: dt.date, config: WalkForwardConfig
) -> pl.DataFrame:
    """Rows of `labels` (or of a joined features+labels frame) the model of month M may use.

    Keeps rows with `t1 < training_cutoff(M)` (and `t0 >= window_start` for a rolling
    window), sorted by (date, instrument_id). Raises ValueError if fewer than
    `config.min_train_rows` remain.
    """
    _require_columns(labels, ("date", "instrument_id", "t0", "t1"), "label frame")
    cutoff = training_cutoff(month_start, config.embargo_days)
    predicate = pl.col("t1") < pl.lit(cutoff, dtype=pl.Date)
    start = window_start(month_start, config)
    if start is not None:
        predicate = predicate & (pl.col("t0") >= pl.lit(start, dtype=pl.Date))
    out = labels.filter(predicate).sort(list(KEYS))
    if out.height < config.min_train_rows:
        window = "expanding" if start is None else f"rolling from t0 >= {start}"
        raise NotEnoughHistory(
            f"model month {_month_start(month_start):%Y-%m}: only {out.height} training rows "
            f"with t1 < {cutoff} (embargo {config.embargo_days} trading days, {window}); "
            f"min_train_rows={config.min_train_rows}. Materialise more history of features "
            f"and labels, or lower min_train_rows."
        )
    return out


def month_rows(frame: pl.DataFrame, month_start: dt.date) -> pl.DataFrame:
    """Rows of `frame` whose `date` lies in the calendar month of `month_start`."""
    _require_columns(frame, ("date",), "frame")
    start = _month_start(month_start)
    end = next_month(start)
    return frame.filter(
        (pl.col("date") >= pl.lit(start, dtype=pl.Date))
        & (pl.col("date") < pl.lit(end, dtype=pl.Date))
    )


def join_features_labels(features: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Inner join of features and labels on (date, instrument_id), sorted by the keys.

    A feature column with the same name as a label column is dropped (labels win).
    """
    _require_columns(features, KEYS, "feature frame")
    _require_columns(labels, (*KEYS, "t0", "t1"), "label frame")
    label_cols = [c for c in labels.columns if c not in KEYS]
    feats = features.drop([c for c in label_cols if c in features.columns])
    return feats.join(labels, on=list(KEYS), how="inner").sort(list(KEYS))


def feature_columns(features: pl.DataFrame) -> list[str]:
    """Numeric columns of a feature frame other than the keys and label columns, in order."""
    skip = set(KEYS) | set(LABEL_COLUMNS)
    return [c for c, t in features.schema.items() if c not in skip and t.is_numeric()]
