"""One model month, end to end: training rows -> model -> the month's out-of-sample scores.

Pure (polars, lightgbm, torch; no Dagster, no MLflow). The ``lgbm_model``, ``seq_model`` and
``oos_predictions`` assets, the sweep trials and ``python -m quant_assets reproduce`` all call
these functions, so a rebuilt model goes through exactly the code that built it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from quant_assets.calendar import next_month
from quant_assets.models.lgbm import LGBMConfig, TrainedModel, predictions_hash, train_lgbm
from quant_assets.models.seq import SeqConfig, TrainedSeqModel, history_start, train_seq
from quant_assets.models.walkforward import (
    WalkForwardConfig,
    first_trading_day,
    month_rows,
    select_training_rows,
)

PREDICTION_COLUMNS = ("date", "instrument_id", "score")


def fit_lgbm_month(
    joined: pl.DataFrame,
    feature_cols: list[str],
    month: dt.date,
    walk_forward: WalkForwardConfig,
    lgbm: LGBMConfig,
) -> TrainedModel:
    """The LightGBM model of `month` from a joined features+labels frame (purged, embargoed)."""
    return train_lgbm(select_training_rows(joined, month, walk_forward), feature_cols, lgbm)


def predict_lgbm_month(model: TrainedModel, features: pl.DataFrame, month: dt.date) -> pl.DataFrame:
    """(date, instrument_id, score) of every feature row of `month`, sorted by the keys."""
    rows = month_rows(features, month).sort("date", "instrument_id")
    return rows.select("date", "instrument_id").with_columns(
        score=pl.Series(model.predict(rows), dtype=pl.Float64)
    )


def fit_seq_month(
    joined: pl.DataFrame,
    feature_cols: list[str],
    month: dt.date,
    walk_forward: WalkForwardConfig,
    seq: SeqConfig,
) -> TrainedSeqModel:
    """The GRU model of `month`: the same purged, embargoed rows as the LightGBM model (the
    training rows are also the sequences' history, so nothing after the cutoff is seen)."""
    return train_seq(select_training_rows(joined, month, walk_forward), feature_cols, seq)


def predict_seq_month(
    model: TrainedSeqModel, features: pl.DataFrame, month: dt.date
) -> pl.DataFrame:
    """(date, instrument_id, score) of every feature row of `month`; each sequence reads the
    `seq_len - 1` feature rows before it, which are known at prediction time."""
    first = history_start(first_trading_day(month), model.config.seq_len)
    end = next_month(month)
    history = features.filter(
        (pl.col("date") >= pl.lit(first, dtype=pl.Date)) & (pl.col("date") < pl.lit(end, dtype=pl.Date))
    )
    dates = month_rows(features, month).get_column("date").unique().sort()
    if dates.is_empty():
        return pl.DataFrame(schema={"date": pl.Date, "instrument_id": pl.Utf8, "score": pl.Float64})
    return model.predict(history, dates)


def month_predictions_hash(predictions: pl.DataFrame) -> str:
    """The hash logged as `quant.predictions_sha256` (over date, instrument_id, score)."""
    return predictions_hash(predictions, PREDICTION_COLUMNS)


@dataclass(frozen=True)
class ModelFamily:
    """How one family of walk-forward models fits and scores a month: what the one month loop
    of the model assets (and ``reproduce``) calls, whatever the family."""

    name: str  # "lgbm" | "seq": the model dimension of predictions, backtests and reports
    asset: str  # the monthly model asset
    config_type: type  # the family's pure config dataclass
    fit: Callable[[pl.DataFrame, list[str], dt.date, WalkForwardConfig, Any], Any]
    predict: Callable[[Any, pl.DataFrame, dt.date], pl.DataFrame]
    model_type: type  # has from_record / to_record / sha256
    # the family's chain downstream of its model: out-of-sample predictions, the backtest
    # on them and its validation report (side by side in Dagster, one asset each)
    predictions: str = ""
    backtest: str = ""
    report: str = ""
    # months of features before a month that scoring it reads (the GRU's sequences)
    history_months: int = 0


LGBM = ModelFamily("lgbm", "lgbm_model", LGBMConfig, fit_lgbm_month, predict_lgbm_month, TrainedModel,
                   predictions="oos_predictions", backtest="backtest", report="validation_report")
SEQ = ModelFamily("seq", "seq_model", SeqConfig, fit_seq_month, predict_seq_month, TrainedSeqModel,
                  predictions="seq_predictions", backtest="seq_backtest",
                  report="seq_validation_report", history_months=1)
FAMILIES = {family.name: family for family in (LGBM, SEQ)}
