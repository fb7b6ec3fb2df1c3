"""One sweep trial evaluated: walk-forward LightGBM over the trial's months, out-of-sample
scores, the long-short backtest and its performance summary.

Pure (polars, numpy, lightgbm; no Dagster, no MLflow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from quant_assets.backtest.strategy import run_long_short
from quant_assets.calendar import next_month
from quant_assets.models.lgbm import TrainedModel
from quant_assets.models.monthly import fit_lgbm_month, predict_lgbm_month
from quant_assets.performance import performance_summary
from quant_assets.trials.search import TrialSpec


@dataclass
class TrialResult:
    daily: pl.DataFrame  # the backtest's daily frame: date, net_return, turnover, ...
    predictions: pl.DataFrame  # date, instrument_id, score
    models: dict[str, TrainedModel]  # YYYY-MM -> model
    metrics: dict[str, float]
    # wall time of the LightGBM fits alone (benchmarks); kept out of `metrics`, which must be
    # a deterministic function of the inputs
    train_seconds: float = 0.0


def run_trial(
    joined: pl.DataFrame,
    feature_cols: list[str],
    features: pl.DataFrame,
    prices: pl.DataFrame,
    spec: TrialSpec,
    fits: dict | None = None,
) -> TrialResult:
    """Walk-forward models over the trial's months (each month purged and embargoed as
    `lgbm_model`), their out-of-sample scores, and the long-short backtest on them from an
    empty book. `prices` holds date, instrument_id, tr_close (total_return_index).

    ``fits``: a dict shared by trials of the same inputs (a sweep batch, a month of the
    monthly sweep): a month's model and scores depend only on the month, the walk-forward and
    the LightGBM configs, so trials that differ only in their strategy parameters train each
    model once (training is deterministic: the reused model is the one a fit would give;
    ``train_seconds`` counts the fits actually made)."""
    wf, lgbm = spec.walk_forward_config(), spec.lgbm_config()
    fits = {} if fits is None else fits
    models, parts, train_seconds = {}, [], 0.0
    for month in spec.month_starts():
        key = (month, wf, lgbm)
        if key not in fits:
            started = time.perf_counter()
            model = fit_lgbm_month(joined, feature_cols, month, wf, lgbm)
            train_seconds += time.perf_counter() - started
            fits[key] = (model, predict_lgbm_month(model, features, month))
        model, scores = fits[key]
        models[f"{month:%Y-%m}"] = model
        parts.append(scores)
    predictions = pl.concat(parts)
    first, end = spec.month_starts()[0], next_month(spec.month_starts()[-1])
    in_range = prices.filter((pl.col("date") >= first) & (pl.col("date") < end))
    daily, _ = run_long_short(predictions, in_range, spec.strategy_spec())
    net = daily["net_return"].to_numpy()
    metrics = {
        **performance_summary(net, turnover=daily["turnover"].to_numpy()),
        "valid_ic_mean": float(np.nanmean([m.metrics.get("valid_ic", np.nan) for m in models.values()])),
        "best_iteration_mean": float(np.mean([m.best_iteration for m in models.values()])),
    }
    return TrialResult(daily, predictions, models, metrics, train_seconds)


